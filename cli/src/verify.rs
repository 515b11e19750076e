//! `tally verify`: every ledger invariant, checked in SQL over the whole database.

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};

#[derive(Serialize)]
pub struct Report {
    pub ok: bool,
    pub users_checked: i64,
    pub entries_checked: i64,
    pub violations: Vec<Value>,
}

/// Each check: a name and a query returning one row per violation, as a JSON object.
const CHECKS: &[(&str, &str)] = &[
    // Each credit type of a user is a balance of its own: the sum of that type's entries.
    (
        "balance_is_sum_of_entries",
        "SELECT json_build_object('app_id', a.app_id, 'user_id', a.user_id,
                                  'credit_type', a.credit_type, 'balance', a.balance,
                                  'sum_of_entries', COALESCE(s.total, 0))
         FROM accounts a
         LEFT JOIN (SELECT app_id, user_id, credit_type, sum(amount) AS total
                    FROM ledger_entries GROUP BY 1, 2, 3) s
           USING (app_id, user_id, credit_type)
         WHERE a.balance <> COALESCE(s.total, 0)",
    ),
    // A user's entries are numbered 1..n across every type; each type's row keeps the number
    // of its last entry.
    (
        "entries_numbered_without_gaps",
        "SELECT json_build_object('app_id', u.app_id, 'user_id', u.user_id,
                                  'entry_count', u.entry_count, 'entries', COALESCE(s.n, 0),
                                  'max_seq', COALESCE(s.max_seq, 0))
         FROM (SELECT app_id, user_id, max(entry_count) AS entry_count FROM accounts
               GROUP BY 1, 2) u
         LEFT JOIN (SELECT app_id, user_id, count(*) AS n, max(seq) AS max_seq
                    FROM ledger_entries GROUP BY 1, 2) s USING (app_id, user_id)
         WHERE u.entry_count <> COALESCE(s.n, 0) OR COALESCE(s.max_seq, 0) <> COALESCE(s.n, 0)",
    ),
    (
        "type_rows_number_their_last_entry",
        "SELECT json_build_object('app_id', a.app_id, 'user_id', a.user_id,
                                  'credit_type', a.credit_type, 'entry_count', a.entry_count,
                                  'last_seq', COALESCE(s.last_seq, 0))
         FROM accounts a
         LEFT JOIN (SELECT app_id, user_id, credit_type, max(seq) AS last_seq
                    FROM ledger_entries GROUP BY 1, 2, 3) s USING (app_id, user_id, credit_type)
         WHERE a.entry_count <> COALESCE(s.last_seq, 0)",
    ),
    (
        "balance_after_chain",
        "SELECT json_build_object('app_id', app_id, 'user_id', user_id, 'credit_type', credit_type,
                                  'ledger_id', id, 'seq', seq, 'balance_after', balance_after,
                                  'expected', running)
         FROM (SELECT *, sum(amount) OVER (PARTITION BY app_id, user_id, credit_type ORDER BY seq)
                         AS running
               FROM ledger_entries) t
         WHERE balance_after <> running",
    ),
    (
        "entries_have_accounts",
        "SELECT json_build_object('app_id', e.app_id, 'user_id', e.user_id,
                                  'credit_type', e.credit_type, 'ledger_id', e.id)
         FROM ledger_entries e
         WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.app_id = e.app_id
                             AND a.user_id = e.user_id AND a.credit_type = e.credit_type)",
    ),
    (
        "no_negative_balance",
        "SELECT json_build_object('app_id', app_id, 'user_id', user_id, 'credit_type', credit_type,
                                  'balance', balance, 'held', held)
         FROM accounts WHERE balance < 0 OR held < 0 OR held > balance",
    ),
    (
        "refunds_within_original",
        "SELECT json_build_object('ledger_id', e.id, 'original', abs(e.amount), 'reversed', sum(
                    abs(r.amount) + COALESCE((r.metadata->>'unrecovered')::bigint, 0)))
         FROM ledger_entries e JOIN ledger_entries r ON r.refunded_ledger_id = e.id
         GROUP BY e.id, e.amount
         HAVING sum(abs(r.amount) + COALESCE((r.metadata->>'unrecovered')::bigint, 0)) > abs(e.amount)",
    ),
    (
        "refund_targets_refundable",
        "SELECT json_build_object('ledger_id', r.id, 'refunded_ledger_id', e.id, 'target_type', e.type)
         FROM ledger_entries r JOIN ledger_entries e ON r.refunded_ledger_id = e.id
         WHERE e.type NOT IN ('add', 'deduct', 'payment') OR e.app_id <> r.app_id OR e.user_id <> r.user_id
            OR e.credit_type <> r.credit_type",
    ),
    (
        "every_entry_from_an_applied_command",
        "SELECT json_build_object('ledger_id', e.id, 'command_id', e.command_id, 'status', p.status)
         FROM ledger_entries e LEFT JOIN processed_commands p ON p.command_id = e.command_id
         WHERE p.command_id IS NULL OR p.status <> 'applied'",
    ),
    // One effect per operation: a command writes at most one such entry, an atomic batch (its
    // answer lists its operations' results) one per operation.
    (
        "one_effect_per_command",
        "SELECT json_build_object('command_id', e.command_id, 'entries', count(*))
         FROM ledger_entries e LEFT JOIN processed_commands p ON p.command_id = e.command_id
         WHERE e.type IN ('add', 'deduct', 'refund', 'payment', 'clawback')
         GROUP BY e.command_id
         HAVING count(*) > COALESCE(max(CASE WHEN jsonb_typeof(p.response->'results') = 'array'
                                             THEN jsonb_array_length(p.response->'results') END), 1)",
    ),
    (
        "held_is_sum_of_active_holds",
        "SELECT json_build_object('app_id', a.app_id, 'user_id', a.user_id,
                                  'credit_type', a.credit_type, 'held', a.held,
                                  'active_holds', COALESCE(h.total, 0))
         FROM accounts a
         LEFT JOIN (SELECT app_id, user_id, credit_type, sum(amount) AS total FROM holds
                    WHERE status = 'active' GROUP BY 1, 2, 3) h USING (app_id, user_id, credit_type)
         WHERE a.held <> COALESCE(h.total, 0)",
    ),
    (
        "lots_within_balance",
        "SELECT json_build_object('app_id', a.app_id, 'user_id', a.user_id,
                                  'credit_type', a.credit_type, 'balance', a.balance,
                                  'held', a.held, 'lots_remaining', l.total)
         FROM accounts a
         JOIN (SELECT app_id, user_id, credit_type, sum(remaining) AS total FROM lots
               WHERE expired_at IS NULL GROUP BY 1, 2, 3) l USING (app_id, user_id, credit_type)
         WHERE l.total + a.held > a.balance",
    ),
    (
        "expired_lots_have_expired",
        "SELECT json_build_object('lot_id', id, 'expires_at', expires_at, 'remaining', remaining)
         FROM lots WHERE expired_at IS NULL AND expires_at < now() - interval '1 minute'",
    ),
    (
        "expired_holds_released",
        "SELECT json_build_object('hold_id', id, 'expires_at', expires_at)
         FROM holds WHERE status = 'active' AND expires_at < now() - interval '1 minute'",
    ),
    (
        "expire_entries_name_their_lot",
        "SELECT json_build_object('ledger_id', e.id, 'lot_id', e.lot_id)
         FROM ledger_entries e LEFT JOIN lots l ON l.id = e.lot_id
         WHERE e.type = 'expire'
           AND (l.id IS NULL OR l.app_id <> e.app_id OR l.user_id <> e.user_id
                OR l.credit_type <> e.credit_type OR l.expired_at IS NULL)",
    ),
    (
        "captures_match_their_hold",
        "SELECT json_build_object('hold_id', h.id, 'captured', h.captured, 'deducted', -e.amount)
         FROM holds h LEFT JOIN ledger_entries e ON e.id = h.ledger_id
         WHERE h.status = 'captured' AND (e.id IS NULL OR -e.amount <> h.captured OR e.hold_id <> h.id
                                          OR e.credit_type <> h.credit_type)",
    ),
    (
        "lots_match_their_grant",
        "SELECT json_build_object('lot_id', l.id, 'amount', l.amount, 'entry_type', e.type,
                                  'entry_amount', e.amount)
         FROM lots l LEFT JOIN ledger_entries e ON e.id = l.id
         WHERE e.id IS NULL OR e.type NOT IN ('add', 'payment') OR e.amount <> l.amount
            OR e.app_id <> l.app_id OR e.user_id <> l.user_id OR e.credit_type <> l.credit_type",
    ),
    // Every credit of a lot is still in it, drawn by a deduct, hold, refund or clawback (net of
    // what came back), or expired. Draws from the never-expiring pool alone are not recorded
    // (lot_id nil, or no row at all): they touch no lot, so they cannot hide one's credits.
    (
        "lot_conservation",
        "SELECT json_build_object(
                    'lot_id', l.id, 'app_id', l.app_id, 'user_id', l.user_id, 'amount', l.amount,
                    'remaining', l.remaining, 'drawn', COALESCE(a.drawn, 0),
                    'returned', COALESCE(a.returned, 0), 'expired', COALESCE(x.expired, 0),
                    'message', format('lot %s: amount %s <> remaining %s + drawn %s - returned %s + expired %s',
                                      l.id, l.amount, l.remaining, COALESCE(a.drawn, 0),
                                      COALESCE(a.returned, 0), COALESCE(x.expired, 0)))
         FROM lots l
         LEFT JOIN (SELECT lot_id, sum(amount) AS drawn, sum(returned) AS returned
                    FROM lot_allocations GROUP BY lot_id) a ON a.lot_id = l.id
         LEFT JOIN (SELECT lot_id, -sum(amount) AS expired
                    FROM ledger_entries WHERE type = 'expire' GROUP BY lot_id) x ON x.lot_id = l.id
         WHERE l.amount <> l.remaining + COALESCE(a.drawn, 0) - COALESCE(a.returned, 0)
                           + COALESCE(x.expired, 0)",
    ),
];

pub async fn verify(pool: &PgPool) -> anyhow::Result<Report> {
    let mut tx = pool.begin().await?;
    // One consistent snapshot for every check.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let users_checked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT app_id, user_id FROM accounts) u",
    )
    .fetch_one(&mut *tx)
    .await?;
    let entries_checked: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(&mut *tx)
        .await?;
    let mut violations = Vec::new();
    for (check, query) in CHECKS {
        let rows = sqlx::query(&format!("{query} LIMIT 1000"))
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let detail: Value = row.get(0);
            violations.push(json!({ "check": check, "detail": detail }));
        }
    }
    tx.commit().await?;
    Ok(Report {
        ok: violations.is_empty(),
        users_checked,
        entries_checked,
        violations,
    })
}
