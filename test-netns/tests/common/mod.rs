//! What several cluster tests do through overlayd's own crate: write to a cluster's
//! embedded store as another writer of the store would (a node's credentials, a hostile
//! one). Here and not in the test-netns library, which does not depend on overlayd.

use std::time::Duration;

use test_netns::cluster::Cluster;

/// Runs `f` against the cluster's embedded store.
pub fn with_store<T>(c: &Cluster, f: impl AsyncFnOnce(&dyn overlayd::store::Store) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = overlayd::store::embedded::EmbeddedStore::open(
            overlayd::store::embedded::EmbeddedOptions::new(c.work_dir().join("store.db")),
        )
        .unwrap();
        f(&store).await
    })
}

/// Writes `(subnet key, value)` leases, bound to a store lease as a node writes its own
/// (one without would never expire and is refused).
pub fn put_leases(c: &Cluster, leases: &[(&str, String)]) {
    with_store(c, async |store| {
        let lease = store.grant(Duration::from_secs(300)).await.unwrap();
        for (key, value) in leases {
            store
                .create(&format!("/coreos.com/network/subnets/{key}"), value.as_bytes(), lease)
                .await
                .unwrap();
        }
    });
}
