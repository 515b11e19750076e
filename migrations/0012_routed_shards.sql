-- The shard count a worker routes by (common/src/routing.rs). Workers of earlier versions
-- leave it NULL: while one of them is live, every worker shares partitions one by one and the
-- ingress publishes on the subject every version reads.
ALTER TABLE worker_heartbeats ADD COLUMN shards integer;
