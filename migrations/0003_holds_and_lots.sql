-- Holds (reserve now, capture the real cost later) and expiring credit lots.
--
-- Credits are owned in lots: each add or payment with an expiry is a lot; credits without
-- expiry form one never-expiring pool per user, which is whatever the balance holds beyond the
-- lots and the holds: pool = balance - held - sum(remaining of the user's unexpired lots).
-- Deducts and holds draw from lots soonest-expiring first and from the pool last; what each
-- drew from is kept in lot_allocations, so a refund or a release puts credits back where they
-- came from.

ALTER TABLE ledger_entries ADD COLUMN lot_id uuid;
CREATE INDEX ledger_entries_lot ON ledger_entries (lot_id) WHERE lot_id IS NOT NULL;

CREATE TABLE lots (
    id          uuid PRIMARY KEY,            -- the id of the add or payment entry that granted it
    app_id      uuid NOT NULL,
    user_id     text NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0),
    expires_at  timestamptz NOT NULL,
    expired_at  timestamptz,                 -- set, with remaining 0, when its expire entry is written
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (app_id, user_id) REFERENCES accounts (app_id, user_id),
    CHECK (expired_at IS NULL OR remaining = 0)
);
CREATE INDEX lots_user ON lots (app_id, user_id) WHERE expired_at IS NULL;
CREATE INDEX lots_due ON lots (expires_at) WHERE expired_at IS NULL;

CREATE TABLE holds (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL,
    user_id      text NOT NULL,
    amount       bigint NOT NULL CHECK (amount > 0),
    captured     bigint NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
    status       text NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    description  text,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    expires_at   timestamptz NOT NULL,
    ledger_id    uuid,                       -- the deduct entry of its capture
    command_id   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,                -- when it was captured, released or expired
    FOREIGN KEY (app_id, user_id) REFERENCES accounts (app_id, user_id)
);
CREATE INDEX holds_user ON holds (app_id, user_id, created_at DESC, id DESC);
CREATE INDEX holds_due ON holds (expires_at) WHERE status = 'active';

-- Which lots a deduct entry or a hold drew its credits from (lot_id nil: the never-expiring
-- pool), and how much of each has been given back by refunds or releases.
CREATE TABLE lot_allocations (
    owner_id  uuid NOT NULL,                 -- a deduct entry's id or a hold's id
    lot_id    uuid NOT NULL,
    position  integer NOT NULL,              -- burn order
    amount    bigint NOT NULL CHECK (amount > 0),
    returned  bigint NOT NULL DEFAULT 0 CHECK (returned >= 0 AND returned <= amount),
    PRIMARY KEY (owner_id, lot_id)
);
