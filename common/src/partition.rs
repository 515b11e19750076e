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

    /// Every command subject: the batch subject, and the per-partition subjects of
    /// single-command messages published by earlier versions.
    pub fn command_subjects_wildcard(&self) -> String {
        format!("{}.cmd.*", self.namespace)
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
    fn users_spread_over_partitions() {
        let app = Uuid::now_v7();
        let used: std::collections::HashSet<u32> = (0..1000)
            .map(|i| partition_of(app, &format!("u{i}"), 64))
            .collect();
        assert!(used.len() > 56, "only {} partitions used", used.len());
    }
}
