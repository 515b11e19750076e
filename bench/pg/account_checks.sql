-- What the check of an account row's credit type costs per updated row, in Postgres alone:
-- 10,000 rows shaped like `accounts`, 200 statements each updating 100 of them as the fast
-- batch does, for each way of checking the type's format; seven passes, the variants
-- interleaved in each; the median µs per updated row and its range over the passes.
--
--   psql -h 127.0.0.1 -U postgres -At -f bench/pg/account_checks.sql
--
-- Variants: none; regex (a CHECK with the regular expression, migration 0008); short (a CHECK
-- that compares with 'credits' before the expression); translate (a CHECK without a regular
-- expression); trigger (the check in a BEFORE INSERT OR UPDATE OF credit_type trigger,
-- migration 0014). Makes and drops the database tally_check_costs.
\set QUIET on
\set ON_ERROR_STOP on
DROP DATABASE IF EXISTS tally_check_costs;
CREATE DATABASE tally_check_costs;
\c tally_check_costs
CREATE FUNCTION check_type() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.credit_type !~ '^[a-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'bad credit type' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE FUNCTION measure(variant text) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz;
    finished timestamptz;
BEGIN
    DROP TABLE IF EXISTS acc;
    CREATE TABLE acc (
        app_id uuid NOT NULL, user_id text NOT NULL,
        credit_type text NOT NULL DEFAULT 'credits',
        balance bigint NOT NULL CHECK (balance >= 0), entry_count bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (app_id, user_id, credit_type));
    CASE variant
        WHEN 'regex' THEN
            ALTER TABLE acc ADD CHECK (credit_type ~ '^[a-z0-9_-]{1,64}$');
        WHEN 'short' THEN
            ALTER TABLE acc ADD CHECK (credit_type = 'credits'
                                       OR credit_type ~ '^[a-z0-9_-]{1,64}$');
        WHEN 'translate' THEN
            ALTER TABLE acc ADD CHECK (octet_length(credit_type) BETWEEN 1 AND 64
                AND translate(credit_type, 'abcdefghijklmnopqrstuvwxyz0123456789_-', '') = '');
        WHEN 'trigger' THEN
            CREATE TRIGGER acc_type BEFORE INSERT OR UPDATE OF credit_type ON acc
                FOR EACH ROW EXECUTE FUNCTION check_type();
        ELSE NULL;
    END CASE;
    INSERT INTO acc (app_id, user_id, balance)
    SELECT '00000000-0000-0000-0000-000000000001', 'u' || g, 1000000
    FROM generate_series(1, 10000) g;
    -- Only so that the statements below use the primary key, as Tally's do on a grown table.
    ANALYZE acc;
    started := clock_timestamp();
    FOR i IN 1..200 LOOP
        UPDATE acc a SET balance = a.balance - 1, entry_count = a.entry_count + 1,
                         updated_at = now()
        FROM UNNEST(ARRAY(SELECT 'u' || (1 + ((i * 7919 + g * 104729) % 10000))
                          FROM generate_series(1, 100) g)) AS u(user_id)
        WHERE a.app_id = '00000000-0000-0000-0000-000000000001' AND a.user_id = u.user_id
          AND a.credit_type = 'credits';
    END LOOP;
    finished := clock_timestamp();
    RETURN extract(epoch FROM finished - started) * 1e6 / 20000;
END
$$;
CREATE TABLE runs (pass int, variant text, us numeric);
DO $$
BEGIN
    FOR pass IN 1..7 LOOP
        INSERT INTO runs
        SELECT pass, v, measure(v)
        FROM unnest(ARRAY['none', 'regex', 'short', 'translate', 'trigger']) v;
    END LOOP;
END
$$;
SELECT format('%-9s median %s us per updated row (%s-%s)', variant,
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY us)::numeric, 2),
              round(min(us), 2), round(max(us), 2))
FROM runs GROUP BY variant ORDER BY variant;
\c postgres
DROP DATABASE tally_check_costs;
