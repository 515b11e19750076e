-- The worker's fast batch: plain adds and deducts of users whose account rows the partition's
-- owner remembers, applied by one call in a transaction of its own. Every write is guarded: the
-- partitions' offsets must be where the worker left them, and each account row exactly as it
-- remembers it (balance, entry count and nothing held);
-- every command id must be new. If anything does not match, the call raises TA001 and changes
-- nothing, and the worker takes its full path, which reloads under lock. Each statement reaches
-- rows by key or row address (index probes in a loop, TID scans, arbiter-index inserts; the
-- offsets table is tiny), so its cached plan is right at any table size and nothing is planned
-- per batch.
CREATE FUNCTION tally_apply_plain_batch(
    p_stream text, p_partitions int4[], p_expected int8[], p_new int8[],
    a_apps uuid[], a_users text[], a_old_balances int8[], a_old_counts int8[], a_balances int8[],
    a_counts int8[],
    e_ids uuid[], e_apps uuid[], e_users text[], e_seqs int8[], e_types text[], e_amounts int8[],
    e_balances int8[], e_sources text[], e_descriptions text[], e_metadata text[],
    e_commands uuid[],
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
    -- Lock the account rows that are as remembered, one index probe each (LATERAL keeps the
    -- plan a loop over the arrays whatever the table's size), then update them by row address
    -- in one statement.
    SELECT array_agg(x.row_id ORDER BY u.position) INTO rows_found
    FROM UNNEST(a_apps, a_users, a_old_balances, a_old_counts)
           WITH ORDINALITY AS u(app_id, user_id, old_balance, old_count, position)
    CROSS JOIN LATERAL (
        SELECT a.ctid AS row_id FROM accounts a
        WHERE a.app_id = u.app_id AND a.user_id = u.user_id
          AND a.balance = u.old_balance AND a.entry_count = u.old_count AND a.held = 0
        FOR UPDATE) x;
    IF coalesce(array_length(rows_found, 1), 0) <> coalesce(array_length(a_apps, 1), 0) THEN
        RAISE EXCEPTION 'an account changed' USING ERRCODE = 'TA001';
    END IF;
    UPDATE accounts a SET balance = a_balances[v.position], entry_count = a_counts[v.position],
                          updated_at = now()
    FROM UNNEST(rows_found) WITH ORDINALITY AS v(row_id, position)
    WHERE a.ctid = ANY(rows_found) AND a.ctid = v.row_id;
    INSERT INTO ledger_entries (id, app_id, user_id, seq, type, amount, balance_after, source,
                                description, metadata, command_id)
    SELECT id, app_id, user_id, seq, type, amount, balance_after, source, description,
           metadata::jsonb, command_id
    FROM UNNEST(e_ids, e_apps, e_users, e_seqs, e_types, e_amounts, e_balances, e_sources,
                e_descriptions, e_metadata, e_commands)
      AS t(id, app_id, user_id, seq, type, amount, balance_after, source, description,
           metadata, command_id);
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

-- Every entry's account exists: the worker writes a user's entries in the same statement as the
-- guarded update of that user's account row (which must exist for the update to match), and
-- accounts are never deleted. The foreign key repeated that check once per entry, as a query of
-- its own inside the batch's transaction (about a fifth of the database's work per command), so
-- `tally verify` checks it instead (`entries_have_accounts`).
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_app_id_user_id_fkey;
