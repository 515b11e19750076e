-- Credit types: a user may hold several kinds of balance ("credits", "image", "chat" …).
--
-- Balances, holds and lots are per (app, user, credit type); every existing row becomes type
-- 'credits', the default of the API. A user's entries keep one numbering across all types
-- (`seq` 1, 2, 3 … per user, so history of every type pages by it as before): each account
-- row's `entry_count` is now the `seq` of the last entry of its type, and the user's last
-- number is the largest `entry_count` of the user's rows. `balance_after` is the balance of the
-- entry's own type. Adding a column with a constant default rewrites no table; the new primary
-- key of `accounts` is one index build.

ALTER TABLE accounts ADD COLUMN credit_type text NOT NULL DEFAULT 'credits';
ALTER TABLE ledger_entries ADD COLUMN credit_type text NOT NULL DEFAULT 'credits';
ALTER TABLE lots ADD COLUMN credit_type text NOT NULL DEFAULT 'credits';
ALTER TABLE holds ADD COLUMN credit_type text NOT NULL DEFAULT 'credits';
-- The type a payment credited, so that its clawbacks take back the same kind of credits.
ALTER TABLE payments ADD COLUMN credit_type text NOT NULL DEFAULT 'credits';

-- The API's rule for a type name. Existing rows all hold the default, so there is nothing to
-- validate; new rows are checked.
ALTER TABLE accounts ADD CONSTRAINT accounts_credit_type_format
    CHECK (credit_type ~ '^[a-z0-9_-]{1,64}$') NOT VALID;

ALTER TABLE lots DROP CONSTRAINT lots_app_id_user_id_fkey;
ALTER TABLE holds DROP CONSTRAINT holds_app_id_user_id_fkey;
ALTER TABLE accounts DROP CONSTRAINT accounts_pkey;
ALTER TABLE accounts ADD PRIMARY KEY (app_id, user_id, credit_type);
ALTER TABLE lots ADD FOREIGN KEY (app_id, user_id, credit_type)
    REFERENCES accounts (app_id, user_id, credit_type);
ALTER TABLE holds ADD FOREIGN KEY (app_id, user_id, credit_type)
    REFERENCES accounts (app_id, user_id, credit_type);

-- The fast batch (0004_fast_batches) with the account rows' types. Every row of every user the
-- batch touches is passed — also the rows of types it does not change — and each must still be
-- exactly as remembered: the next entry number of a user depends on all of them.
DROP FUNCTION tally_apply_plain_batch(text, int4[], int8[], int8[], uuid[], text[], int8[],
    int8[], int8[], int8[], uuid[], uuid[], text[], int8[], text[], int8[], int8[], text[],
    text[], text[], uuid[], uuid[], uuid[], text[], int2[], text[], text[], int4[], int8[]);

CREATE FUNCTION tally_apply_plain_batch(
    p_stream text, p_partitions int4[], p_expected int8[], p_new int8[],
    a_apps uuid[], a_users text[], a_credit_types text[], a_old_balances int8[],
    a_old_counts int8[], a_balances int8[], a_counts int8[],
    e_ids uuid[], e_apps uuid[], e_users text[], e_credit_types text[], e_seqs int8[],
    e_types text[], e_amounts int8[], e_balances int8[], e_sources text[], e_descriptions text[],
    e_metadata text[], e_commands uuid[],
    c_ids uuid[], c_apps uuid[], c_statuses text[], c_http int2[], c_bodies text[],
    c_hashes text[], c_partitions int4[], c_seqs int8[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
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
END
$$;
