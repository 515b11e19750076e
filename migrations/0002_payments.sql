-- Payment webhooks: every payment credited once (business-key dedupe across the provider's
-- several events of one payment), what has been clawed back of it, and an audit log of every
-- received event.

-- Mutable bookkeeping of a payment; its credit and clawbacks are ledger entries.
CREATE TABLE payments (
    app_id               uuid NOT NULL REFERENCES apps (id),
    provider             text NOT NULL CHECK (provider IN ('stripe', 'polar')),
    payment_ref          text NOT NULL,
    ledger_id            uuid NOT NULL REFERENCES ledger_entries (id),
    user_id              text NOT NULL,
    credits              bigint NOT NULL CHECK (credits > 0),
    amount_minor         bigint,
    refunded_minor       bigint NOT NULL DEFAULT 0,
    disputed_minor       bigint NOT NULL DEFAULT 0,
    clawed_credits       bigint NOT NULL DEFAULT 0 CHECK (clawed_credits >= 0),
    unrecovered_credits  bigint NOT NULL DEFAULT 0 CHECK (unrecovered_credits >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, provider, payment_ref),
    CHECK (clawed_credits + unrecovered_credits <= credits)
);

CREATE TABLE webhook_events (
    app_id       uuid NOT NULL REFERENCES apps (id),
    provider     text NOT NULL CHECK (provider IN ('stripe', 'polar')),
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    outcome      text NOT NULL
                 CHECK (outcome IN ('credited', 'clawed_back', 'duplicate', 'ignored', 'rejected')),
    reason       text,
    user_id      text,
    ledger_id    uuid,
    received_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, provider, event_id)
);
CREATE INDEX webhook_events_page ON webhook_events (app_id, received_at DESC, provider, event_id);
