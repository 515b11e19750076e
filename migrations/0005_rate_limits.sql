-- Per-app overrides of the ingress's default API rate limit (`tally app set-rate-limit`). An app
-- without a row uses the default (TALLY_RATE_LIMIT_RPS / TALLY_RATE_LIMIT_BURST); a row with
-- NULL limits means the app is unlimited. Ingresses reload this table every couple of seconds,
-- so no request ever reads it.
CREATE TABLE app_rate_limits (
    app_id               uuid PRIMARY KEY REFERENCES apps (id),
    requests_per_second  integer CHECK (requests_per_second > 0),
    burst                integer CHECK (burst > 0),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((requests_per_second IS NULL) = (burst IS NULL))
);
