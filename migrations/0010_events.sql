-- Outbound events: Tally tells an app what happened to its users' credits by signed HTTP calls
-- to the app's endpoints (Standard Webhooks).
--
-- An event is recorded in the transaction of the change that causes it (an outbox), only for
-- types some enabled endpoint of the app subscribes to. After the commit a relay creates one
-- delivery per subscribed endpoint and hands it to the broker; workers deliver, and keep each
-- delivery's attempts here.

-- The app's receivers. `events` lists the types the endpoint subscribes to, or is {'*'}.
-- A rotated secret keeps signing, with the new one, until `previous_secret_until`.
CREATE TABLE webhook_endpoints (
    id                     uuid PRIMARY KEY,
    app_id                 uuid NOT NULL REFERENCES apps (id),
    url                    text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events                 text[] NOT NULL CHECK (cardinality(events) > 0),
    description            text,
    enabled                boolean NOT NULL DEFAULT true,
    secret                 text NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- The first failed attempt since the last success; an endpoint failing for 5 days is
    -- disabled (`disabled_reason`).
    failing_since          timestamptz,
    disabled_reason        text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- Deleted endpoints are kept (their deliveries name them) but never listed or called.
    deleted_at             timestamptz
);
CREATE INDEX webhook_endpoints_app ON webhook_endpoints (app_id, created_at) WHERE deleted_at IS NULL;

-- One event. An entry event (credits.*, payment.*) names its ledger entry, whose history form
-- is the event's `data`, read when needed (the ledger is append-only); other events keep their
-- `data`. `sequence` increases with each event of one app and user (user '' for events of no
-- user). `endpoint_id` is set for an event meant for one endpoint only (a test `ping`).
CREATE TABLE events (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL,
    user_id      text,
    type         text NOT NULL,
    sequence     bigint NOT NULL,
    ledger_id    uuid,
    data         jsonb,
    endpoint_id  uuid,
    relayed      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((ledger_id IS NULL) <> (data IS NULL))
);
CREATE INDEX events_page ON events (app_id, created_at DESC, id DESC);
CREATE INDEX events_user ON events (app_id, user_id, created_at DESC, id DESC);
-- What the relay has not handed to the broker yet (normally nothing older than a second).
CREATE INDEX events_unrelayed ON events (created_at) WHERE NOT relayed;

-- The last event sequence of each app and user.
CREATE TABLE event_sequences (
    app_id    uuid NOT NULL,
    user_id   text NOT NULL,
    last_seq  bigint NOT NULL CHECK (last_seq > 0),
    PRIMARY KEY (app_id, user_id)
);

-- One event sent to one endpoint, and how its attempts went.
CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY,
    event_id          uuid NOT NULL REFERENCES events (id),
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id),
    app_id            uuid NOT NULL,
    event_type        text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_attempt_at   timestamptz,
    last_status_code  smallint,
    last_error        text,
    next_attempt_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

-- Balance alert thresholds per credit type: an app's default (user_id '') or one user's own
-- list (which may be empty: no alerts for that user).
CREATE TABLE balance_alerts (
    app_id       uuid NOT NULL REFERENCES apps (id),
    user_id      text NOT NULL,
    credit_type  text NOT NULL,
    thresholds   bigint[] NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id, credit_type)
);

-- The thresholds below which a user's available credits of a type fell (balance.low fired),
-- until they come back up to them (balance.recovered). Written only when one is crossed.
CREATE TABLE balance_alert_state (
    app_id       uuid NOT NULL,
    user_id      text NOT NULL,
    credit_type  text NOT NULL,
    below        bigint[] NOT NULL,
    PRIMARY KEY (app_id, user_id, credit_type)
);

-- Bumped by every change to an app's endpoints or alerts, so that workers reload that app's
-- event configuration (within a second) without reading it for every batch.
CREATE TABLE app_event_config (
    app_id      uuid PRIMARY KEY REFERENCES apps (id),
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
