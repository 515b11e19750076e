-- The credit type's format (0008_credit_types), checked where a type name is written rather
-- than on every change of the row. A CHECK constraint is evaluated on every UPDATE, and every
-- applied command updates its account row, so the regular expression ran once per command:
-- about 4 % of Postgres's CPU on deducts (docs/PERFORMANCE.md). A row's credit type is part of
-- its key and never changes after insert; the trigger checks inserts and any update that sets
-- the column, with the constraint's name and SQLSTATE (23514, check_violation).

CREATE FUNCTION accounts_check_credit_type() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.credit_type !~ '^[a-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'credit_type "%" must match ^[a-z0-9_-]{1,64}$', NEW.credit_type
            USING ERRCODE = 'check_violation', TABLE = 'accounts',
                  CONSTRAINT = 'accounts_credit_type_format';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER accounts_credit_type_format BEFORE INSERT OR UPDATE OF credit_type ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_check_credit_type();

ALTER TABLE accounts DROP CONSTRAINT accounts_credit_type_format;
