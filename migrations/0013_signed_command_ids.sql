-- Command ids the ingress can vouch for (ingress/src/command_ids.rs): a 202 writes no receipt
-- row; `GET /commands/{id}` recognises an id the ingress minted by the MAC in its last bits.

-- The MAC key every ingress of the deployment shares: 32 random bytes, made once.
CREATE TABLE command_id_keys (
    id   smallint PRIMARY KEY CHECK (id = 1),
    key  bytea NOT NULL CHECK (octet_length(key) = 32)
);
INSERT INTO command_id_keys (id, key)
VALUES (1, decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- Each ingress process takes the next number at start: the part of its ids that keeps them
-- apart from every other process's.
CREATE SEQUENCE command_id_instances;

COMMENT ON TABLE command_receipts IS
    'Commands accepted before ids were signed, and dead letters replayed by the CLI: pending until applied.';
