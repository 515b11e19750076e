-- Batches: one request of many operations (POST /credits/batch). A non-atomic batch is one
-- command per operation; its own Idempotency-Key replays the whole answer, so its claim keeps
-- the command id of every operation, in order, and — once the batch has been answered — the
-- answer itself. (A single request's claim needs only command_id; both stay NULL for it.)
ALTER TABLE idempotency_keys ADD COLUMN batch_command_ids uuid[];
ALTER TABLE idempotency_keys ADD COLUMN batch_response jsonb;
