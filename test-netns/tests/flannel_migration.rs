//! Converting a node with running pods from flanneld to overlayd and back, with pod traffic
//! flowing across nodes the whole time and every lost packet counted.
//!
//! flanneld itself cannot run here: Debian has no package of it and there is no Go
//! toolchain to build it. So the "flanneld" node's state is made by [`Flanneld`], which does
//! what flanneld's vxlan backend and etcd subnet manager do at start, in their order and
//! with their formats (read from flannel's source): the `flannel.1` device (VNI 1, no
//! port attribute so the kernel's 8472, learning off, a random locally administered MAC,
//! MTU underlay − 50, reused when compatible by flannel's own test), the lease (found by
//! public IP and rewritten with a fresh 24 h etcd lease, or allocated; the value is
//! `json.Marshal` of flannel's `LeaseAttrs`), the `/32` address, the masquerade and forward
//! chains, `subnet.env`, then one neighbour, FDB entry and onlink route per peer lease. Pods
//! on that node are attached as flannel's CNI plugin attaches them (its delegate config
//! saved, the bridge plugin run with it).

use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_spec::NetConfList;
use cni_spec::runtime::Attach;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use test_netns::cluster::{Cluster, ClusterOptions, StoreKind, bin_dir, ping_flood, ping_result, wait_for};
use test_netns::{TestNs, ping, require_root};

/// flannel's default `--etcd-prefix`.
const PREFIX: &str = "/coreos.com/network";
/// flannel's `subnetTTL`.
const LEASE_TTL_SECS: u32 = 24 * 3600;
/// The most packets either direction may lose across one switch (100 pps): see
/// docs/flannel-migration.md, which states this bound.
const MAX_LOST: u32 = 10;

/// flanneld (vxlan backend, etcd subnet manager, `--ip-masq`) on one node, as state it makes.
struct Flanneld<'a> {
    ns: &'a TestNs,
    endpoints: String,
    public_ip: Ipv4Addr,
    iface: &'static str,
    subnet_file: PathBuf,
}

/// What a flanneld start left.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlannelState {
    subnet: Ipv4Net,
    mac: String,
    ifindex: u32,
}

impl Flanneld<'_> {
    fn etcdctl(&self, args: &[&str]) -> String {
        let mut argv = vec!["etcdctl", "--endpoints", self.endpoints.as_str()];
        argv.extend(args);
        self.ns.exec(&argv)
    }

    /// Every lease under the prefix: (subnet, value).
    fn leases(&self) -> Vec<(Ipv4Net, Value)> {
        let out = self.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter_map(|kv| {
                let key = kv[0].rsplit('/').next()?;
                // flannel's key: 10.244.3.0-24 (IPv4 only here).
                let (ip, len) = key.split_once('-')?;
                let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
                Some((net, serde_json::from_str(kv.get(1)?).ok()?))
            })
            .collect()
    }

    fn network(&self) -> Ipv4Net {
        let conf = self.etcdctl(&["get", "--print-value-only", &format!("{PREFIX}/config")]);
        let v: Value = serde_json::from_str(conf.trim()).unwrap_or_else(|e| panic!("{e}: {conf}"));
        v["Network"].as_str().unwrap().parse().unwrap()
    }

    fn link(&self, name: &str) -> Option<Value> {
        let out = self.ns.command("ip").args(["-d", "-j", "link", "show", "dev", name]).output().unwrap();
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()?.first().cloned()
    }

    /// flannel's `vxlanLinksIncompat` against the device it wants: "" when compatible.
    fn incompatible(&self, l: &Value) -> String {
        let d = &l["linkinfo"]["info_data"];
        if l["linkinfo"]["info_kind"] != "vxlan" {
            return format!("link type {}", l["linkinfo"]["info_kind"]);
        }
        if d["id"] != 1 {
            return format!("vni {}", d["id"]);
        }
        if d["link"].as_str().is_some_and(|x| x != self.iface) {
            return format!("vtep interface {}", d["link"]);
        }
        if d["local"].as_str().is_some_and(|x| x != self.public_ip.to_string()) {
            return format!("vtep IP {}", d["local"]);
        }
        if !d["group"].is_null() {
            return format!("group {}", d["group"]);
        }
        if d["l2miss"].as_bool().unwrap_or(false) {
            return "l2miss".into();
        }
        // flannel asks for no port (0: the kernel's default), so any port is compatible.
        if d["gbp"].as_bool().unwrap_or(false) {
            return "gbp".into();
        }
        String::new()
    }

    /// flanneld's start, in its order; returns what it left.
    fn start(&self) -> FlannelState {
        let network = self.network();
        // 1. The device (newVXLANDevice): created with a random locally administered MAC,
        //    or the existing one reused when compatible.
        if let Some(l) = self.link("flannel.1") {
            let why = self.incompatible(&l);
            if !why.is_empty() {
                eprintln!("flanneld model: flannel.1 incompatible ({why}): recreating");
                self.ns.exec(&["ip", "link", "del", "flannel.1"]);
            }
        }
        if self.link("flannel.1").is_none() {
            let mut mac = [0u8; 6];
            mac.iter_mut().for_each(|b| *b = fastrand::u8(..));
            mac[0] = (mac[0] & 0xfe) | 0x02;
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let mtu = self.link(self.iface).unwrap()["mtu"].as_u64().unwrap() - 50;
            let local = self.public_ip.to_string();
            // No dstport: flannel sends no IFLA_VXLAN_PORT for Port 0 (the kernel's 8472).
            let out = self
                .ns
                .command("ip")
                .args(["link", "add", "flannel.1", "address", mac.as_str(), "mtu", mtu.to_string().as_str()])
                .args(["type", "vxlan", "id", "1", "local", local.as_str(), "dev", self.iface, "nolearning"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        self.ns.run(|| netkernel::sysctl::write("net/ipv6/conf/flannel.1/accept_ra", "0")).unwrap();
        let dev = self.link("flannel.1").unwrap();
        let mac = dev["address"].as_str().unwrap().to_string();
        let ifindex = dev["ifindex"].as_u64().unwrap() as u32;

        // 2. The lease (AcquireLease): ours by public IP, rewritten (updateSubnet: a new etcd
        //    lease, an unconditional put); else a free subnet above SubnetMin, picked at random
        //    among the first 100 free (flannel creates it with a create-if-absent txn; nothing
        //    else writes that key here, so a put).
        let attrs = json!({
            "PublicIP": self.public_ip.to_string(),
            "PublicIPv6": null,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": mac},
        });
        let leases = self.leases();
        let mine = leases.iter().find(|(n, v)| {
            v["PublicIP"] == self.public_ip.to_string() && network.contains(n) && n.prefix_len() == 24
        });
        let subnet = match mine {
            Some((n, _)) => *n,
            None => {
                let free: Vec<Ipv4Net> = network
                    .subnets(24)
                    .unwrap()
                    .skip(1)
                    .filter(|s| !leases.iter().any(|(n, _)| n.contains(s) || s.contains(n)))
                    .take(100)
                    .collect();
                free[fastrand::usize(..free.len())]
            }
        };
        let granted = self.etcdctl(&["lease", "grant", &LEASE_TTL_SECS.to_string()]);
        let id = granted.split_whitespace().nth(1).unwrap().to_string();
        let key = format!("{PREFIX}/subnets/{}-{}", subnet.addr(), subnet.prefix_len());
        // Go's json.Marshal of LeaseAttrs: fields in declaration order, compact.
        self.etcdctl(&["put", &format!("--lease={id}"), &key, &attrs.to_string()]);

        // 3. The /32 address (other addresses of the network removed) and the link up.
        let own = format!("{}/32", subnet.addr());
        for a in self.ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "flannel.1"]).lines() {
            let cidr = a.split_whitespace().nth(3).unwrap_or("");
            let ip: Option<Ipv4Net> = cidr.parse().ok();
            if cidr != own && ip.is_some_and(|ip| network.contains(&ip.addr())) {
                self.ns.exec(&["ip", "addr", "del", cidr, "dev", "flannel.1"]);
            }
        }
        let _ = self.ns.try_exec(&["ip", "addr", "add", &own, "dev", "flannel.1"]);
        self.ns.exec(&["ip", "link", "set", "flannel.1", "up"]);

        // 4. --ip-masq: the chains cleared and refilled, the jumps appended once.
        let pods = subnet.to_string();
        let net = network.to_string();
        let ipt = |args: &[&str]| {
            let mut argv = vec!["iptables-nft", "-w"];
            argv.extend(args);
            self.ns.try_exec(&argv)
        };
        for (table, chain, jump_from, comment) in [
            ("nat", "FLANNEL-POSTRTG", "POSTROUTING", "flanneld masq"),
            ("filter", "FLANNEL-FWD", "FORWARD", "flanneld forward"),
        ] {
            ipt(&["-t", table, "-N", chain]);
            ipt(&["-t", table, "-F", chain]);
            let jump = ["-m", "comment", "--comment", comment, "-j", chain];
            let mut check = vec!["-t", table, "-C", jump_from];
            check.extend(jump);
            if !ipt(&check) {
                let mut add = vec!["-t", table, "-A", jump_from];
                add.extend(jump);
                assert!(ipt(&add), "jump to {chain}");
            }
        }
        let c = ["-m", "comment", "--comment", "flanneld masq"];
        let (pods, net) = (pods.as_str(), net.as_str());
        let masq: Vec<Vec<&str>> = vec![
            vec!["-m", "mark", "--mark", "0x4000/0x4000", "-j", "RETURN"],
            vec!["-s", pods, "-d", net, "-j", "RETURN"],
            vec!["-s", net, "-d", pods, "-j", "RETURN"],
            vec!["!", "-s", net, "-d", pods, "-j", "RETURN"],
            vec!["-s", net, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE", "--random-fully"],
            vec!["!", "-s", net, "-d", net, "-j", "MASQUERADE", "--random-fully"],
        ];
        for r in masq {
            let mut a = vec!["-t", "nat", "-A", "FLANNEL-POSTRTG"];
            a.extend(r);
            a.extend(c);
            assert!(ipt(&a), "{a:?}");
        }
        for r in [["-s", net], ["-d", net]] {
            let mut a = vec!["-t", "filter", "-A", "FLANNEL-FWD"];
            a.extend(r);
            a.extend(["-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"]);
            assert!(ipt(&a), "{a:?}");
        }

        // 5. subnet.env (WriteSubnetFile: the first address of the subnet, atomically).
        let first = Ipv4Addr::from(u32::from(subnet.addr()) + 1);
        let body = format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n",
            subnet.prefix_len(),
            dev["mtu"].as_u64().unwrap()
        );
        let tmp = self.subnet_file.with_extension("tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &self.subnet_file).unwrap();

        // 6. The first snapshot of peers (handleSubnetEvents, EventAdded each, in order:
        //    neighbour, FDB, route); flanneld removes nothing it does not know of.
        for (n, v) in self.leases().into_iter().filter(|(n, _)| *n != subnet) {
            if v["BackendType"] != "vxlan" {
                continue;
            }
            let (Some(peer_mac), Some(peer_ip)) =
                (v["BackendData"]["VtepMAC"].as_str(), v["PublicIP"].as_str())
            else {
                continue;
            };
            let vtep = n.addr().to_string();
            self.ns.exec(&[
                "ip",
                "neigh",
                "replace",
                &vtep,
                "lladdr",
                peer_mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ]);
            self.ns.exec(&[
                "bridge",
                "fdb",
                "replace",
                peer_mac,
                "dev",
                "flannel.1",
                "dst",
                peer_ip,
                "self",
                "permanent",
            ]);
            self.ns.exec(&[
                "ip",
                "route",
                "replace",
                &n.to_string(),
                "via",
                &vtep,
                "dev",
                "flannel.1",
                "onlink",
            ]);
        }
        FlannelState { subnet, mac, ifindex }
    }
}

/// Attaches a pod as flannel's CNI plugin does (kube-flannel.yml's conflist): the delegate
/// config saved under its dataDir (0700/0600), then the bridge plugin run with it.
fn flannel_pod(c: &Cluster, node: usize, name: &str, cid: &str) -> (TestNs, String) {
    let n = &c.nodes[node];
    let env = std::fs::read_to_string(n.dir.join("subnet.env")).unwrap();
    let get = |k: &str| env.lines().find_map(|l| l.strip_prefix(k)).unwrap().to_string();
    let subnet: Ipv4Net = get("FLANNEL_SUBNET=").parse().unwrap();
    let conf = json!({
        "cniVersion": "0.3.1",
        "hairpinMode": true,
        "ipMasq": false,
        "ipam": {
            "dataDir": n.dir.join("ipam"),
            "ranges": [[{"subnet": subnet.trunc().to_string()}]],
            "routes": [{"dst": get("FLANNEL_NETWORK=")}],
            "type": "host-local"
        },
        "isDefaultGateway": true,
        "isGateway": true,
        "mtu": get("FLANNEL_MTU=").parse::<u32>().unwrap(),
        "name": "cbr0",
        "type": "bridge"
    });
    let dir = n.dir.join("flannel-cni");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(cid)).unwrap();
    std::io::Write::write_all(&mut f, &serde_json::to_vec(&conf).unwrap()).unwrap();
    let mut delegate = conf.clone();
    delegate.as_object_mut().unwrap().remove("cniVersion");
    delegate.as_object_mut().unwrap().remove("name");
    let list = NetConfList::parse(
        json!({"cniVersion": "0.3.1", "name": "cbr0", "plugins": [delegate]}).to_string().as_bytes(),
    )
    .unwrap();
    let ns = TestNs::new(name);
    let rt = c.runtime(node);
    let r = n.ns.run(|| rt.add(&list, &Attach::new(cid, ns.path(), "eth0"))).unwrap();
    let ip = r.ips[0].address.addr().to_string();
    (ns, ip)
}

/// Ping floods both ways between two pods while `switch` runs: (lost a→b, lost b→a, sent).
fn counted(
    a: &TestNs,
    a_ip: &str,
    b: &TestNs,
    b_ip: &str,
    secs: u32,
    switch: impl FnOnce(),
) -> (u32, u32, u32) {
    let ab = ping_flood(a, b_ip, secs);
    let ba = ping_flood(b, a_ip, secs);
    std::thread::sleep(Duration::from_secs(1));
    switch();
    let (s1, r1) = ping_result(ab);
    let (s2, r2) = ping_result(ba);
    (s1 - r1, s2 - r2, s1.min(s2))
}

/// The lease value of `subnet` in the store.
fn lease_value(f: &Flanneld, subnet: Ipv4Net) -> Value {
    f.leases().into_iter().find(|(n, _)| *n == subnet).map(|(_, v)| v).unwrap_or(Value::Null)
}

fn subnet_env_subnet(path: &Path) -> String {
    let env = std::fs::read_to_string(path).unwrap();
    env.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET=")).unwrap().to_string()
}

#[test]
fn a_node_with_running_pods_goes_from_flanneld_to_overlayd_and_back_with_counted_loss() {
    require_root!();
    let mut opts = ClusterOptions::new(1, bin_dir());
    opts.store = StoreKind::Etcd;
    let mut c = Cluster::start(opts).unwrap();
    let fl = c.add_node_idle().unwrap();
    // Used from overlayd's first start on that node.
    c.set_daemon_args(fl, &["--adopt-flannel-lease"]);
    let node = &c.nodes[fl];
    let flanneld = Flanneld {
        ns: &node.ns,
        endpoints: c.etcd_endpoints(),
        public_ip: node.underlay_ip.parse().unwrap(),
        iface: "ul",
        subnet_file: node.dir.join("subnet.env"),
    };
    let made = flanneld.start();
    let lease = lease_value(&flanneld, made.subnet);
    assert_eq!(
        lease.to_string(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            node.underlay_ip, made.mac
        )
    );
    let (fpod, fpod_ip) = flannel_pod(&c, fl, "flmig-f", "f1a77e1dc0ffee01");
    let opod = c.add_pod(0, "flmig-o").unwrap();
    wait_for(Duration::from_secs(20), "the overlayd node to route to the flanneld node's pods", || {
        ping(&opod.ns, &fpod_ip, 1)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.diagnostics()));
    assert!(ping(&fpod, &opod.ip, 2), "flannel's pod does not reach ours");
    let env_before = subnet_env_subnet(&flanneld.subnet_file);

    // flanneld → overlayd, traffic flowing: flanneld "stops" (it leaves everything in the
    // kernel and its lease in the store), overlayd starts with the same store, subnet file
    // and interface, adopting the lease.
    let (lost_fo, lost_of, sent) = counted(&fpod, &fpod_ip, &opod.ns, &opod.ip, 12, || {
        c.start_daemon(fl).unwrap();
        c.wait_ready(fl).unwrap();
    });
    eprintln!(
        "flanneld → overlayd: lost {lost_fo} (flannel's pod → other node) and {lost_of} (other node → flannel's pod) of {sent} each"
    );
    let adopted = lease_value(&flanneld, made.subnet);
    assert!(adopted["NodeID"].is_string(), "overlayd did not adopt the lease: {adopted}");
    assert_eq!(flanneld.leases().len(), 2, "a second lease appeared: {:?}", flanneld.leases());
    let dev = flanneld.link("flannel.1").unwrap();
    assert_eq!(dev["ifindex"].as_u64(), Some(made.ifindex as u64), "overlayd recreated flannel.1");
    // flanneld's MAC kept (device and lease): the other node's entries stay right.
    assert_eq!(dev["address"].as_str(), Some(made.mac.as_str()), "overlayd changed the VTEP MAC");
    assert_eq!(adopted["BackendData"]["VtepMAC"].as_str(), Some(made.mac.as_str()), "{adopted}");
    assert_eq!(subnet_env_subnet(&flanneld.subnet_file), env_before);
    assert!(lost_fo <= MAX_LOST && lost_of <= MAX_LOST, "to overlayd: lost {lost_fo} / {lost_of}");
    // A new pod under overlayd's plugin, in a conflist that keeps flannel's network name
    // (host-local keeps reservations per network name): it shares the bridge and subnet
    // with flannel's pod, and not its address.
    let ours = ours_conflist(&c, fl);
    let newpod = TestNs::new("flmig-n");
    let rt = c.runtime(fl);
    let added = c.nodes[fl]
        .ns
        .run(|| rt.add(&ours, &Attach::new("0dd1a7e5c0ffee02", newpod.path(), "eth0")))
        .unwrap();
    let newpod_ip = added.ips[0].address.addr().to_string();
    assert_ne!(newpod_ip, fpod_ip, "host-local handed out the address of flannel's pod again");
    assert!(ping(&newpod, &fpod_ip, 2) && ping(&newpod, &opod.ip, 2));

    // overlayd → flanneld, traffic flowing: overlayd stops (datapath and lease stay),
    // flanneld starts: it finds its device compatible, its lease by public IP.
    let (lost_fo2, lost_of2, sent2) = counted(&fpod, &fpod_ip, &opod.ns, &opod.ip, 12, || {
        c.stop_daemon(fl, libc::SIGTERM);
        let back = flanneld.start();
        assert_eq!(back.subnet, made.subnet, "flanneld took another subnet");
        assert_eq!(back.ifindex, made.ifindex, "flanneld recreated flannel.1");
    });
    eprintln!(
        "overlayd → flanneld: lost {lost_fo2} (flannel's pod → other node) and {lost_of2} (other node → flannel's pod) of {sent2} each"
    );
    let back = lease_value(&flanneld, made.subnet);
    assert!(back["NodeID"].is_null() && back["BackendType"] == "vxlan", "{back}");
    assert!(lost_fo2 <= MAX_LOST && lost_of2 <= MAX_LOST, "back to flanneld: lost {lost_fo2} / {lost_of2}");
    assert!(ping(&newpod, &opod.ip, 2), "the pod overlayd attached lost the other node");

    // The pods go through overlayd's conflist: flannel's through its saved config, which
    // frees its address in host-local.
    c.del_pod(&opod).unwrap();
    for (cid, ns) in [("0dd1a7e5c0ffee02", &newpod), ("f1a77e1dc0ffee01", &fpod)] {
        c.nodes[fl].ns.run(|| rt.del(&ours, &Attach::new(cid, ns.path(), "eth0"))).unwrap();
    }
    let left = std::fs::read_dir(c.nodes[fl].dir.join("ipam/cbr0")).unwrap();
    let left: Vec<String> = left
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "addresses left in host-local");
}

/// The node's conflist for overlayd's plugin (the harness's), under flannel's network name.
fn ours_conflist(c: &Cluster, node: usize) -> NetConfList {
    let n = &c.nodes[node];
    let list = json!({"cniVersion": "1.1.0", "name": "cbr0", "plugins": [{
        "type": "vxlan",
        "socket": n.socket(),
        "dataDir": n.dir.join("vxlan"),
        "ipamDataDir": n.dir.join("ipam"),
        "flannelDataDir": n.dir.join("flannel-cni"),
    }]});
    NetConfList::parse(list.to_string().as_bytes()).unwrap()
}
