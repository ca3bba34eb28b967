//! host-local driven as a runtime drives it: the binary, CNI_* variables and a config on
//! stdin, for every spec version where a behaviour applies. Mirrors the reference's
//! `host_local_test.go`, plus CHECK against prevResult, STATUS, GC and bad input.

mod host_local_util;

use host_local_util::{Call, Net, OURS, Out, VERSIONS};
use serde_json::{Value, json};

const LINE_BREAK: &str = "\r\n";

fn add(net_conf: &str, id: &str, ifname: &str) -> Out {
    Call::new(OURS, "ADD", id, ifname).run(net_conf)
}

fn del(net_conf: &str, id: &str, ifname: &str) -> Out {
    Call::new(OURS, "DEL", id, ifname).run(net_conf)
}

fn check(net_conf: &str, id: &str, ifname: &str) -> Out {
    Call::new(OURS, "CHECK", id, ifname).run(net_conf)
}

fn has_check(v: &str) -> bool {
    !matches!(v, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
}

fn has_multiple_ips(v: &str) -> bool {
    !matches!(v, "0.1.0" | "0.2.0")
}

/// The config with `prevResult` set (CHECK reads it in the config's version).
fn with_prev(conf: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(conf).unwrap();
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn allocates_and_releases_addresses_with_add_del() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let resolv = net.tmp.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 192.0.2.3\n").unwrap();
        let conf = net.conf(
            ver,
            json!({
                "resolvConf": resolv,
                "ranges": [
                    [{"subnet": "10.1.2.0/24"}, {"subnet": "10.2.2.0/24"}],
                    [{"subnet": "2001:db8:1::0/64"}]
                ],
                "routes": [
                    {"dst": "0.0.0.0/0"}, {"dst": "::/0"},
                    {"dst": "192.168.0.0/16", "gw": "1.1.1.1"},
                    {"dst": "2001:db8:2::0/64", "gw": "2001:db8:3::1"}
                ]
            }),
            json!({"master": "foo0"}),
        );
        let out = add(&conf, "dummy", "eth0");
        out.ok();
        assert!(out.stderr.is_empty(), "[{ver}] no stderr on the first ADD: {}", out.stderr);
        let r = out.json();
        assert_eq!(r["cniVersion"], ver);
        match ver {
            "0.1.0" | "0.2.0" => {
                assert_eq!(
                    r,
                    json!({"cniVersion": ver,
                        "ip4": {"ip": "10.1.2.2/24", "gateway": "10.1.2.1",
                                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "1.1.1.1"}]},
                        "ip6": {"ip": "2001:db8:1::2/64", "gateway": "2001:db8:1::1",
                                "routes": [{"dst": "::/0"}, {"dst": "2001:db8:2::/64", "gw": "2001:db8:3::1"}]},
                        "dns": {"nameservers": ["192.0.2.3"]}}),
                    "[{ver}]"
                );
            }
            _ => {
                let (v4, v6) = if matches!(ver, "0.3.0" | "0.3.1" | "0.4.0") {
                    (json!({"version": "4"}), json!({"version": "6"}))
                } else {
                    (json!({}), json!({}))
                };
                let mut ip4 = json!({"address": "10.1.2.2/24", "gateway": "10.1.2.1"});
                let mut ip6 = json!({"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"});
                for (ip, extra) in [(&mut ip4, v4), (&mut ip6, v6)] {
                    for (k, v) in extra.as_object().unwrap() {
                        ip[k] = v.clone();
                    }
                }
                assert_eq!(
                    r,
                    json!({"cniVersion": ver, "ips": [ip4, ip6],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"},
                                   {"dst": "192.168.0.0/16", "gw": "1.1.1.1"},
                                   {"dst": "2001:db8:2::/64", "gw": "2001:db8:3::1"}],
                        "dns": {"nameservers": ["192.0.2.3"]}}),
                    "[{ver}]"
                );
                assert_eq!(
                    out.stdout.contains("\"version\":"),
                    matches!(ver, "0.3.0" | "0.3.1" | "0.4.0"),
                    "[{ver}]"
                );
            }
        }
        assert_eq!(net.read("10.1.2.2"), format!("dummy{LINE_BREAK}eth0"));
        assert_eq!(net.read("2001:db8:1::2"), format!("dummy{LINE_BREAK}eth0"));
        assert_eq!(net.read("last_reserved_ip.0"), "10.1.2.2");
        assert_eq!(net.read("last_reserved_ip.1"), "2001:db8:1::2");
        if has_check(ver) {
            check(&with_prev(&conf, &r), "dummy", "eth0").ok();
            check(&conf, "dummy", "eth0").ok();
        }

        del(&conf, "dummy", "eth0").ok();
        assert!(!net.dir().join("10.1.2.2").exists() && !net.dir().join("2001:db8:1::2").exists(), "[{ver}]");
        del(&conf, "dummy", "eth0").ok();
        assert_eq!(net.files(), ["last_reserved_ip.0", "last_reserved_ip.1", "lock"], "[{ver}]");
        // The owner index is compacted: nothing under dataDir names the container after DEL.
        assert!(!net.read("lock").contains("dummy"), "[{ver}] lock: {:?}", net.read("lock"));
        if has_check(ver) {
            assert!(
                check(&conf, "dummy", "eth0")
                    .err_code(103)
                    .contains("Failed to find address added by container dummy")
            );
        }
        // Round-robin: the next lease follows the last one, not the released one.
        assert_eq!(add(&conf, "next", "eth0").ips(), ["10.1.2.3", "2001:db8:1::3"], "[{ver}]");
    }
}

#[test]
fn allocates_and_releases_on_a_specific_interface() {
    for ver in VERSIONS {
        let net0 = Net::new("mynet0");
        let conf0 = net0.conf(ver, json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}), json!({}));
        let conf1 = net0
            .conf(ver, json!({"ranges": [[{"subnet": "10.2.2.0/24"}]]}), json!({}))
            .replace("mynet0", "mynet1");
        let dir1 = net0.data_dir().join("mynet1");
        add(&conf0, "dummy", "eth0").ok();
        add(&conf1, "dummy", "eth1").ok();
        assert_eq!(net0.read("10.1.2.2"), format!("dummy{LINE_BREAK}eth0"));
        let lease1 = dir1.join("10.2.2.2");
        assert_eq!(std::fs::read_to_string(&lease1).unwrap(), format!("dummy{LINE_BREAK}eth1"));

        del(&conf0, "dummy", "eth0").ok();
        assert!(!net0.dir().join("10.1.2.2").exists());
        assert_eq!(std::fs::read_to_string(&lease1).unwrap(), format!("dummy{LINE_BREAK}eth1"), "[{ver}]");
        // The same container's other interface on the same network is another attachment.
        add(&conf0, "dummy", "eth1").ok();
        del(&conf0, "dummy", "eth0").ok();
        assert_eq!(net0.leases(), ["10.1.2.3"], "[{ver}]");
        del(&conf1, "dummy", "eth1").ok();
        assert!(!lease1.exists());
    }
}

#[test]
fn repeat_allocation_for_the_same_container_is_an_error() {
    for ver in VERSIONS {
        let net = Net::new("mynet0");
        let conf = net.conf(ver, json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}), json!({}));
        assert_eq!(add(&conf, "dummy", "eth0").addresses(), ["10.1.2.2/24"]);
        let msg = add(&conf, "dummy", "eth0").err_code(100);
        assert!(
            msg.contains("10.1.2.2 has been allocated to dummy, duplicate allocation is not allowed"),
            "{msg}"
        );
        assert_eq!(add(&conf, "dummy1", "eth0").addresses(), ["10.1.2.3/24"]);
        add(&conf, "dummy", "eth0").err_code(100);
        assert_eq!(net.leases(), ["10.1.2.2", "10.1.2.3"], "[{ver}] the failed ADDs took nothing");
        del(&conf, "dummy", "eth0").ok();
        assert!(!net.dir().join("10.1.2.2").exists());
        del(&conf, "dummy1", "eth0").ok();
        assert!(net.leases().is_empty());
    }
}

#[test]
fn failed_add_gives_back_what_it_took() {
    for ver in ["0.3.1", "1.0.0", "1.1.0"] {
        let net = Net::new("n");
        let conf = net.conf(
            ver,
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/30"}]]}),
            json!({}),
        );
        add(&conf, "a", "eth0").ok();
        // The second set (one address) is full: the ADD fails and releases its first lease.
        let msg = add(&conf, "b", "eth0").err_code(102);
        assert!(
            msg.contains(
                "failed to allocate for range 1: no IP addresses available in range set: 10.1.3.1-10.1.3.2"
            ),
            "{msg}"
        );
        assert_eq!(net.leases(), ["10.1.2.2", "10.1.3.2"], "[{ver}]");
        // A duplicate in the second set releases the new lease of the first set only.
        del(&conf, "a", "eth0").ok();
        net.write("10.1.3.2", "b\r\neth0");
        add(&conf, "b", "eth0").err_code(100);
        assert_eq!(net.leases(), ["10.1.3.2"], "[{ver}]");
    }
}

#[test]
fn del_releases_a_backwards_compatible_allocation() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let conf = net.conf(ver, json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}), json!({}));
        add(&conf, "dummy", "eth0").ok();
        assert_eq!(net.read("10.1.2.2"), format!("dummy{LINE_BREAK}eth0"));
        // Rewritten in place to the old, id-only format.
        std::fs::write(net.dir().join("10.1.2.2"), "dummy").unwrap();
        if has_check(ver) {
            check(&conf, "dummy", "eth0").ok();
        }
        add(&conf, "dummy", "eth1").err_code(100);
        del(&conf, "dummy", "eth0").ok();
        assert!(!net.dir().join("10.1.2.2").exists(), "[{ver}]");
    }
}

#[test]
fn del_of_an_unknown_id_succeeds_and_creates_nothing() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let conf = net.conf(ver, json!({"subnet": "10.1.2.0/24"}), json!({}));
        del(&conf, "dummy", "eth0").ok();
        assert!(!net.data_dir_exists(), "[{ver}] DEL created the store");
        add(&conf, "other", "eth0").ok();
        del(&conf, "dummy", "eth0").ok();
        assert_eq!(net.leases(), ["10.1.2.2"]);
    }
}

#[test]
fn whitespace_in_disk_files_is_ignored() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let conf = net.conf(ver, json!({"subnet": "10.1.2.0/24"}), json!({}));
        net.write("10.1.2.2", "  dummy \r\n eth0 \n");
        net.write("10.1.2.3", "\n legacy \n");
        net.write("last_reserved_ip.0", " 10.1.2.3\n");
        if has_check(ver) {
            check(&conf, "dummy", "eth0").ok();
            check(&conf, "legacy", "eth7").ok();
        }
        add(&conf, "dummy", "eth0").err_code(100);
        assert_eq!(add(&conf, "new", "eth0").ips(), ["10.1.2.4"], "[{ver}]");
        del(&conf, "dummy", "eth0").ok();
        del(&conf, "legacy", "eth7").ok();
        assert_eq!(net.leases(), ["10.1.2.4"], "[{ver}]");
    }
}

#[test]
fn allocates_a_custom_ip_from_config_args_cni_args_and_runtime_config() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let ipam = json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]});
        let conf = net.conf(ver, ipam.clone(), json!({"args": {"cni": {"ips": ["10.1.2.88"]}}}));
        assert_eq!(add(&conf, "a", "eth0").addresses(), ["10.1.2.88/24"], "[{ver}]");
        assert_eq!(net.read("last_reserved_ip.0"), "10.1.2.88");
        let conf = net.conf(ver, ipam.clone(), json!({}));
        let out = Call::new(OURS, "ADD", "b", "eth0")
            .args("IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.2.77")
            .run(&conf);
        assert_eq!(out.ips(), ["10.1.2.77"], "[{ver}]");
        let conf = net.conf(ver, ipam, json!({"runtimeConfig": {"ips": ["10.1.2.66/24"]}}));
        assert_eq!(add(&conf, "c", "eth0").ips(), ["10.1.2.66"], "[{ver}]");
        // Taken, or the gateway: refused.
        let msg = add(&conf, "d", "eth0").err_code(101);
        assert!(
            msg.contains("requested IP address 10.1.2.66 is not available in range set 10.1.2.1-10.1.2.254"),
            "{msg}"
        );
        let gw = net.conf(
            ver,
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
            json!({"args": {"cni": {"ips": ["10.1.2.1"]}}}),
        );
        assert!(
            add(&gw, "e", "eth0")
                .err_code(7)
                .contains("args.cni.ips[0]: requested ip 10.1.2.1 is subnet's gateway")
        );
        assert_eq!(net.leases(), ["10.1.2.66", "10.1.2.77", "10.1.2.88"], "[{ver}]");
    }
}

#[test]
fn allocates_custom_ips_from_multiple_ranges() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let conf = net.conf(
            ver,
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}),
            json!({"args": {"cni": {"ips": ["10.1.2.88", "10.1.3.77"]}}}),
        );
        let out = add(&conf, "dummy", "eth0");
        if has_multiple_ips(ver) {
            assert_eq!(out.ips(), ["10.1.2.88", "10.1.3.77"], "[{ver}]");
        } else {
            let msg = out.err_code(7);
            assert!(
                msg.contains(&format!("CNI version {ver} does not support more than 1 address per family")),
                "{msg}"
            );
            assert!(!net.data_dir_exists());
        }
    }
}

#[test]
fn allocates_custom_ips_of_multiple_protocols() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let conf = net.conf(
            ver,
            json!({"ranges": [[{"subnet": "172.16.1.0/24"}, {"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/48"}]]}),
            json!({"args": {"cni": {"ips": ["10.1.2.88", "2001:db8:1::999"]}}}),
        );
        assert_eq!(
            add(&conf, "dummy", "eth0").addresses(),
            ["10.1.2.88/24", "2001:db8:1::999/48"],
            "[{ver}]"
        );
    }
}

#[test]
fn fails_if_a_requested_custom_ip_is_not_used() {
    for ver in VERSIONS {
        let net = Net::new("mynet");
        let conf = net.conf(
            ver,
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}),
            json!({"args": {"cni": {"ips": ["10.1.2.88", "10.1.2.77"]}}}),
        );
        let msg = add(&conf, "dummy", "eth0").err_code(7);
        if has_multiple_ips(ver) {
            assert!(
                msg.contains("args.cni.ips[1]: failed to allocate all requested IPs: 10.1.2.77"),
                "{msg}"
            );
        } else {
            assert!(msg.contains("does not support more than 1 address per family"), "{msg}");
        }
        assert!(!net.data_dir_exists(), "[{ver}] nothing allocated");
    }
}

#[test]
fn runtime_ip_ranges_come_first() {
    for ver in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let net = Net::new("n");
        let conf = net.conf(
            ver,
            json!({"subnet": "10.1.2.0/24", "ranges": [[{"subnet": "10.1.3.0/24"}]]}),
            json!({"runtimeConfig": {"ipRanges": [[{"subnet": "192.168.7.0/24", "rangeStart": "192.168.7.100"}]]}}),
        );
        assert_eq!(add(&conf, "a", "eth0").ips(), ["192.168.7.100", "10.1.2.2", "10.1.3.2"], "[{ver}]");
        assert_eq!(net.read("last_reserved_ip.0"), "192.168.7.100");
        assert_eq!(net.read("last_reserved_ip.2"), "10.1.3.2");
    }
}

#[test]
fn result_shape_of_a_single_address_per_version() {
    for ver in VERSIONS {
        let net = Net::new("n");
        let conf = net.conf(ver, json!({"subnet": "10.1.2.0/24", "gateway": "10.1.2.254"}), json!({}));
        let expected = match ver {
            "0.1.0" | "0.2.0" => {
                format!(r#"{{"cniVersion":"{ver}","ip4":{{"ip":"10.1.2.1/24","gateway":"10.1.2.254"}}}}"#)
            }
            "0.3.0" | "0.3.1" | "0.4.0" => format!(
                r#"{{"cniVersion":"{ver}","ips":[{{"version":"4","address":"10.1.2.1/24","gateway":"10.1.2.254"}}]}}"#
            ),
            _ => format!(
                r#"{{"cniVersion":"{ver}","ips":[{{"address":"10.1.2.1/24","gateway":"10.1.2.254"}}]}}"#
            ),
        };
        assert_eq!(
            add(&conf, "a", "eth0").stdout,
            expected,
            "[{ver}] (.1 is allocatable when the gateway is elsewhere)"
        );
    }
}

#[test]
fn check_compares_the_leases_with_prev_result() {
    for ver in ["0.4.0", "1.0.0", "1.1.0"] {
        let net = Net::new("n");
        let conf = net.conf(
            ver,
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]]}),
            json!({}),
        );
        // No store yet: nothing is created.
        assert!(
            check(&conf, "a", "eth0").err_code(103).contains("Failed to find address added by container a")
        );
        assert!(!net.data_dir_exists());
        let r = add(&conf, "a", "eth0").json();
        check(&with_prev(&conf, &r), "a", "eth0").ok();
        check(&with_prev(&conf, &json!({"cniVersion": ver})), "a", "eth0").ok();
        // An address of another plugin outside our subnets is fine.
        let mut extra = r.clone();
        extra["ips"].as_array_mut().unwrap().push(json!({"address": "172.16.0.5/16"}));
        check(&with_prev(&conf, &extra), "a", "eth0").ok();
        // A lease missing from prevResult, or an address of ours that is not this one's.
        let mut missing = r.clone();
        missing["ips"].as_array_mut().unwrap().pop();
        let msg = check(&with_prev(&conf, &missing), "a", "eth0").err_code(103);
        assert!(msg.contains("2001:db8::2 is allocated to container a but missing from prevResult"), "{msg}");
        let mut wrong = r.clone();
        wrong["ips"][0]["address"] = json!("10.1.2.9/24");
        let msg = check(&with_prev(&conf, &wrong), "a", "eth0").err_code(103);
        assert!(
            msg.contains("missing from prevResult") || msg.contains("prevResult lists 10.1.2.9"),
            "{msg}"
        );
        // Another interface of the container holds nothing.
        check(&conf, "a", "eth1").err_code(103);
    }
}

#[test]
fn status_reports_a_full_range_set() {
    let net = Net::new("n");
    let conf = net.conf(
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/30"}]]}),
        json!({}),
    );
    let status =
        || Call::new(OURS, "STATUS", "", "").without("CNI_CONTAINERID").without("CNI_IFNAME").run(&conf);
    status().ok();
    assert!(!net.data_dir_exists(), "STATUS creates nothing");
    add(&conf, "a", "eth0").ok();
    let msg = status().err_code(50);
    assert!(msg.contains("range set 1 has no free address: 10.1.3.1-10.1.3.2"), "{msg}");
    del(&conf, "a", "eth0").ok();
    status().ok();
    // STATUS needs a 1.1.0 config.
    let old = net.conf("1.0.0", json!({"subnet": "10.1.2.0/24"}), json!({}));
    Call::new(OURS, "STATUS", "", "").run(&old).err_code(1);
}

fn gc(conf: &str) -> Out {
    Call::new(OURS, "GC", "", "").without("CNI_CONTAINERID").without("CNI_IFNAME").run(conf)
}

#[test]
fn gc_frees_every_lease_no_valid_attachment_owns() {
    let net = Net::new("n");
    let ipam = json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]]});
    let plain = net.conf("1.1.0", ipam.clone(), json!({}));
    add(&plain, "c1", "eth0").ok();
    add(&plain, "c1", "eth1").ok();
    add(&plain, "c2", "eth0").ok();
    net.write("10.1.2.50", "c3"); // legacy, container still valid
    net.write("10.1.2.51", "c4"); // legacy, gone
    net.write("10.1.2.52", ""); // a reference ADD killed before writing
    net.write("10.1.2.53", "not a lease\r\nat all\r\n"); // unreadable
    net.write("10.9.9.9", "c2\r\neth0"); // outside every range: still c2's
    net.write(".lease.tmp", "c9\r\neth0"); // leftovers of a killed run
    net.write("last_reserved_ip.0.next", "10.1.2.4"); // ours, left alone like last_reserved_ip.*
    net.write("unrelated", "kept");
    let last = (net.read("last_reserved_ip.0"), net.read("last_reserved_ip.1"));

    let valid = json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth5"}]);
    let conf = net.conf(
        "1.1.0",
        ipam.clone(),
        json!({"cni.dev/valid-attachments": valid, "cni.dev/attachments": []}),
    );
    gc(&conf).ok();
    let (leases, others): (Vec<String>, Vec<String>) = net
        .files()
        .into_iter()
        .filter(|f| !f.starts_with("last_reserved_ip."))
        .partition(|f| f.parse::<std::net::IpAddr>().is_ok());
    assert_eq!(leases, ["10.1.2.2", "10.1.2.50", "2001:db8::2"]);
    assert_eq!(others, ["lock", "unrelated"]);
    assert!(net.dir().join("last_reserved_ip.0.next").exists(), "GC leaves last_reserved_ip.* alone");
    assert_eq!((net.read("last_reserved_ip.0"), net.read("last_reserved_ip.1")), last);
    check(&plain, "c1", "eth0").ok();
    check(&plain, "c1", "eth1").err_code(103);
    // ADD still works after GC and continues round-robin.
    assert_eq!(add(&plain, "c5", "eth0").ips(), ["10.1.2.5", "2001:db8::5"]);

    // Only the older key: it is used.
    let conf = net.conf(
        "1.1.0",
        ipam.clone(),
        json!({"cni.dev/attachments": [{"containerID": "c5", "ifname": "eth0"}]}),
    );
    gc(&conf).ok();
    assert_eq!(net.leases(), ["10.1.2.5", "2001:db8::5"]);
    // An empty list frees everything.
    let conf = net.conf("1.1.0", ipam.clone(), json!({"cni.dev/valid-attachments": []}));
    gc(&conf).ok();
    let rest: Vec<String> = net.files().into_iter().filter(|f| !f.starts_with("last_reserved_ip.")).collect();
    assert_eq!(rest, ["lock", "unrelated"]);
    // No list at all is a malformed request, not "free everything".
    add(&plain, "c6", "eth0").ok();
    assert!(gc(&plain).err_code(7).contains("cni.dev/valid-attachments"));
    assert_eq!(net.leases().len(), 2);
    // GC of a network without a store creates nothing.
    let other = Net::new("empty");
    gc(&other.conf("1.1.0", ipam, json!({"cni.dev/valid-attachments": []}))).ok();
    assert!(!other.data_dir_exists());
}

#[test]
fn version_gates() {
    let net = Net::new("n");
    for ver in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"] {
        let conf = net.conf(ver, json!({"subnet": "10.1.2.0/24"}), json!({}));
        check(&conf, "a", "eth0").err_code(1);
    }
    let conf = net.conf("1.0.0", json!({"subnet": "10.1.2.0/24"}), json!({"cni.dev/valid-attachments": []}));
    gc(&conf).err_code(1);
    let v = Call::new(OURS, "VERSION", "", "").run(r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(
        v.ok().json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

/// Every invalid config or environment: a CNI error on stdout with the right code and the
/// field named, a non-zero exit, and nothing on disk.
#[test]
fn bad_input_is_refused_without_touching_the_disk() {
    let v4 = || json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]});
    let set = |ranges: Value| json!({"ranges": ranges});
    // (what, version, ipam, extra top-level keys, code, text the message must contain)
    let configs: Vec<(&str, &str, Value, Value, u64, &str)> = vec![
        (
            "host bits",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.5/24"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].subnet: Network has host bits set",
        ),
        (
            "too small",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "10.9.0.0/31"}]])),
            json!({}),
            7,
            "ipam.ranges[0][1].subnet: Network 10.9.0.0/31 too small",
        ),
        (
            "bad CIDR",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].subnet: invalid CIDR",
        ),
        (
            "no subnet",
            "1.0.0",
            set(json!([[{"rangeStart": "10.1.2.5"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].subnet: missing",
        ),
        (
            "start outside",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.5"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].rangeStart: 10.1.3.5 not in network",
        ),
        (
            "end outside",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24", "rangeEnd": "10.1.3.5"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].rangeEnd: 10.1.3.5 not in network",
        ),
        (
            "end before start",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9", "rangeEnd": "10.1.2.5"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].rangeEnd: range start 10.1.2.9 is after range end",
        ),
        (
            "gateway outside",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24", "gateway": "10.1.3.1"}]])),
            json!({}),
            7,
            "ipam.ranges[0][0].gateway: gateway 10.1.3.1 not in network",
        ),
        (
            "overlap in a set",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.0/25"}]])),
            json!({}),
            7,
            "ipam.ranges[0][1]: subnets",
        ),
        (
            "overlap across sets",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.0.0/16"}]])),
            json!({}),
            7,
            "ipam.ranges[1]: range set 1 overlaps with range set 0",
        ),
        (
            "mixed families",
            "1.0.0",
            set(json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]])),
            json!({}),
            7,
            "ipam.ranges[0][1]: mixed address families",
        ),
        (
            "two v4 sets in 0.2.0",
            "0.2.0",
            set(json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]])),
            json!({}),
            7,
            "ipam.ranges: CNI version 0.2.0 does not support more than 1 address per family",
        ),
        (
            "two v6 sets in 0.1.0",
            "0.1.0",
            set(json!([[{"subnet": "2001:db8:1::/64"}], [{"subnet": "2001:db8:2::/64"}]])),
            json!({}),
            7,
            "ipam.ranges: CNI version 0.1.0 does not support",
        ),
        ("empty set", "1.0.0", set(json!([[]])), json!({}), 7, "ipam.ranges[0]: empty range set"),
        ("no ranges", "1.0.0", json!({}), json!({}), 7, "ipam.ranges: no IP ranges specified"),
        (
            "ranges not a list",
            "1.0.0",
            set(json!("10.1.2.0/24")),
            json!({}),
            7,
            "ipam.ranges: must be a list",
        ),
        (
            "legacy subnet",
            "1.0.0",
            json!({"subnet": "10.1.2.0/33"}),
            json!({}),
            7,
            "ipam.subnet: invalid CIDR",
        ),
        (
            "legacy rangeEnd",
            "1.0.0",
            json!({"subnet": "10.1.2.0/24", "rangeEnd": "x"}),
            json!({}),
            7,
            "ipam.rangeEnd: invalid IP address",
        ),
        (
            "routes",
            "1.0.0",
            json!({"subnet": "10.1.2.0/24", "routes": [{"gw": "10.1.2.1"}]}),
            json!({}),
            7,
            "ipam.routes[0]",
        ),
        (
            "dataDir type",
            "1.0.0",
            json!({"subnet": "10.1.2.0/24", "dataDir": 5}),
            json!({}),
            7,
            "ipam.dataDir: must be a string",
        ),
        (
            "resolvConf missing",
            "1.0.0",
            json!({"subnet": "10.1.2.0/24", "resolvConf": "/nonexistent/resolv.conf"}),
            json!({}),
            7,
            "ipam.resolvConf: reading /nonexistent/resolv.conf",
        ),
        (
            "runtime ranges",
            "1.0.0",
            v4(),
            json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.9.0.0/31"}]]}}),
            7,
            "runtimeConfig.ipRanges[0][0].subnet: Network 10.9.0.0/31 too small",
        ),
        (
            "args ip outside",
            "1.0.0",
            v4(),
            json!({"args": {"cni": {"ips": ["10.9.9.9"]}}}),
            7,
            "args.cni.ips[0]: failed to allocate all requested IPs: 10.9.9.9 is not in any range set",
        ),
        (
            "args ip garbage",
            "1.0.0",
            v4(),
            json!({"args": {"cni": {"ips": ["ten"]}}}),
            7,
            "args.cni.ips[0]: invalid IP address",
        ),
        (
            "runtime ip gateway",
            "1.0.0",
            v4(),
            json!({"runtimeConfig": {"ips": ["10.1.2.1"]}}),
            7,
            "runtimeConfig.ips[0]: requested ip 10.1.2.1 is subnet's gateway",
        ),
        (
            "two ips one set",
            "1.0.0",
            v4(),
            json!({"runtimeConfig": {"ips": ["10.1.2.5", "10.1.2.6"]}}),
            7,
            "runtimeConfig.ips[1]: failed to allocate all requested IPs: 10.1.2.6",
        ),
        ("unknown version", "9.9.9", v4(), json!({}), 1, "incompatible CNI versions"),
    ];
    for (what, ver, ipam, extra, code, text) in configs {
        let net = Net::new("n");
        let conf = net.conf(ver, ipam, extra);
        let msg = add(&conf, "a", "eth0").err_code(code);
        assert!(msg.contains(text), "{what}: {msg:?} lacks {text:?}");
        assert!(!net.data_dir_exists(), "{what}: the ADD touched the disk");
        if code == 7 && !what.contains("ip") && !what.contains("resolvConf") {
            // DEL and CHECK validate the config too, and create nothing either.
            del(&conf, "a", "eth0").err_code(7);
            if has_check(ver) {
                check(&conf, "a", "eth0").err_code(7);
            }
            assert!(!net.data_dir_exists(), "{what}: DEL/CHECK touched the disk");
        }
    }

    // Missing pieces of the config itself.
    let net = Net::new("n");
    let data = net.data_dir();
    let cases: Vec<(&str, String, u64, &str)> = vec![
        ("no ipam", json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}).to_string(), 7, "ipam: missing"),
        (
            "no name",
            json!({"cniVersion": "1.0.0", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": data}}).to_string(),
            7,
            "name: missing",
        ),
        (
            "bad name",
            json!({"cniVersion": "1.0.0", "name": "../x", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": data}}).to_string(),
            7,
            "name",
        ),
        ("malformed JSON", "{\"cniVersion\": \"1.0.0\",".into(), 6, "malformed JSON"),
        ("empty stdin", String::new(), 6, "empty"),
        ("no cniVersion", json!({"name": "n", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": data}}).to_string(), 7, "cniVersion"),
        ("duplicate key", format!(r#"{{"cniVersion":"1.0.0","name":"n","name":"m","type":"bridge","ipam":{{"type":"host-local","subnet":"10.1.2.0/24","dataDir":{data:?}}}}}"#), 6, "duplicate key"),
        ("name too long", json!({"cniVersion": "1.0.0", "name": "n".repeat(300), "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": data}}).to_string(), 7, "name"),
        ("dataDir too long", json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": format!("{}/{}", data.display(), "d".repeat(300))}}).to_string(), 7, "ipam.dataDir"),
    ];
    for (what, conf, code, text) in cases {
        let msg = add(&conf, "a", "eth0").err_code(code);
        assert!(msg.contains(text), "{what}: {msg:?} lacks {text:?}");
        assert!(!net.data_dir_exists(), "{what}: touched the disk");
    }

    // The environment.
    let conf = net.conf("1.0.0", v4(), json!({}));
    let calls: Vec<(&str, Call, &str)> = vec![
        (
            "no container ID",
            Call::new(OURS, "ADD", "a", "eth0").without("CNI_CONTAINERID"),
            "CNI_CONTAINERID",
        ),
        ("bad container ID", Call::new(OURS, "ADD", "-a/b", "eth0"), "CNI_CONTAINERID"),
        ("no ifname", Call::new(OURS, "ADD", "a", "eth0").without("CNI_IFNAME"), "CNI_IFNAME"),
        ("long ifname", Call::new(OURS, "ADD", "a", "a-very-long-name0"), "CNI_IFNAME"),
        ("no netns", Call::new(OURS, "ADD", "a", "eth0").without("CNI_NETNS"), "CNI_NETNS"),
        ("bad command", Call::new(OURS, "add", "a", "eth0"), "CNI_COMMAND"),
        ("CNI_ARGS pair", Call::new(OURS, "ADD", "a", "eth0").args("IP"), "CNI_ARGS"),
        (
            "CNI_ARGS unknown key",
            Call::new(OURS, "ADD", "a", "eth0").args("K8S_POD_NAME=p"),
            "CNI_ARGS: unknown key \"K8S_POD_NAME\"",
        ),
        (
            "CNI_ARGS bad IP",
            Call::new(OURS, "ADD", "a", "eth0").args("IP=10.1.2"),
            "CNI_ARGS: IP: invalid IP address",
        ),
        (
            "CNI_ARGS IP outside",
            Call::new(OURS, "ADD", "a", "eth0").args("IP=10.1.9.9"),
            "CNI_ARGS: IP: failed to allocate all requested IPs",
        ),
        ("GC without CNI_PATH", Call::new(OURS, "GC", "", "").without("CNI_PATH"), "CNI_PATH"),
    ];
    // Without CNI_COMMAND a plugin says what it is, and fails (code 4): the Go skeleton
    // exits 0 here, which a runtime would take for success.
    let about = Call::new(OURS, "ADD", "a", "eth0").without("CNI_COMMAND").run(&conf);
    assert!(about.stderr.contains("CNI protocol versions supported"), "{about:?}");
    about.err_code(4);
    assert!(!net.data_dir_exists());
    for (what, call, text) in calls {
        let conf = if call.command == "GC" {
            net.conf("1.1.0", v4(), json!({"cni.dev/valid-attachments": []}))
        } else {
            conf.clone()
        };
        let msg = call.run(&conf).err_code(4);
        assert!(msg.contains(text), "{what}: {msg:?} lacks {text:?}");
        assert!(!net.data_dir_exists(), "{what}: touched the disk");
    }
}
