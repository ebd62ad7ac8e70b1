//! The store's side of latency budgets and priorities: thin wrappers over the catalog's
//! objectives, priority overrides, published assignment sets (current and history) and proxies.

use crate::catalog::{StoredPrioritySet, StoredProxy};
use crate::error::StorageError;
use crate::store::Store;

impl Store {
    /// The class objectives stored through the API: (class, objective JSON), by class.
    pub async fn objectives(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.inner.catalog.objectives().await
    }

    /// Stores (or replaces) one class's objective (JSON).
    pub async fn put_objective(
        &self,
        class: &str,
        objective: &str,
        now_ns: i64,
    ) -> Result<(), StorageError> {
        self.inner
            .catalog
            .put_objective(class, objective, now_ns)
            .await
    }

    /// Deletes one class's stored objective; returns whether there was one.
    pub async fn delete_objective(&self, class: &str) -> Result<bool, StorageError> {
        self.inner.catalog.delete_objective(class).await
    }

    /// The operator's priority overrides: (class, level).
    pub async fn priority_overrides(&self) -> Result<Vec<(String, i64)>, StorageError> {
        self.inner.catalog.priority_overrides().await
    }

    /// Replaces every priority override.
    pub async fn set_priority_overrides(
        &self,
        overrides: &[(String, i64)],
    ) -> Result<(), StorageError> {
        self.inner
            .catalog
            .replace_priority_overrides(overrides)
            .await
    }

    /// The current assignment set of every service.
    pub async fn priority_sets(&self) -> Result<Vec<StoredPrioritySet>, StorageError> {
        self.inner.catalog.priority_sets().await
    }

    /// Makes `set` current for its service and appends it to the history (last `keep` kept).
    pub async fn store_priority_set(
        &self,
        set: &StoredPrioritySet,
        keep: usize,
    ) -> Result<(), StorageError> {
        self.inner.catalog.store_priority_set(set, keep).await
    }

    /// The stored versions of one service's set, oldest first.
    pub async fn priority_history(
        &self,
        service: &str,
    ) -> Result<Vec<StoredPrioritySet>, StorageError> {
        self.inner.catalog.priority_history(service).await
    }

    /// Inserts or updates proxies.
    pub async fn upsert_proxies(&self, proxies: &[StoredProxy]) -> Result<(), StorageError> {
        self.inner.catalog.upsert_proxies(proxies).await
    }

    /// Deletes the proxies last seen before `ns`.
    pub async fn delete_proxies_seen_before(&self, ns: i64) -> Result<u64, StorageError> {
        self.inner.catalog.delete_proxies_seen_before(ns).await
    }

    /// Every proxy seen.
    pub async fn proxies(&self) -> Result<Vec<StoredProxy>, StorageError> {
        self.inner.catalog.proxies().await
    }
}
