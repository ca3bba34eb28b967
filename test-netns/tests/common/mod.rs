//! What several cluster tests do through overlayd's own crate: write to a cluster's store
//! as another writer of the store would (a node's credentials, a hostile one). Here and not
//! in the test-netns library, which does not depend on overlayd.

use std::time::Duration;

use overlayd::store::Store;
use overlayd::store::embedded::{EmbeddedOptions, EmbeddedStore};
use overlayd::store::etcd::{EtcdOptions, EtcdStore};
use test_netns::cluster::{Cluster, StoreKind};

/// Runs `f` against the cluster's store as its last node would: the embedded store's file,
/// or etcd from that node's namespace with that node's own store user (on etcd with the
/// roles, [`test_netns::cluster::ClusterOptions::etcd_with_roles`]).
pub fn with_store<T: Send>(c: &Cluster, f: impl AsyncFnOnce(&dyn Store) -> T + Send) -> T {
    let writer = c.nodes.last().expect("a cluster has a node");
    let run = async || match c.options().store {
        StoreKind::Embedded => {
            let store = EmbeddedStore::open(EmbeddedOptions::new(c.work_dir().join("store.db"))).unwrap();
            f(&store).await
        }
        StoreKind::Etcd => {
            let creds = writer.etcd_credentials.as_ref();
            let store = EtcdStore::connect(EtcdOptions {
                endpoints: c.etcd_endpoints().split(',').map(String::from).collect(),
                username: creds.map(|u| u.user.clone()),
                password: creds.map(|u| u.password()),
                ..Default::default()
            })
            .await
            .unwrap();
            f(&store).await
        }
        StoreKind::Kube => panic!("kube mode has no store to write to: write Node objects"),
    };
    writer
        .ns
        .run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()))
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
