//! Migrating a node from flanneld to overlayd, end to end in namespaces: pods flannel's CNI
//! plugin attached (its saved delegate configs written as it writes them, the real bridge
//! and host-local plugins as its delegate) are released by the vxlan plugin's DEL.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use cni_spec::NetConfList;
use cni_spec::runtime::Attach;
use serde_json::json;
use test_netns::cluster::{Cluster, ClusterOptions, bin_dir};
use test_netns::{TestNs, ping, require_root};

/// Host-local's address files of network `net` in `ipam_dir` (the pods' addresses).
fn ipam_leases(ipam_dir: &std::path::Path, net: &str) -> Vec<String> {
    match std::fs::read_dir(ipam_dir.join(net)) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes `bytes` where flannel's plugin saves a pod's delegate config, as it does it
/// (directory 0700, file 0600).
fn flannel_save(dir: &std::path::Path, cid: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(cid)).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

#[test]
fn del_of_pods_flannel_attached_frees_their_addresses_through_flannels_saved_config() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(1, bin_dir())).unwrap();
    let node = &c.nodes[0];
    let flannel_dir = node.dir.join("flannel-cni");
    let ipam_dir = node.dir.join("ipam");
    let subnet = c.pod_subnet(0).unwrap();
    // flannel's plugin's delegate config for kube-flannel.yml's conflist (network `cbr0`,
    // delegate {hairpinMode, isDefaultGateway}), with the node's subnet.env filled in. It
    // saves json.Marshal of a Go map: compact, keys sorted, which serde_json also writes.
    let conf = json!({
        "cniVersion": "0.3.1",
        "hairpinMode": true,
        "ipMasq": false,
        "ipam": {
            "dataDir": ipam_dir,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "10.244.0.0/16"}],
            "type": "host-local"
        },
        "isDefaultGateway": true,
        "isGateway": true,
        "mtu": 1450,
        "name": "cbr0",
        "type": "bridge"
    });
    let bytes = serde_json::to_vec(&conf).unwrap();
    assert!(std::str::from_utf8(&bytes).unwrap().starts_with(r#"{"cniVersion":"0.3.1","hairpinMode":true,"#));

    // Two pods attached as flannel's plugin attaches them: the file saved, then the real
    // bridge plugin run as its delegate (through the runtime, with that config).
    let mut list_conf = conf.clone();
    let obj = list_conf.as_object_mut().unwrap();
    obj.remove("cniVersion");
    obj.remove("name");
    let list = NetConfList::parse(
        json!({"cniVersion": "0.3.1", "name": "cbr0", "plugins": [list_conf]}).to_string().as_bytes(),
    )
    .unwrap();
    let rt = c.runtime(0);
    let pods: Vec<(TestNs, String)> = (0..2)
        .map(|i| {
            let ns = TestNs::new(&format!("flpod{i}"));
            let cid = format!("f1a77e1{i}c0ffee{i}");
            flannel_save(&flannel_dir, &cid, &bytes);
            node.ns.run(|| rt.add(&list, &Attach::new(&cid, ns.path(), "eth0"))).unwrap();
            (ns, cid)
        })
        .collect();
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 2);
    // They work on the node overlayd now runs (same bridge, same subnet).
    let ours = c.add_pod(0, "ours").unwrap();
    let flannel_pod_ip = pods[0].0.exec(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    let flannel_pod_ip =
        flannel_pod_ip.split_whitespace().nth(3).unwrap().split('/').next().unwrap().to_string();
    assert!(ping(&ours.ns, &flannel_pod_ip, 2), "our pod does not reach flannel's");

    // The conflist is ours now (type vxlan): DEL of flannel's pods goes through flannel's
    // saved config and host-local frees their addresses.
    let vxlan_rt = c.runtime(0);
    let our_list = node.conflist();
    for (ns, cid) in &pods[..1] {
        node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid, ns.path(), "eth0"))).unwrap();
        assert!(!flannel_dir.join(cid).exists(), "flannel's file stays after a successful DEL");
        assert!(!ns.try_exec(&["ip", "link", "show", "eth0"]), "the pod's interface stays");
    }
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 1, "the address was not freed");
    // DEL again (runtimes repeat it): nothing left, success.
    let (ns, cid) = &pods[0];
    node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid, ns.path(), "eth0"))).unwrap();

    // A damaged file: DEL succeeds (as flannel's does), calls no delegate, keeps the file.
    let (ns1, cid1) = &pods[1];
    std::fs::write(flannel_dir.join(cid1), b"{not json").unwrap();
    node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid1, ns1.path(), "eth0"))).unwrap();
    assert!(flannel_dir.join(cid1).exists());
    assert!(ns1.try_exec(&["ip", "link", "show", "eth0"]), "a delegate ran on a damaged file");
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 1);
    // Repaired, it goes.
    std::fs::write(flannel_dir.join(cid1), &bytes).unwrap();
    node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid1, ns1.path(), "eth0"))).unwrap();
    assert_eq!(ipam_leases(&ipam_dir, "cbr0"), Vec::<String>::new());
    // Our own pods are untouched by all this and go the usual way.
    c.del_pod(&ours).unwrap();
    assert_eq!(ipam_leases(&ipam_dir, "cluster"), Vec::<String>::new());
}
