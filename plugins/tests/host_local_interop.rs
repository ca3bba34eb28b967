//! Ours and the reference Go binary (`/usr/lib/cni/host-local`, spec ≤ 1.0.0) on the same
//! `dataDir`: what one allocates the other sees (never a duplicate), checks and releases,
//! in both directions. A node can switch plugins either way without losing a lease.

mod host_local_util;

use std::collections::{BTreeMap, BTreeSet};

use host_local_util::{Call, Net, OURS, Out, REFERENCE, have_reference};
use serde_json::{Value, json};

fn call(bin: &'static str, command: &str, conf: &str, id: &str) -> Out {
    Call::new(bin, command, id, "eth0").run(conf)
}

fn dual_stack(net: &Net, ver: &str) -> String {
    net.conf(
        ver,
        json!({"ranges": [[{"subnet": "10.22.0.0/24"}, {"subnet": "10.23.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}),
        json!({}),
    )
}

fn with_prev(conf: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(conf).unwrap();
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn each_sees_checks_and_releases_the_others_leases() {
    if !have_reference() {
        return;
    }
    for ver in ["0.3.1", "0.4.0", "1.0.0"] {
        let net = Net::new("mixed");
        let conf = dual_stack(&net, ver);
        let with_check = ver != "0.3.1";

        // Reference first, then ours: round-robin continues, nothing is handed out twice.
        let a = call(REFERENCE, "ADD", &conf, "a");
        assert_eq!(a.ok().ips(), ["10.22.0.2", "fd00:22::2"], "[{ver}] {a:?}");
        let b = call(OURS, "ADD", &conf, "b");
        assert_eq!(b.ok().ips(), ["10.22.0.3", "fd00:22::3"], "[{ver}]");
        // Ours sees the reference's lease of `a` (refuses a second one), and vice versa.
        call(OURS, "ADD", &conf, "a").err_code(100);
        call(REFERENCE, "ADD", &conf, "b").err();
        let c = call(REFERENCE, "ADD", &conf, "c");
        assert_eq!(c.ok().ips(), ["10.22.0.4", "fd00:22::4"], "[{ver}]");
        assert_eq!(net.read("10.22.0.4"), "c\r\neth0");
        assert_eq!(net.read("10.22.0.3"), "b\r\neth0");

        if with_check {
            call(OURS, "CHECK", &with_prev(&conf, &a.json()), "a").ok();
            call(OURS, "CHECK", &conf, "c").ok();
            call(REFERENCE, "CHECK", &with_prev(&conf, &b.json()), "b").ok();
        }

        // Each releases the other's.
        call(OURS, "DEL", &conf, "a").ok();
        call(REFERENCE, "DEL", &conf, "b").ok();
        assert_eq!(net.leases(), ["10.22.0.4", "fd00:22::4"], "[{ver}]");
        if with_check {
            call(OURS, "CHECK", &conf, "a").err_code(103);
            call(REFERENCE, "CHECK", &conf, "b").err();
        }
        // Our index must notice the reference's changes: `b`'s addresses are free again for
        // a request, and `c` (added by the reference after our last run) is a duplicate.
        let d = Call::new(OURS, "ADD", "d", "eth0").args("IP=10.22.0.3").run(&conf);
        assert_eq!(d.ok().ips(), ["10.22.0.3", "fd00:22::5"], "[{ver}]");
        call(OURS, "ADD", &conf, "c").err_code(100);
        call(REFERENCE, "DEL", &conf, "d").ok();
        call(OURS, "DEL", &conf, "c").ok();
        assert!(net.leases().is_empty(), "[{ver}] {:?}", net.files());

        // Back to the reference: it continues after our last lease (a requested address
        // counts as the last reserved one, as in the reference).
        let e = call(REFERENCE, "ADD", &conf, "e");
        assert_eq!(e.ok().ips(), ["10.22.0.4", "fd00:22::6"], "[{ver}]");
        call(OURS, "DEL", &conf, "e").ok();
        assert!(net.leases().is_empty(), "[{ver}]");
        assert_eq!(net.others(), ["lock"], "[{ver}]");
    }
}

#[test]
fn requested_addresses_use_the_same_file_names() {
    if !have_reference() {
        return;
    }
    // IPv6 text has several spellings; both must name a lease file identically or the
    // same address could be leased twice.
    let net = Net::new("names");
    let conf = net.conf(
        "1.0.0",
        json!({"ranges": [[{"subnet": "2001:db8::/64"}], [{"subnet": "10.9.0.0/16"}]]}),
        json!({}),
    );
    let spellings = [
        ("2001:db8::1:0:0:1", "2001:DB8:0:0:1:0:0:1"),
        ("2001:db8::ff00:42", "2001:db8:0000::ff00:42"),
        ("2001:db8::a:0:0", "2001:db8:0:0:0:a::"),
        ("2001:db8:0:0:1::", "2001:db8::1:0:0:0"),
    ];
    for (i, (canonical, spelled)) in spellings.iter().enumerate() {
        let (first, second) = if i % 2 == 0 { (OURS, REFERENCE) } else { (REFERENCE, OURS) };
        let id = format!("x{i}");
        let out =
            Call::new(first, "ADD", &id, "eth0").args(&format!("IgnoreUnknown=1;IP={spelled}")).run(&conf);
        assert_eq!(out.ok().ips()[0], *canonical);
        assert!(net.dir().join(canonical).exists(), "{canonical}: {:?}", net.files());
        // The other one sees it as taken, whichever spelling it is asked with.
        let again = Call::new(second, "ADD", &format!("y{i}"), "eth0")
            .args(&format!("IgnoreUnknown=1;IP={canonical}"))
            .run(&conf);
        again.err();
    }
    for i in 0..spellings.len() {
        let bin = if i % 2 == 0 { REFERENCE } else { OURS };
        call(bin, "DEL", &conf, &format!("x{i}")).ok();
    }
    assert!(net.leases().is_empty(), "{:?}", net.files());
}

#[test]
fn legacy_and_crash_leftovers_of_the_reference_are_understood() {
    if !have_reference() {
        return;
    }
    let net = Net::new("legacy");
    let conf = net.conf("1.0.0", json!({"subnet": "10.1.2.0/24"}), json!({}));
    call(REFERENCE, "ADD", &conf, "old").ok();
    // An old reference wrote id-only files; a killed one leaves an empty file.
    std::fs::write(net.dir().join("10.1.2.2"), "old").unwrap();
    std::fs::write(net.dir().join("10.1.2.3"), "").unwrap();
    // Ours never hands out the empty file's address, and releases the legacy lease.
    assert_eq!(call(OURS, "ADD", &conf, "new").ok().ips(), ["10.1.2.4"]);
    call(OURS, "CHECK", &conf, "old").ok();
    call(OURS, "DEL", &conf, "old").ok();
    assert_eq!(net.leases(), ["10.1.2.3", "10.1.2.4"]);
    // GC (1.1.0, ours only) frees the empty file and keeps the live lease.
    let gc = net.conf(
        "1.1.0",
        json!({"subnet": "10.1.2.0/24"}),
        json!({"cni.dev/valid-attachments": [{"containerID": "new", "ifname": "eth0"}]}),
    );
    Call::new(OURS, "GC", "", "").run(&gc).ok();
    assert_eq!(net.leases(), ["10.1.2.4"]);
    // And the reference still works on what ours leaves (including our index in `lock`).
    assert_eq!(call(REFERENCE, "ADD", &conf, "ref").ok().ips(), ["10.1.2.5"]);
    call(REFERENCE, "CHECK", &conf, "new").ok();
    call(REFERENCE, "DEL", &conf, "new").ok();
    call(OURS, "DEL", &conf, "ref").ok();
    assert!(net.leases().is_empty());
    assert_eq!(net.others(), ["lock"]);
}

/// Random ADDs and DELs, each by either plugin, on a small dual-stack network that fills
/// up: after every step the directory holds exactly the model's leases, and no address is
/// ever held twice. This exercises our index against every kind of foreign change.
#[test]
fn random_mix_of_both_plugins_matches_a_model() {
    if !have_reference() {
        return;
    }
    let mut seed = std::env::var("HOST_LOCAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    eprintln!("HOST_LOCAL_SEED={seed}");
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let net = Net::new("random");
    // 6 IPv4 addresses (two /29 ranges of 3 minus the gateways) and plenty of IPv6.
    let conf = net.conf(
        "1.0.0",
        json!({"ranges": [
            [{"subnet": "10.7.0.0/29", "rangeEnd": "10.7.0.4"}, {"subnet": "10.7.1.0/29", "rangeEnd": "10.7.1.4"}],
            [{"subnet": "fd00:7::/64"}]]}),
        json!({}),
    );
    let mut model: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for step in 0..120 {
        let bin = if next(2) == 0 { OURS } else { REFERENCE };
        let who = format!("c{}", next(9));
        if next(3) > 0 {
            let out = call(bin, "ADD", &conf, &who);
            match (model.contains_key(&who), model.len()) {
                (true, _) => {
                    out.err();
                }
                (false, n) if n >= 6 => {
                    out.err();
                }
                (false, _) => {
                    let ips = out.ok().ips();
                    assert_eq!(ips.len(), 2, "step {step}: {out:?}");
                    model.insert(who.clone(), ips);
                }
            }
        } else {
            call(bin, "DEL", &conf, &who).ok();
            model.remove(&who);
        }
        let held: BTreeSet<String> = model.values().flatten().cloned().collect();
        assert_eq!(held.len(), model.len() * 2, "step {step}: an address is held twice: {model:?}");
        let on_disk: BTreeSet<String> = net.leases().into_iter().collect();
        assert_eq!(on_disk, held, "step {step} ({bin} {who})");
        for (id, ips) in &model {
            for ip in ips {
                assert_eq!(net.read(ip), format!("{id}\r\neth0"), "step {step}");
            }
        }
    }
}
