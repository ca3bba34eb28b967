//! Kube mode against a real API server (`kube-apiserver` v1.20.2 from `shared/kube/`, Debian's
//! etcd): node namespaces of the cluster harness whose daemons run as the DaemonSet runs them
//! (`--kube-subnet-mgr`, NODE_NAME, the pod's service account with the RBAC of
//! `deploy/kubernetes/rbac.yaml`, the API at `10.96.0.1:443` through a relay), pods attached
//! through the runtime.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_netns::cluster::{Cluster, ClusterOptions, ClusterPod, StoreKind, bin_dir, http_get, wait_for};
use test_netns::kube::{apiserver_binary, kubectl_available, manifests_dir};
use test_netns::{ping, require_root};

/// Returns from the test (skipping, or failing under CI=true) when a real API server cannot
/// run here.
macro_rules! require_kube {
    () => {
        require_root!();
        if let Err(why) = apiserver_binary() {
            test_netns::skip(module_path!(), &why);
            return;
        }
        if !kubectl_available() {
            test_netns::skip(module_path!(), "kubectl is missing (apt-get install kubernetes-client)");
            return;
        }
    };
}

fn kube_cluster(nodes: usize) -> Cluster {
    let mut o = ClusterOptions::new(nodes, bin_dir());
    o.store = StoreKind::Kube;
    Cluster::start(o).unwrap()
}

fn all_pairs(pods: &[ClusterPod]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for a in pods {
        for b in pods {
            if a.ip != b.ip && !ping(&a.ns, &b.ip, 2) {
                failed.push((a.ip.clone(), b.ip.clone()));
            }
        }
    }
    failed
}

/// Routes of node `i` through the overlay device, by destination.
fn overlay_routes(c: &Cluster, i: usize) -> Vec<String> {
    let out = c.nodes[i].ns.exec(&["ip", "-o", "route", "show", "dev", "flannel.1"]);
    let mut v: Vec<String> =
        out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    v.sort();
    v
}

fn status(c: &Cluster, i: usize) -> Value {
    let (ok, out) = c.overlayctl(i, &["status", "--json"]).unwrap();
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

fn datapath_snapshot(c: &Cluster) -> Vec<String> {
    c.nodes
        .iter()
        .map(|n| {
            let routes = n.ns.exec(&["ip", "route"]);
            let neigh = n.ns.exec(&["ip", "neigh", "show", "dev", "flannel.1"]);
            let fdb = n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            format!("{routes}\n{neigh}\n{fdb}")
        })
        .collect()
}

#[test]
fn nodes_from_the_api_reach_each_other_and_follow_nodes_added_and_deleted() {
    require_kube!();
    let mut c = kube_cluster(3);
    let mut pods = Vec::new();
    for n in 0..3 {
        for p in 0..2 {
            pods.push(c.add_pod(n, &format!("k{n}{p}")).unwrap());
        }
    }
    assert_eq!(all_pairs(&pods), vec![]);
    let api = &c.kube().unwrap().api;
    // Each daemon published its lease on its Node and cleared NetworkUnavailable.
    for i in 0..3 {
        let n = api.node(&c.node_name(i)).unwrap();
        let a = &n["metadata"]["annotations"];
        assert_eq!(a["flannel.alpha.coreos.com/kube-subnet-manager"], "true", "{n}");
        assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "vxlan");
        assert_eq!(a["flannel.alpha.coreos.com/public-ip"], c.nodes[i].underlay_ip.as_str());
        let cond = n["status"]["conditions"].as_array().unwrap();
        assert!(cond.iter().any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"), "{n}");
        assert_eq!(c.pod_subnet(i).unwrap(), format!("10.244.{}.0/24", i + 1));
    }

    // A node joins: its Node object, then its daemon.
    let j = c.add_node().unwrap();
    c.wait_ready(j).unwrap();
    pods.push(c.add_pod(j, "joined").unwrap());
    wait_for(Duration::from_secs(15), "everyone to reach the new pod", || all_pairs(&pods).is_empty())
        .unwrap();

    // Node 1 is deleted (kubectl delete node): every other node drops its routes.
    let gone = "10.244.2.0/24".to_string();
    for i in [0, 2, 3] {
        assert!(overlay_routes(&c, i).contains(&gone));
    }
    c.kube().unwrap().api.kubectl(&["delete", "node", &c.node_name(1)]).unwrap();
    for i in [0, 2, 3] {
        wait_for(Duration::from_secs(10), "node1's route to go", || !overlay_routes(&c, i).contains(&gone))
            .unwrap();
    }
    for p in pods.iter().filter(|p| p.node == 1) {
        let _ = c.del_pod(p);
    }
    pods.retain(|p| p.node != 1);
    assert_eq!(all_pairs(&pods), vec![]);
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}

#[test]
fn a_node_without_a_pod_cidr_waits_with_a_clear_status() {
    require_kube!();
    let mut c = kube_cluster(1);
    let i = c.add_node_with(&[]).unwrap();
    let name = c.node_name(i);
    wait_for(Duration::from_secs(15), "the waiting status", || {
        c.overlayctl(i, &["status", "--json"]).is_ok_and(|(ok, out)| ok && out.contains("has no podCIDR yet"))
    })
    .unwrap();
    let s = status(&c, i);
    assert_eq!(s["ready"], false, "{s}");
    assert!(s["last_error"].as_str().unwrap().contains(&format!("Node {name} has no podCIDR yet")), "{s}");
    assert_eq!(http_get(&c.nodes[i].socket(), "/readyz").map(|r| r.0), Some(503));
    let log = std::fs::read_to_string(c.nodes[i].dir.join("overlayd.log")).unwrap();
    assert!(log.contains("has no podCIDR yet"), "{log}");
    // An Event on the Node says so too.
    let api = &c.kube().unwrap().api;
    wait_for(Duration::from_secs(10), "the WaitingForPodCIDR event", || {
        api.kubectl(&["get", "events", "-n", "default", "-o", "json"])
            .is_ok_and(|e| e.contains("WaitingForPodCIDR"))
    })
    .unwrap();
    // The controller assigns one (podCIDR may go from empty to a value once): the node gets
    // ready and is reached.
    api.kubectl(&[
        "patch",
        "node",
        &name,
        "-p",
        r#"{"spec":{"podCIDR":"10.244.9.0/24","podCIDRs":["10.244.9.0/24"]}}"#,
    ])
    .unwrap();
    c.wait_ready(i).unwrap();
    assert_eq!(c.pod_subnet(i).unwrap(), "10.244.9.0/24");
    let a = c.add_pod(0, "w0").unwrap();
    let b = c.add_pod(i, "w1").unwrap();
    assert!(ping(&a.ns, &b.ip, 2) && ping(&b.ns, &a.ip, 2));
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn an_api_server_outage_of_30_s_changes_no_datapath_state() {
    require_kube!();
    let mut c = kube_cluster(3);
    let a = c.add_pod(0, "oa").unwrap();
    let b = c.add_pod(2, "ob").unwrap();
    assert!(ping(&a.ns, &b.ip, 2));
    let before = datapath_snapshot(&c);
    let events_before: Vec<Value> = (0..3).map(|i| status(&c, i)["peer_events"].clone()).collect();
    c.kube_mut().unwrap().api.stop_apiserver();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(datapath_snapshot(&c), before, "the datapath changed during the outage");
        assert!(ping(&a.ns, &b.ip, 2), "pods lost each other during the outage");
        for i in 0..3 {
            assert!(c.nodes[i].ready(), "node{i} stopped being ready during the outage");
        }
    }
    let s = status(&c, 0);
    assert_eq!(s["store_ok"], false, "{s}");
    c.kube_mut().unwrap().api.start_apiserver().unwrap();
    wait_for(Duration::from_secs(30), "the daemons to reconnect", || {
        (0..3).all(|i| status(&c, i)["store_ok"] == true)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(datapath_snapshot(&c), before, "the datapath changed after the outage");
    let events_after: Vec<Value> = (0..3).map(|i| status(&c, i)["peer_events"].clone()).collect();
    assert_eq!(events_after, events_before, "peers came and went across the outage");
    // And the API works again for them: a new node is learned by all.
    let j = c.add_node().unwrap();
    c.wait_ready(j).unwrap();
    for i in 0..3 {
        wait_for(Duration::from_secs(10), "the new node's route", || {
            overlay_routes(&c, i).contains(&"10.244.4.0/24".to_string())
        })
        .unwrap();
    }
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn the_manifests_are_valid_for_the_server() {
    require_kube!();
    let dir = tempfile::tempdir().unwrap();
    let api = test_netns::kube::ApiServer::start(dir.path()).unwrap();
    let m = manifests_dir();
    let out = api.kubectl(&["apply", "--dry-run=server", "-f", m.to_str().unwrap()]).unwrap();
    for kind in ["daemonset.apps/ferrocni-overlayd", "configmap/ferrocni-config", "clusterrole.rbac"] {
        assert!(out.contains(kind), "{out}");
    }
    api.kubectl(&["apply", "-f", m.to_str().unwrap()]).unwrap();
    let ds: Value = serde_json::from_str(
        &api.kubectl(&["get", "daemonset", "-n", "kube-system", "ferrocni-overlayd", "-o", "json"]).unwrap(),
    )
    .unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    let args: Vec<&str> =
        spec["containers"][0]["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--kube-subnet-mgr"), "{args:?}");
    // The ConfigMap's files are what the daemon and the install step accept.
    let cm: Value = serde_json::from_str(
        &api.kubectl(&["get", "configmap", "-n", "kube-system", "ferrocni-config", "-o", "json"]).unwrap(),
    )
    .unwrap();
    overlayd::config::NetworkConfig::parse(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    overlayd::kube::install::check_conflist(cm["data"]["cni-conf.json"].as_str().unwrap().as_bytes())
        .unwrap();
}
