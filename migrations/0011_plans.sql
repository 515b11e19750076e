-- Plans: a product catalogue per app (what a provider's price or product buys), the app's Stripe
-- secret key, and auto top-up (per user and credit type: charge a saved card when `available`
-- falls below a threshold).

-- What one provider product buys. `product_id` is a Stripe Price id (`price_…`) or a Polar
-- Product id. `expires_in_days` only for one-time packs.
CREATE TABLE products (
    app_id           uuid NOT NULL REFERENCES apps (id),
    provider         text NOT NULL CHECK (provider IN ('stripe', 'polar')),
    product_id       text NOT NULL CHECK (length(product_id) BETWEEN 1 AND 255),
    credits          bigint NOT NULL CHECK (credits > 0),
    credit_type      text NOT NULL,
    mode             text NOT NULL CHECK (mode IN ('one_time', 'subscription')),
    expires_in_days  integer CHECK (expires_in_days BETWEEN 1 AND 3650),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, provider, product_id),
    CHECK (mode = 'one_time' OR expires_in_days IS NULL)
);

-- The app's Stripe secret key, for auto top-up charges. `nonce` is set when the key is
-- encrypted (AES-256-GCM under a key derived from TALLY_SECRET_KEY); without it `secret` holds
-- the key's bytes as given.
CREATE TABLE app_stripe_keys (
    app_id      uuid PRIMARY KEY REFERENCES apps (id),
    secret      bytea NOT NULL,
    nonce       bytea,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One user's auto top-up of one credit type. The ingress writes the settings; workers write
-- `consecutive_failures` and, after three failures in a row, `enabled = false`.
CREATE TABLE auto_topup_settings (
    app_id                    uuid NOT NULL REFERENCES apps (id),
    user_id                   text NOT NULL,
    credit_type               text NOT NULL,
    enabled                   boolean NOT NULL,
    threshold                 bigint NOT NULL CHECK (threshold > 0),
    credits                   bigint NOT NULL CHECK (credits > 0),
    amount                    bigint NOT NULL CHECK (amount > 0),
    currency                  text NOT NULL,
    stripe_customer_id        text NOT NULL,
    stripe_payment_method_id  text NOT NULL,
    max_per_month             integer NOT NULL CHECK (max_per_month > 0),
    consecutive_failures      integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    disabled_reason           text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id, credit_type)
);

-- One charge Tally decided to make. Created by the ledger transaction whose change left
-- `available` below the threshold; its id is the charge's Idempotency-Key, so calling Stripe
-- again for it (after a crash) never charges twice. `charge_started_at` claims the call;
-- `charged` is set once Stripe's answer has been applied.
CREATE TABLE auto_topup_attempts (
    id                 uuid PRIMARY KEY,
    app_id             uuid NOT NULL REFERENCES apps (id),
    user_id            text NOT NULL,
    credit_type        text NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'succeeded', 'failed', 'action_required')),
    credits            bigint NOT NULL CHECK (credits > 0),
    amount             bigint NOT NULL CHECK (amount > 0),
    currency           text NOT NULL,
    payment_intent_id  text,
    error_code         text,
    decline_code       text,
    error_message      text,
    charge_started_at  timestamptz,
    charged            boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- At most one pending attempt per user and credit type, whatever the number of workers.
CREATE UNIQUE INDEX auto_topup_attempts_one_pending ON auto_topup_attempts (app_id, user_id, credit_type)
    WHERE status = 'pending';
CREATE INDEX auto_topup_attempts_user ON auto_topup_attempts (app_id, user_id, credit_type, created_at DESC);
-- The attempts whose charge has not been made or not applied yet (the charger's sweep).
CREATE INDEX auto_topup_attempts_uncharged ON auto_topup_attempts (created_at) WHERE NOT charged;

-- An invoice line credits one payment per line; a refund names the invoice's payment intent,
-- which `refund_ref` records so that the refund finds the lines it paid for.
ALTER TABLE payments ADD COLUMN refund_ref text;
CREATE INDEX payments_refund_ref ON payments (app_id, provider, refund_ref) WHERE refund_ref IS NOT NULL;
