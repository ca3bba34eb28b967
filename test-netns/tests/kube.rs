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
        assert!(
            kubectl_available(),
            "kubectl is missing (apt-get install kubernetes-client; scripts/deps.sh does)"
        );
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

/// Every address any node's overlay device (FDB, neighbours, routes) points at.
fn overlay_state(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| {
            let fdb = n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            let routes = n.ns.exec(&["ip", "route"]);
            format!("{fdb}\n{routes}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const P: &str = "flannel.alpha.coreos.com";

#[test]
fn hostile_nodes_and_forged_annotations_are_ignored() {
    require_kube!();
    let c = kube_cluster(3);
    let a = c.add_pod(0, "ha").unwrap();
    let b = c.add_pod(1, "hb").unwrap();
    let want: Vec<Vec<String>> = (0..3).map(|i| overlay_routes(&c, i)).collect();
    let api = &c.kube().unwrap().api;
    let attacker = "198.18.0.99";
    let ann = |extra: &[(&'static str, &'static str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            (format!("{P}/kube-subnet-manager"), "true".into()),
            (format!("{P}/backend-type"), "vxlan".into()),
            (format!("{P}/backend-data"), r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}"#.into()),
            (format!("{P}/public-ip"), attacker.into()),
        ];
        for (k, val) in extra {
            v.retain(|(x, _)| !x.ends_with(&format!("/{k}")));
            v.push((format!("{P}/{k}"), val.to_string()));
        }
        v
    };
    let create = |name: &str, cidr: &str, a: Vec<(String, String)>| {
        let refs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        api.create_node(name, &[cidr], &refs).unwrap();
    };
    // Backend data that is not JSON; a public IP no peer may use; a subnet outside the
    // network; node0's podCIDR claimed again by a younger Node; an oversized annotation.
    create("hostile-json", "10.244.50.0/24", ann(&[("backend-data", "{not json")]));
    create("hostile-ip", "10.244.51.0/24", ann(&[("public-ip", "127.0.0.1")]));
    create("hostile-outside", "10.99.0.0/24", ann(&[]));
    create("hostile-overlap", "10.244.1.0/24", ann(&[]));
    let big: &'static str = Box::leak("x".repeat(20_000).into_boxed_str());
    create("hostile-big", "10.244.53.0/24", ann(&[("backend-data", big)]));
    // A node's own credentials (the daemon's service-account token) rewrite another Node's
    // public IP, as a compromised node could through nodes/status: the signature no longer
    // verifies, so no node sends node1's traffic to the attacker; node1 puts it back.
    let token = std::fs::read_to_string(c.kube().unwrap().sa_dir.join("token")).unwrap();
    let forged = serde_json::json!({"metadata": {"annotations": {format!("{P}/public-ip"): attacker}}});
    let (code, body) = api.patch_node_status_as(&token, &c.node_name(1), &forged).unwrap();
    assert_eq!(code, 200, "{body}");
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let s = overlay_state(&c);
        assert!(!s.contains(attacker), "a hostile Node reached a datapath:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(Duration::from_secs(15), "node1 to restore its public IP", || {
        api.node(&c.node_name(1)).is_ok_and(|n| {
            n["metadata"]["annotations"][format!("{P}/public-ip")] == c.nodes[1].underlay_ip.as_str()
        })
    })
    .unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&overlay_routes(&c, i), w, "node{i}'s overlay routes changed");
        assert!(c.nodes[i].ready(), "node{i} is no longer ready");
    }
    assert!(!overlay_state(&c).contains(attacker));
    assert!(ping(&a.ns, &b.ip, 2), "pods lost each other");
    // Each hostile Node is named, with the reason, in a daemon's log and an Event.
    let logs: String =
        (0..3).map(|i| std::fs::read_to_string(c.nodes[i].dir.join("overlayd.log")).unwrap()).collect();
    for (node, why) in [
        ("hostile-json", "InvalidBackendData"),
        ("hostile-big", "AnnotationTooLarge"),
        ("hostile-overlap", "PodCIDRConflict"),
    ] {
        assert!(logs.lines().any(|l| l.contains(node) && l.contains(why)), "no log line for {node} ({why})");
    }
    for node in ["hostile-ip", "hostile-outside"] {
        assert!(logs.lines().any(|l| l.contains(node) && l.contains("refused")), "no log line for {node}");
    }
    wait_for(Duration::from_secs(10), "the Events", || {
        api.kubectl(&["get", "events", "-n", "default", "-o", "json"]).is_ok_and(|e| {
            ["InvalidBackendData", "PodCIDRConflict", "InvalidLease"].iter().all(|r| e.contains(r))
        })
    })
    .unwrap();
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn the_daemons_token_can_do_exactly_what_it_needs() {
    require_kube!();
    let c = kube_cluster(2);
    let env = c.kube().unwrap();
    let api = &env.api;
    let token = std::fs::read_to_string(env.sa_dir.join("token")).unwrap();
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        // `can-i` exits 1 with "no" when refused.
        api.kubectl_as(&token, &all).map(|o| o.trim() == "yes").unwrap_or(false)
    };
    for allowed in [
        &["get", "nodes"][..],
        &["list", "nodes"],
        &["watch", "nodes"],
        &["patch", "nodes", "--subresource=status"],
        &["create", "events", "-n", "default"],
    ] {
        assert!(can(allowed), "the daemon may not {allowed:?}");
    }
    for refused in [
        &["patch", "nodes"][..],
        &["update", "nodes"],
        &["create", "nodes"],
        &["delete", "nodes"],
        &["update", "nodes", "--subresource=status"],
        &["get", "secrets", "-n", "kube-system"],
        &["list", "pods", "-A"],
        &["get", "configmaps", "-n", "kube-system"],
        &["create", "events", "-n", "kube-system"],
        &["patch", "events", "-n", "default"],
        &["get", "events", "-n", "default"],
        &["create", "serviceaccounts", "--subresource=token", "-n", "kube-system"],
    ] {
        assert!(!can(refused), "the daemon may {refused:?}");
    }
    // Real requests, not only the authorizer's answer: what it needs works …
    assert!(api.kubectl_as(&token, &["get", "nodes", "-o", "name"]).unwrap().contains("node/node0"));
    let p = serde_json::json!({"metadata": {"annotations": {"example.com/x": "1"}}});
    let (code, body) = api.patch_node_status_as(&token, "node0", &p).unwrap();
    assert_eq!(code, 200, "{body}");
    // … and a request outside its role is refused by the server.
    let (code, body) = api
        .raw_as(
            &token,
            "PATCH",
            "/api/v1/nodes/node0",
            "application/merge-patch+json",
            r#"{"spec":{"unschedulable":true}}"#,
        )
        .unwrap();
    assert_eq!(code, 403, "patching a Node's spec: {body}");
    for args in [
        &["delete", "node", "node1"][..],
        &["get", "secrets", "-n", "kube-system"],
        &["get", "configmaps", "-n", "kube-system"],
    ] {
        let e = api.kubectl_as(&token, args).unwrap_err();
        assert!(e.contains("Forbidden") || e.contains("forbidden"), "{args:?}: {e}");
    }
    // Through the status subresource a Node's spec cannot change: its podCIDR is the API's.
    let p = serde_json::json!({"spec": {"podCIDR": "10.244.77.0/24", "podCIDRs": ["10.244.77.0/24"]}});
    let (code, body) = api.patch_node_status_as(&token, "node1", &p).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.node("node1").unwrap()["spec"]["podCIDR"], "10.244.2.0/24");
    // Both daemons ran with exactly this token.
    for i in 0..2 {
        assert!(c.nodes[i].ready());
    }
}

/// `requests.list` of node `i`'s store (LIST requests its reflector sent).
fn lists_sent(c: &Cluster, i: usize) -> u64 {
    let (code, body) = http_get(&c.nodes[i].socket(), "/v1/store").expect("the daemon's API answers");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["requests"]["list"].as_u64().unwrap_or_else(|| panic!("no requests.list in {v}"))
}

#[test]
fn a_node_created_again_with_another_pod_cidr_moves_and_its_peers_follow() {
    require_kube!();
    let c = kube_cluster(2);
    let name = c.node_name(0);
    let old = c.pod_subnet(0).unwrap();
    let new = "10.244.20.0/24";
    assert_ne!(old, new);
    // podCIDR is immutable on a Node: a new one comes only with the Node deleted and created
    // again (a node re-registered by its kubelet, a controller that reassigned it).
    let api = &c.kube().unwrap().api;
    api.kubectl(&["delete", "node", &name]).unwrap();
    api.create_node(&name, &[new], &[]).unwrap();
    wait_for(Duration::from_secs(20), "node0's subnet.env to name the new subnet", || {
        c.pod_subnet(0).is_ok_and(|s| s == new)
    })
    .unwrap();
    wait_for(Duration::from_secs(20), "node1 to route the new subnet and drop the old one", || {
        let r = overlay_routes(&c, 1);
        r.contains(&new.to_string()) && !r.contains(&old)
    })
    .unwrap();
    // The daemon published its lease again on the new Node object.
    wait_for(Duration::from_secs(10), "the new Node's annotations", || {
        api.node(&name).is_ok_and(|n| {
            n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"]
                == c.nodes[0].underlay_ip.as_str()
        })
    })
    .unwrap();
    let log = std::fs::read_to_string(c.nodes[0].dir.join("overlayd.log")).unwrap();
    assert!(log.contains(&format!("Node {name}'s podCIDR changed from")), "{log}");
    wait_for(Duration::from_secs(10), "the PodCIDRChanged event", || {
        api.kubectl(&["get", "events", "-n", "default", "-o", "json"])
            .is_ok_and(|e| e.contains("PodCIDRChanged"))
    })
    .unwrap();
    // Pods made after the move get addresses of the new subnet and reach the other node.
    c.wait_ready(0).unwrap();
    let a = c.add_pod(0, "moved").unwrap();
    let b = c.add_pod(1, "stay").unwrap();
    let net: ipnet::Ipv4Net = new.parse().unwrap();
    assert!(net.contains(&a.ip.parse::<std::net::Ipv4Addr>().unwrap()), "{} is not in {new}", a.ip);
    assert!(ping(&a.ns, &b.ip, 3) && ping(&b.ns, &a.ip, 3), "pods across the move do not reach each other");
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn a_watch_resumed_after_the_servers_history_is_gone_lists_again_and_catches_up() {
    require_kube!();
    let mut c = kube_cluster(3);
    let gone_name = c.node_name(2);
    let gone_subnet = c.pod_subnet(2).unwrap();
    for i in 0..2 {
        wait_for(Duration::from_secs(10), "every route", || overlay_routes(&c, i).contains(&gone_subnet))
            .unwrap();
    }
    let lists_before = lists_sent(&c, 1);
    // Node 1 loses the API: its route to the service address is refused, and the relay
    // closes the connections it carries (the other nodes reconnect at once).
    let service = format!("{}/32", test_netns::kube::SERVICE_IP);
    c.nodes[1].ns.exec(&["ip", "route", "replace", "prohibit", &service]);
    c.kube().unwrap().relay.cut();
    wait_for(Duration::from_secs(15), "node1 to notice the outage", || status(&c, 1)["store_ok"] == false)
        .unwrap();
    // Meanwhile a Node goes and another comes, and the API server restarts: its watch cache
    // starts over at the current revision, so node1's last resourceVersion is too old (410
    // Gone) and only a new listing can tell it about the deletion.
    let api = &c.kube().unwrap().api;
    api.kubectl(&["delete", "node", &gone_name]).unwrap();
    let j = c.add_node().unwrap();
    c.wait_ready(j).unwrap();
    let joined_subnet = c.pod_subnet(j).unwrap();
    {
        let k = c.kube_mut().unwrap();
        k.api.stop_apiserver();
        k.api.start_apiserver().unwrap();
    }
    wait_for(Duration::from_secs(20), "node0 to see the change", || {
        let r = overlay_routes(&c, 0);
        r.contains(&joined_subnet) && !r.contains(&gone_subnet)
    })
    .unwrap();
    assert!(overlay_routes(&c, 1).contains(&gone_subnet), "node1 learned of the deletion while cut off");
    // Node 1 gets the API back.
    c.kube().unwrap().route_from(&c.nodes[1].ns);
    wait_for(Duration::from_secs(30), "node1 to catch up", || {
        let r = overlay_routes(&c, 1);
        r.contains(&joined_subnet) && !r.contains(&gone_subnet)
    })
    .unwrap();
    assert_eq!(status(&c, 1)["store_ok"], true);
    assert!(lists_sent(&c, 1) > lists_before, "node1 caught up without listing again");
    let a = c.add_pod(1, "back").unwrap();
    let b = c.add_pod(j, "new").unwrap();
    assert!(ping(&a.ns, &b.ip, 3), "node1's pod cannot reach the node that joined during its outage");
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}
