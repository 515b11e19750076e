-- Tally's core schema: tenants and keys, accounts, the append-only ledger, and the bookkeeping
-- that makes every command take effect exactly once.

CREATE TABLE apps (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a key is stored; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id),
    key_hash    bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_app_id ON api_keys (app_id);

CREATE TABLE webhook_secrets (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id),
    provider    text NOT NULL CHECK (provider IN ('stripe', 'polar')),
    secret      text NOT NULL CHECK (length(secret) > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_secrets_app_provider ON webhook_secrets (app_id, provider, created_at DESC);

-- One row per (app, user): the balance and the count of the user's ledger entries. Only workers
-- write it, inside the transaction that appends the entries it summarises.
CREATE TABLE accounts (
    app_id       uuid NOT NULL REFERENCES apps (id),
    user_id      text NOT NULL CHECK (octet_length(user_id) BETWEEN 1 AND 255),
    balance      bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held         bigint NOT NULL DEFAULT 0 CHECK (held >= 0 AND held <= balance),
    entry_count  bigint NOT NULL DEFAULT 0 CHECK (entry_count >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id)
);

-- The ledger. Append-only: the triggers below reject UPDATE, DELETE and TRUNCATE.
-- `seq` numbers a user's entries 1, 2, 3 … in the order they were applied; history pages by it.
CREATE TABLE ledger_entries (
    id                  uuid PRIMARY KEY,
    app_id              uuid NOT NULL,
    user_id             text NOT NULL,
    seq                 bigint NOT NULL CHECK (seq > 0),
    type                text NOT NULL
                        CHECK (type IN ('add', 'deduct', 'refund', 'payment', 'expire', 'clawback')),
    amount              bigint NOT NULL CHECK (amount <> 0 OR type = 'clawback'),
    balance_after       bigint NOT NULL CHECK (balance_after >= 0),
    source              text NOT NULL CHECK (source IN ('api', 'stripe', 'polar', 'system', 'dashboard')),
    description         text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    refunded_ledger_id  uuid REFERENCES ledger_entries (id),
    hold_id             uuid,
    expires_at          timestamptz,
    command_id          uuid NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, user_id, seq),
    FOREIGN KEY (app_id, user_id) REFERENCES accounts (app_id, user_id)
);
CREATE INDEX ledger_entries_refunded ON ledger_entries (refunded_ledger_id)
    WHERE refunded_ledger_id IS NOT NULL;
CREATE INDEX ledger_entries_command ON ledger_entries (command_id);

CREATE FUNCTION ledger_entries_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_reject_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_reject_change();

-- Every command a worker has finished, with the answer it gave, written in the same transaction
-- as the command's effect: the dedupe record that makes redelivery harmless. `cancelled` marks a
-- command the ingress refused (503) after a publish whose outcome it could not learn: if the
-- message did reach the stream, the worker finds it already "processed" and changes nothing.
CREATE TABLE processed_commands (
    command_id    uuid PRIMARY KEY,
    app_id        uuid NOT NULL,
    status        text NOT NULL CHECK (status IN ('applied', 'rejected', 'cancelled')),
    http_status   smallint,
    response      jsonb,
    request_hash  text,
    partition     integer,
    stream_seq    bigint,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Commands answered 202 that a worker has not finished yet, so that GET /commands/{id} can say
-- "pending" from the moment the 202 is sent.
CREATE TABLE command_receipts (
    command_id  uuid PRIMARY KEY,
    app_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Idempotency keys, scoped to the app: the first request's hash and the command it became.
-- The answer itself lives in processed_commands. Kept at least 24 hours.
CREATE TABLE idempotency_keys (
    app_id        uuid NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    command_id    uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, key)
);

-- The last stream sequence applied per partition, advanced in the batch transaction: the fence
-- that keeps two workers from applying one partition's commands twice or out of order.
CREATE TABLE partition_offsets (
    stream      text NOT NULL,
    partition   integer NOT NULL CHECK (partition >= 0),
    last_seq    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition)
);

-- Live workers: each refreshes its row every second; partitions are shared out among the rows
-- seen recently, by rendezvous hashing.
CREATE TABLE worker_heartbeats (
    stream     text NOT NULL,
    worker_id  uuid NOT NULL,
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, worker_id)
);
