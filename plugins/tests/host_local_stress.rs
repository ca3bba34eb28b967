//! Many processes at once on one network, and processes killed with SIGKILL at random
//! moments: the store must stay exact (no duplicate, nothing lost, GC repairs the rest).

mod host_local_util;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use host_local_util::{Call, Net, OURS, Out};
use serde_json::json;

fn finish(child: Child) -> Out {
    let out = child.wait_with_output().expect("waiting for the plugin");
    Out {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn two_hundred_concurrent_adds_get_distinct_addresses() {
    let net = Net::new("busy");
    let conf = net.conf("1.0.0", json!({"ranges": [[{"subnet": "10.50.0.0/16"}]]}), json!({}));
    let ids: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();

    let children: Vec<Child> = ids.iter().map(|id| Call::new(OURS, "ADD", id, "eth0").spawn(&conf)).collect();
    let mut by_ip: BTreeMap<String, String> = BTreeMap::new();
    for (id, child) in ids.iter().zip(children) {
        let out = finish(child);
        let ips = out.ok().ips();
        assert_eq!(ips.len(), 1);
        assert!(by_ip.insert(ips[0].clone(), id.clone()).is_none(), "{} handed out twice", ips[0]);
    }
    assert_eq!(by_ip.len(), 200);
    assert_eq!(net.leases().len(), 200);
    for (ip, id) in &by_ip {
        assert_eq!(net.read(ip), format!("{id}\r\neth0"));
    }

    let children: Vec<Child> = ids.iter().map(|id| Call::new(OURS, "DEL", id, "eth0").spawn(&conf)).collect();
    for child in children {
        finish(child).ok();
    }
    assert!(net.leases().is_empty());
    assert_eq!(net.others(), ["lock"]);
    assert_eq!(
        net.read("last_reserved_ip.0"),
        by_ip.keys().max_by_key(|ip| ip.parse::<std::net::Ipv4Addr>().unwrap()).unwrap().as_str()
    );
}

/// xorshift64*, seeded from the clock (or `HOST_LOCAL_SEED`) and printed, so a failure can
/// be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("HOST_LOCAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
        eprintln!("HOST_LOCAL_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Exited on its own (the kill came too late).
    Completed,
    /// Killed before it exited.
    Killed,
}

#[test]
fn killed_adds_and_dels_leave_a_store_gc_can_repair() {
    let mut rng = Rng::new();
    for round in 0..3 {
        let net = Net::new("faults");
        // Dual stack: a run can also be killed between its two leases.
        let conf = net.conf(
            "1.1.0",
            json!({"ranges": [[{"subnet": "10.60.0.0/16"}], [{"subnet": "fd00:60::/64"}]]}),
            json!({}),
        );

        // 60 attachments that exist before the storm (40 of them get a DEL), and their
        // addresses.
        let mut addresses: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in 0..60 {
            let id = format!("b{i}");
            let out = Call::new(OURS, "ADD", &id, "eth0").run(&conf);
            addresses.insert(id, out.ok().ips());
        }

        // 100 processes: ADDs of new attachments and DELs of existing ones, each killed a
        // few milliseconds after it starts (many while waiting for the lock, some in the
        // middle of their work, some after they are done).
        let mut pending: Vec<(String, bool, Child, Instant)> = Vec::new();
        let mut fates: Vec<(String, bool, Fate, Out)> = Vec::new();
        let kill_due = |pending: &mut Vec<(String, bool, Child, Instant)>, fates: &mut Vec<_>, all: bool| {
            let now = Instant::now();
            let mut i = 0;
            while i < pending.len() {
                if all || pending[i].3 <= now {
                    let (id, is_add, mut child, due) = pending.swap_remove(i);
                    if all {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let _ = child.kill(); // SIGKILL; a no-op if it already exited
                    let out = finish(child);
                    let fate = if out.status.is_some() { Fate::Completed } else { Fate::Killed };
                    fates.push((id, is_add, fate, out));
                } else {
                    i += 1;
                }
            }
        };
        for k in 0..100 {
            let is_add = k % 5 < 3;
            let id = if is_add { format!("n{k}") } else { format!("b{}", k / 5 * 2 + k % 5 - 3) };
            let command = if is_add { "ADD" } else { "DEL" };
            let child = Call::new(OURS, command, &id, "eth0").spawn(&conf);
            let due = Instant::now() + Duration::from_micros(rng.below(6000));
            pending.push((id, is_add, child, due));
            kill_due(&mut pending, &mut fates, false);
        }
        pending.sort_by_key(|p| p.3);
        kill_due(&mut pending, &mut fates, true);

        // What the runtime knows: an attachment is live if its ADD completed and no DEL
        // completed; a killed DEL leaves it in doubt (the runtime retries the DEL later).
        let mut live: BTreeSet<String> = addresses.keys().cloned().collect();
        let mut in_doubt: BTreeSet<String> = BTreeSet::new();
        let (mut killed, mut completed) = (0, 0);
        for (id, is_add, fate, out) in &fates {
            match (is_add, fate) {
                (true, Fate::Completed) => {
                    let ips = out.ok().ips();
                    assert_eq!(ips.len(), 2, "{out:?}");
                    addresses.insert(id.clone(), ips);
                    live.insert(id.clone());
                }
                (true, Fate::Killed) => {}
                (false, Fate::Completed) => {
                    out.ok();
                    live.remove(id);
                }
                (false, Fate::Killed) => {
                    live.remove(id);
                    in_doubt.insert(id.clone());
                }
            }
            match fate {
                Fate::Completed => completed += 1,
                Fate::Killed => killed += 1,
            }
        }
        eprintln!(
            "round {round}: {completed} completed, {killed} killed, {} live, {} in doubt",
            live.len(),
            in_doubt.len()
        );

        // No address was ever handed out twice.
        let mut seen = BTreeSet::new();
        for ips in addresses.values() {
            for ip in ips {
                assert!(seen.insert(ip.clone()), "round {round}: {ip} handed out twice");
            }
        }

        // What GC has to repair: leases of killed ADDs, temporary files.
        let owned_by = |f: &str| net.read(f).split("\r\n").next().unwrap_or_default().to_string();
        let debris = net
            .files()
            .iter()
            .filter(|f| {
                f.starts_with('.')
                    || (f.parse::<std::net::IpAddr>().is_ok()
                        && !live.contains(&owned_by(f))
                        && !in_doubt.contains(&owned_by(f)))
            })
            .count();
        eprintln!("round {round}: {debris} files for GC to remove");

        // GC with the runtime's list, then the store is exactly the live attachments (plus
        // whatever the in-doubt ones still hold).
        let valid: Vec<_> =
            live.iter().chain(&in_doubt).map(|id| json!({"containerID": id, "ifname": "eth0"})).collect();
        let gc = net.conf(
            "1.1.0",
            json!({"ranges": [[{"subnet": "10.60.0.0/16"}], [{"subnet": "fd00:60::/64"}]]}),
            json!({"cni.dev/valid-attachments": valid}),
        );
        Call::new(OURS, "GC", "", "").run(&gc).ok();
        let assert_store = |allowed_in_doubt: &BTreeSet<String>| {
            let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for f in net.files() {
                if f == "lock" || f.starts_with("last_reserved_ip.") {
                    continue;
                }
                assert!(f.parse::<std::net::IpAddr>().is_ok(), "round {round}: stray file {f}");
                let content = net.read(&f);
                let id = content
                    .strip_suffix("\r\neth0")
                    .unwrap_or_else(|| panic!("round {round}: {f} holds {content:?}"));
                assert!(
                    live.contains(id) || allowed_in_doubt.contains(id),
                    "round {round}: {f} belongs to {id}, not live"
                );
                holders.entry(id.to_string()).or_default().insert(f);
            }
            for id in &live {
                let expected: BTreeSet<String> = addresses[id].iter().cloned().collect();
                assert_eq!(holders.get(id), Some(&expected), "round {round}: live {id} lost its leases");
            }
            for id in allowed_in_doubt {
                let expected: BTreeSet<String> = addresses[id].iter().cloned().collect();
                assert!(holders.get(id).is_none_or(|h| h.is_subset(&expected)), "round {round}: {id}");
            }
        };
        assert_store(&in_doubt);

        // The runtime retries the DELs that were killed; then the store is exactly `live`.
        for id in &in_doubt {
            Call::new(OURS, "DEL", id, "eth0").run(&conf).ok();
        }
        assert_store(&BTreeSet::new());
        // And it keeps working: a new attachment gets addresses nobody holds.
        let out = Call::new(OURS, "ADD", "after", "eth0").run(&conf);
        for ip in out.ok().ips() {
            assert!(
                !seen.contains(&ip) || !live.iter().any(|id| addresses[id].contains(&ip)),
                "round {round}: {ip}"
            );
        }
    }
}
