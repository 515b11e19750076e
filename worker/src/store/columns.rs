//! Rows as the parallel arrays (one per column) that an `UNNEST` statement binds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tally_common::command::{Envelope, Outcome};
use uuid::Uuid;

use crate::ledger;

/// [`ledger::NewEntry`] rows as the columns of an `UNNEST` insert.
pub(super) struct EntryColumns<'a> {
    pub(super) ids: Vec<Uuid>,
    pub(super) apps: Vec<Uuid>,
    pub(super) users: Vec<&'a str>,
    pub(super) credit_types: Vec<&'a str>,
    pub(super) seqs: Vec<i64>,
    pub(super) types: Vec<&'static str>,
    pub(super) amounts: Vec<i64>,
    pub(super) balances: Vec<i64>,
    pub(super) sources: Vec<&'static str>,
    pub(super) descriptions: Vec<Option<&'a str>>,
    pub(super) metadata: Vec<String>,
    pub(super) refunded: Vec<Option<Uuid>>,
    pub(super) expires: Vec<Option<DateTime<Utc>>>,
    pub(super) commands: Vec<Uuid>,
    pub(super) lots: Vec<Option<Uuid>>,
    pub(super) holds: Vec<Option<Uuid>>,
}

impl<'a> EntryColumns<'a> {
    pub(super) fn new(entries: &'a [ledger::NewEntry]) -> Self {
        Self {
            ids: entries.iter().map(|e| e.id).collect(),
            apps: entries.iter().map(|e| e.app_id).collect(),
            users: entries.iter().map(|e| e.user_id.as_str()).collect(),
            credit_types: entries.iter().map(|e| e.credit_type.as_str()).collect(),
            seqs: entries.iter().map(|e| e.seq).collect(),
            types: entries.iter().map(|e| e.entry_type.as_str()).collect(),
            amounts: entries.iter().map(|e| e.amount).collect(),
            balances: entries.iter().map(|e| e.balance_after).collect(),
            sources: entries.iter().map(|e| e.source).collect(),
            descriptions: entries.iter().map(|e| e.description.as_deref()).collect(),
            metadata: entries.iter().map(|e| e.metadata.to_string()).collect(),
            refunded: entries.iter().map(|e| e.refunded_ledger_id).collect(),
            expires: entries.iter().map(|e| e.expires_at).collect(),
            commands: entries.iter().map(|e| e.command_id).collect(),
            lots: entries.iter().map(|e| e.lot_id).collect(),
            holds: entries.iter().map(|e| e.hold_id).collect(),
        }
    }
}

/// Finished commands as the columns of an `UNNEST` insert into `processed_commands`.
pub(super) struct ProcessedColumns<'a> {
    pub(super) ids: Vec<Uuid>,
    pub(super) apps: Vec<Uuid>,
    pub(super) statuses: Vec<&'static str>,
    pub(super) http: Vec<i16>,
    pub(super) bodies: Vec<String>,
    pub(super) hashes: Vec<Option<&'a str>>,
    pub(super) partitions: Vec<i32>,
    pub(super) seqs: Vec<i64>,
}

impl<'a> ProcessedColumns<'a> {
    pub(super) fn new(
        finished: &'a [(Envelope, Outcome)],
        positions: &HashMap<Uuid, (u32, u64)>,
    ) -> Self {
        let ids: Vec<Uuid> = finished.iter().map(|(e, _)| e.command_id).collect();
        Self {
            apps: finished.iter().map(|(e, _)| e.app_id).collect(),
            statuses: finished.iter().map(|(_, o)| o.status.as_str()).collect(),
            http: finished.iter().map(|(_, o)| o.http_status as i16).collect(),
            bodies: finished.iter().map(|(_, o)| o.body.to_string()).collect(),
            hashes: finished
                .iter()
                .map(|(e, _)| e.request_hash.as_deref())
                .collect(),
            partitions: ids.iter().map(|id| positions[id].0 as i32).collect(),
            seqs: ids.iter().map(|id| positions[id].1 as i64).collect(),
            ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tally_common::command::Status;

    use super::*;
    use crate::ledger::{EntryType, NewEntry};
    use crate::store::test_envelopes::deduct;

    const APP: Uuid = Uuid::from_u128(3);

    fn entry(user: &str, amount: i64, description: Option<&str>, lot_id: Option<Uuid>) -> NewEntry {
        NewEntry {
            id: Uuid::now_v7(),
            app_id: APP,
            user_id: user.into(),
            credit_type: Default::default(),
            seq: 1,
            entry_type: EntryType::Add,
            amount,
            balance_after: amount,
            source: "api",
            description: description.map(str::to_string),
            metadata: json!({"order": 1}),
            refunded_ledger_id: None,
            expires_at: None,
            lot_id,
            hold_id: None,
            command_id: Uuid::now_v7(),
        }
    }

    #[test]
    fn entry_columns_keep_each_entry_at_one_index() {
        let lot = Uuid::now_v7();
        let entries = [
            entry("ann", 5, Some("gift"), Some(lot)),
            entry("bob", 7, None, None),
        ];

        let columns = EntryColumns::new(&entries);

        assert_eq!(columns.ids, [entries[0].id, entries[1].id]);
        assert_eq!(columns.users, ["ann", "bob"]);
        assert_eq!(columns.amounts, [5, 7]);
        assert_eq!(columns.types, ["add", "add"]);
        assert_eq!(columns.descriptions, [Some("gift"), None]);
        assert_eq!(columns.metadata, [r#"{"order":1}"#; 2]);
        assert_eq!(columns.lots, [Some(lot), None]);
        assert_eq!(
            columns.commands,
            [entries[0].command_id, entries[1].command_id]
        );
    }

    #[test]
    fn processed_columns_take_each_commands_position_by_its_id() {
        let finished: Vec<(Envelope, Outcome)> = [("ann", 11), ("bob", 12)]
            .into_iter()
            .map(|(user, stream_seq)| {
                let mut envelope = deduct(APP, user);
                envelope.request_hash = (user == "ann").then(|| "hash".to_string());
                let outcome = Outcome {
                    command_id: envelope.command_id,
                    status: Status::Rejected,
                    http_status: 402,
                    body: json!({"seq": stream_seq}),
                };
                (envelope, outcome)
            })
            .collect();
        let positions = HashMap::from([
            (finished[0].0.command_id, (4, 11)),
            (finished[1].0.command_id, (9, 12)),
        ]);

        let columns = ProcessedColumns::new(&finished, &positions);

        assert_eq!(columns.partitions, [4, 9]);
        assert_eq!(columns.seqs, [11, 12]);
        assert_eq!(columns.statuses, ["rejected"; 2]);
        assert_eq!(columns.http, [402; 2]);
        assert_eq!(columns.hashes, [Some("hash"), None]);
        assert_eq!(columns.bodies, [r#"{"seq":11}"#, r#"{"seq":12}"#]);
    }
}
