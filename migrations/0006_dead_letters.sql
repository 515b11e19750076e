-- Dead letters: commands a worker could not apply after its bounded retries. The worker writes
-- the row in the transaction that records the command as failed (a `rejected` 500 in
-- processed_commands), so every dead-lettered command is listed here, with what an operator
-- needs to see why and to replay it (`tally dead-letters list|retry`).
--
-- `state`: `parked` (set aside, its failure is the command's recorded answer) or `retried` (an
-- operator replayed it: the failure record was removed and the envelope published again; the
-- command's processed_commands row, once there, is its new answer). A retried command that fails
-- again is parked again.
CREATE TABLE dead_letters (
    command_id        uuid PRIMARY KEY,
    app_id            uuid NOT NULL,
    stream            text NOT NULL,
    partition         integer NOT NULL CHECK (partition >= 0),
    stream_seq        bigint NOT NULL,
    envelope          jsonb NOT NULL,
    error             text NOT NULL,
    attempts          integer NOT NULL CHECK (attempts > 0),
    state             text NOT NULL CHECK (state IN ('parked', 'retried')),
    retries           integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    dead_lettered_at  timestamptz NOT NULL DEFAULT now(),
    retried_at        timestamptz
);
CREATE INDEX dead_letters_app ON dead_letters (app_id, created_at);
