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

-- The fast batch (0004, 0008) records the batch's events too, and moves each user's last event
-- number only from where the worker left it (0: no row yet); anything else raises TA001 like
-- every other mismatch, and the worker takes its full path. With no events the arrays are
-- empty and nothing more is done.
DROP FUNCTION tally_apply_plain_batch(text, int4[], int8[], int8[], uuid[], text[], text[],
    int8[], int8[], int8[], int8[], uuid[], uuid[], text[], text[], int8[], text[], int8[],
    int8[], text[], text[], text[], uuid[], uuid[], uuid[], text[], int2[], text[], text[],
    int4[], int8[]);

CREATE FUNCTION tally_apply_plain_batch(
    p_stream text, p_partitions int4[], p_expected int8[], p_new int8[],
    a_apps uuid[], a_users text[], a_credit_types text[], a_old_balances int8[],
    a_old_counts int8[], a_balances int8[], a_counts int8[],
    e_ids uuid[], e_apps uuid[], e_users text[], e_credit_types text[], e_seqs int8[],
    e_types text[], e_amounts int8[], e_balances int8[], e_sources text[], e_descriptions text[],
    e_metadata text[], e_commands uuid[],
    c_ids uuid[], c_apps uuid[], c_statuses text[], c_http int2[], c_bodies text[],
    c_hashes text[], c_partitions int4[], c_seqs int8[],
    v_ids uuid[], v_apps uuid[], v_users text[], v_types text[], v_seqs int8[],
    v_ledger_ids uuid[], v_data text[],
    q_apps uuid[], q_users text[], q_old int8[], q_new int8[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
    inserted bigint;
    rows_found tid[];
BEGIN
    UPDATE partition_offsets o SET last_seq = u.new_seq, updated_at = now()
    FROM UNNEST(p_partitions, p_expected, p_new) AS u(partition, expected, new_seq)
    WHERE o.stream = p_stream AND o.partition = u.partition AND o.last_seq = u.expected;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written <> coalesce(array_length(p_partitions, 1), 0) THEN
        RAISE EXCEPTION 'a partition moved' USING ERRCODE = 'TA001';
    END IF;
    SELECT array_agg(x.row_id ORDER BY u.position) INTO rows_found
    FROM UNNEST(a_apps, a_users, a_credit_types, a_old_balances, a_old_counts)
           WITH ORDINALITY AS u(app_id, user_id, credit_type, old_balance, old_count, position)
    CROSS JOIN LATERAL (
        SELECT a.ctid AS row_id FROM accounts a
        WHERE a.app_id = u.app_id AND a.user_id = u.user_id AND a.credit_type = u.credit_type
          AND a.balance = u.old_balance AND a.entry_count = u.old_count AND a.held = 0
        FOR UPDATE) x;
    IF coalesce(array_length(rows_found, 1), 0) <> coalesce(array_length(a_apps, 1), 0) THEN
        RAISE EXCEPTION 'an account changed' USING ERRCODE = 'TA001';
    END IF;
    UPDATE accounts a SET balance = a_balances[v.position], entry_count = a_counts[v.position],
                          updated_at = now()
    FROM UNNEST(rows_found) WITH ORDINALITY AS v(row_id, position)
    WHERE a.ctid = ANY(rows_found) AND a.ctid = v.row_id;
    INSERT INTO ledger_entries (id, app_id, user_id, credit_type, seq, type, amount,
                                balance_after, source, description, metadata, command_id)
    SELECT id, app_id, user_id, credit_type, seq, type, amount, balance_after, source,
           description, metadata::jsonb, command_id
    FROM UNNEST(e_ids, e_apps, e_users, e_credit_types, e_seqs, e_types, e_amounts, e_balances,
                e_sources, e_descriptions, e_metadata, e_commands)
      AS t(id, app_id, user_id, credit_type, seq, type, amount, balance_after, source,
           description, metadata, command_id);
    INSERT INTO processed_commands (command_id, app_id, status, http_status, response,
                                    request_hash, partition, stream_seq)
    SELECT id, app, st, hs, body::jsonb, rh, p, s
    FROM UNNEST(c_ids, c_apps, c_statuses, c_http, c_bodies, c_hashes, c_partitions, c_seqs)
      AS t(id, app, st, hs, body, rh, p, s)
    ON CONFLICT (command_id) DO NOTHING;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written <> coalesce(array_length(c_ids, 1), 0) THEN
        RAISE EXCEPTION 'a command was already recorded' USING ERRCODE = 'TA001';
    END IF;
    IF coalesce(array_length(q_apps, 1), 0) > 0 THEN
        UPDATE event_sequences s SET last_seq = q.new_seq
        FROM UNNEST(q_apps, q_users, q_old, q_new) AS q(app_id, user_id, old_seq, new_seq)
        WHERE q.old_seq > 0 AND s.app_id = q.app_id AND s.user_id = q.user_id
          AND s.last_seq = q.old_seq;
        GET DIAGNOSTICS written = ROW_COUNT;
        INSERT INTO event_sequences (app_id, user_id, last_seq)
        SELECT app_id, user_id, new_seq
        FROM UNNEST(q_apps, q_users, q_old, q_new) AS q(app_id, user_id, old_seq, new_seq)
        WHERE q.old_seq = 0
        ON CONFLICT (app_id, user_id) DO NOTHING;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF written + inserted <> array_length(q_apps, 1) THEN
            RAISE EXCEPTION 'an event sequence moved' USING ERRCODE = 'TA001';
        END IF;
        INSERT INTO events (id, app_id, user_id, type, sequence, ledger_id, data)
        SELECT id, app_id, user_id, type, seq, ledger_id, data::jsonb
        FROM UNNEST(v_ids, v_apps, v_users, v_types, v_seqs, v_ledger_ids, v_data)
          AS t(id, app_id, user_id, type, seq, ledger_id, data);
    END IF;
END
$$;
