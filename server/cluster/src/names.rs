//! The NATS names a cluster uses, all derived from its name, and their set-up.
//!
//! | what | name |
//! |---|---|
//! | span stream | `<cluster>_spans`, subjects `<cluster>.spans.<partition>` |
//! | consumer of a partition | `<cluster>_p<partition>_e<epoch>` (durable, pull; one per claim) |
//! | leases and members | KV bucket `<cluster>_leases` |
//! | cluster facts (partition count) | KV bucket `<cluster>_meta` |

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use bytes::Bytes;

use crate::ClusterError;

/// The names of one cluster's streams, subjects and buckets.
#[derive(Clone, Debug)]
pub struct ClusterNames {
    pub cluster: String,
}

impl ClusterNames {
    /// Checks the cluster name: 1 to 48 ASCII letters, digits, `-` or `_` (it becomes part of
    /// subjects, stream and bucket names), without `__` (which separates a tenant's part, see
    /// [`ClusterNames::for_tenant`]).
    pub fn new(cluster: &str) -> Result<ClusterNames, ClusterError> {
        let ok = !cluster.is_empty()
            && cluster.len() <= 48
            && !cluster.contains("__")
            && cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match ok {
            true => Ok(ClusterNames {
                cluster: cluster.to_string(),
            }),
            false => Err(ClusterError::Config(format!(
                "cluster name {cluster:?}: use 1 to 48 letters, digits, '-' or '_', and no '__'"
            ))),
        }
    }

    /// The names of a tenant's own stream, subjects and buckets in this cluster:
    /// `<cluster>__t_<tenant>`, where the tenant ID's `_` is written `_u` and its `.` (which
    /// NATS names cannot hold) `_d`, so that no two tenants, and no tenant and a cluster of
    /// its own (whose names hold no `__`), share a name.
    pub fn for_tenant(&self, tenant: &str) -> ClusterNames {
        let mut cluster = format!("{}__t_", self.cluster);
        for c in tenant.chars() {
            match c {
                '_' => cluster.push_str("_u"),
                '.' => cluster.push_str("_d"),
                c => cluster.push(c),
            }
        }
        ClusterNames { cluster }
    }

    pub fn stream(&self) -> String {
        format!("{}_spans", self.cluster)
    }

    pub fn subject(&self, partition: u32) -> String {
        format!("{}.spans.{partition}", self.cluster)
    }

    /// The consumer of `partition` for the claim of `epoch`: each claim consumes through a
    /// consumer of its own, so a node that lost the partition and still pulls until it notices
    /// can never take messages from the new owner's consumer.
    pub fn consumer(&self, partition: u32, epoch: i64) -> String {
        format!("{}{epoch}", self.consumer_prefix(partition))
    }

    /// What the names of every claim's consumer of `partition` start with.
    pub fn consumer_prefix(&self, partition: u32) -> String {
        format!("{}_p{partition}_e", self.cluster)
    }

    /// Where nodes forward the budget observation of every trace they complete.
    pub fn observations(&self) -> String {
        format!("{}.observations", self.cluster)
    }

    pub fn lease_bucket(&self) -> String {
        format!("{}_leases", self.cluster)
    }

    pub fn meta_bucket(&self) -> String {
        format!("{}_meta", self.cluster)
    }

    /// Creates the span stream if missing (file storage, kept for `max_age`, messages with the
    /// same ID within `duplicate_window` stored once) and returns it.
    pub async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        max_age: Duration,
        duplicate_window: Duration,
    ) -> Result<stream::Stream, ClusterError> {
        js.get_or_create_stream(stream::Config {
            name: self.stream(),
            subjects: vec![format!("{}.spans.*", self.cluster)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age,
            duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::nats("creating the span stream", e))
    }

    /// Records the partition count when the cluster is created; afterwards a node configured
    /// with another count refuses to start (it would send traces to the wrong owners).
    pub async fn check_partitions(
        &self,
        js: &jetstream::Context,
        partitions: u32,
    ) -> Result<(), ClusterError> {
        let meta = key_value_bucket(js, &self.meta_bucket(), Duration::ZERO).await?;
        let value = Bytes::from(partitions.to_string());
        if meta.create("partitions", value).await.is_ok() {
            return Ok(());
        }
        let stored = meta
            .get("partitions")
            .await
            .map_err(|e| ClusterError::nats("reading the partition count", e))?
            .map(|b| String::from_utf8_lossy(&b).to_string())
            .unwrap_or_default();
        match stored == partitions.to_string() {
            true => Ok(()),
            false => Err(ClusterError::Config(format!(
                "cluster {} was created with {stored} partitions; this node is configured \
                 with {partitions} (the count is fixed when a cluster is created)",
                self.cluster
            ))),
        }
    }
}

/// Opens the KV bucket `bucket`, creating it if missing, keeping one value a key, each for
/// `max_age` after its last write (zero: for ever).
///
/// The stream is made here with a KV bucket's settings instead of by `create_key_value`,
/// which first asks for the account's limits in a form NATS servers before 2.10 do not answer.
pub async fn key_value_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    let duplicate_window = match max_age.is_zero() {
        true => Duration::from_secs(120),
        false => max_age.min(Duration::from_secs(120)),
    };
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::nats(&format!("creating bucket {bucket}"), e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| ClusterError::nats(&format!("opening bucket {bucket}"), e))
}

/// Deletes the KV bucket `bucket` (tests and `meshtrace cluster delete`).
pub async fn delete_bucket(js: &jetstream::Context, bucket: &str) -> Result<(), ClusterError> {
    js.delete_stream(format!("KV_{bucket}"))
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::nats(&format!("deleting bucket {bucket}"), e))
}

#[cfg(test)]
mod tests {
    use super::ClusterNames;

    #[test]
    fn every_tenant_gets_names_of_its_own_that_nats_takes() {
        let prod = ClusterNames::new("prod").unwrap();
        let tenants = ["acme", "acme.eu", "acme_eu", "acme-eu", "acme_deu", "a.b_c"];
        let names: Vec<String> = tenants.iter().map(|t| prod.for_tenant(t).cluster).collect();
        assert_eq!(names[1], "prod__t_acme_deu");
        assert_eq!(names[2], "prod__t_acme_ueu");
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), tenants.len(), "{names:?}");
        for n in &names {
            let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            assert!(n.bytes().all(ok), "{n}");
            assert_ne!(n, "prod", "not the default tenant's");
        }
        // No cluster of its own is named like a tenant's part of another.
        assert!(ClusterNames::new("prod__t_acme").is_err());
        assert!(ClusterNames::new("prod_t_acme").is_ok());
    }
}
