//! Which partition a user's commands go to, and the names of every subject and stream.
//!
//! `partition = fnv1a32(app_id ‖ user_id) % P`. FNV-1a 32 is the hash nats-server's
//! `{{partition(N, …)}}` subject mapping uses, so a server-side transform could take over later.

use uuid::Uuid;

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: impl IntoIterator<Item = u8>) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.into_iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    })
}

/// The partition that orders every command of `user_id` in `app_id`.
pub fn partition_of(app_id: Uuid, user_id: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be positive");
    let app = app_id.hyphenated().to_string();
    fnv1a32(app.bytes().chain(user_id.bytes())) % partitions
}

/// Names of the NATS objects of one deployment, all prefixed by its namespace.
#[derive(Clone, Debug)]
pub struct Names {
    pub namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
        }
    }

    /// The command stream, e.g. `TALLY_COMMANDS`.
    pub fn command_stream(&self) -> String {
        format!(
            "{}_COMMANDS",
            self.namespace.to_uppercase().replace(['.', '-'], "_")
        )
    }

    /// Subject of one partition, e.g. `tally.cmd.7`.
    pub fn command_subject(&self, partition: u32) -> String {
        format!("{}.cmd.{partition}", self.namespace)
    }

    /// Subject of batch messages, each carrying commands of many partitions
    /// ([`crate::command::CommandBatch`]), e.g. `tally.cmd.batch`.
    pub fn command_batch_subject(&self) -> String {
        format!("{}.cmd.batch", self.namespace)
    }

    /// Every three-token command subject: the batch subject, and the per-partition subjects of
    /// single-command messages published by earlier versions.
    pub fn command_subjects_wildcard(&self) -> String {
        format!("{}.cmd.*", self.namespace)
    }

    /// Every routed subject ([`crate::routing`]), e.g. `tally.cmd.m.>`.
    pub fn command_routed_wildcard(&self) -> String {
        format!("{}.cmd.m.>", self.namespace)
    }

    /// Every command subject, routed or not.
    pub fn command_all_wildcard(&self) -> String {
        format!("{}.cmd.>", self.namespace)
    }

    /// Whether `subject` is a routed subject.
    pub fn is_routed(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.namespace.as_str())
            .is_some_and(|rest| rest.starts_with(".cmd.m."))
    }

    /// Whether `subject` holds batch messages: a routed subject or the batch subject.
    pub fn is_batch(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.namespace.as_str())
            .is_some_and(|rest| rest == ".cmd.batch" || rest.starts_with(".cmd.m."))
    }

    /// The routed subject of a batch message that may hold commands of the shards in `mask`:
    /// one token per shard, `1` when marked, e.g. `tally.cmd.m.1.0.0.1` for 4 shards.
    pub fn command_routed_subject(&self, mask: u64, shards: u32) -> String {
        let mut subject = String::with_capacity(self.namespace.len() + 7 + 2 * shards as usize);
        subject.push_str(&self.namespace);
        subject.push_str(".cmd.m");
        for shard in 0..shards {
            subject.push_str(if mask & (1 << shard) != 0 { ".1" } else { ".0" });
        }
        subject
    }

    /// The filter matching every routed subject that marks `shard`.
    pub fn command_shard_filter(&self, shard: u32, shards: u32) -> String {
        let mut subject = format!("{}.cmd.m", self.namespace);
        for token in 0..shards {
            subject.push_str(if token == shard { ".1" } else { ".*" });
        }
        subject
    }

    /// Inbox prefix under which one ingress instance receives worker replies.
    pub fn reply_prefix(&self, instance: Uuid) -> String {
        format!("_INBOX.{}.{}", self.namespace, instance.simple())
    }

    /// The stream of outbound event deliveries to do, e.g. `TALLY_DELIVERIES`.
    pub fn delivery_stream(&self) -> String {
        format!(
            "{}_DELIVERIES",
            self.namespace.to_uppercase().replace(['.', '-'], "_")
        )
    }

    /// Subject of delivery messages ([`crate::events::DeliveryMessage`]), e.g. `tally.delivery`.
    pub fn delivery_subject(&self) -> String {
        format!("{}.delivery", self.namespace)
    }

    /// The durable consumer every worker's deliverer shares, e.g. `tally_deliverers`.
    pub fn delivery_consumer(&self) -> String {
        format!("{}_deliverers", self.namespace.replace(['.', '-'], "_"))
    }

    /// Subject where poison commands are parked for an operator.
    pub fn dead_letter_subject(&self) -> String {
        format!("{}.dead_letter", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_reference_vectors() {
        assert_eq!(fnv1a32(*b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(*b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(*b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        let app = Uuid::nil();
        let first = partition_of(app, "user_abc123", 64);
        assert_eq!(first, partition_of(app, "user_abc123", 64));
        assert!(first < 64);
    }

    #[test]
    fn routed_subjects_mark_their_shards_and_filters_match_them() {
        let names = Names::new("t.x");
        let subject = names.command_routed_subject(0b1001, 4);
        assert_eq!(subject, "t.x.cmd.m.1.0.0.1");
        assert!(names.is_routed(&subject));
        assert!(!names.is_routed(&names.command_batch_subject()));
        assert!(names.is_batch(&subject) && names.is_batch(&names.command_batch_subject()));
        assert!(!names.is_batch(&names.command_subject(3)));
        assert!(!Names::new("t").is_routed(&subject));
        assert_eq!(names.command_shard_filter(2, 4), "t.x.cmd.m.*.*.1.*");
    }

    #[test]
    fn users_spread_over_partitions() {
        let app = Uuid::now_v7();
        let used: std::collections::HashSet<u32> = (0..1000)
            .map(|i| partition_of(app, &format!("u{i}"), 64))
            .collect();
        assert!(used.len() > 56, "only {} partitions used", used.len());
    }
}
