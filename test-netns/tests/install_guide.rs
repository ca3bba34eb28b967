//! docs/install.md, followed literally: every fenced block marked `sh {on=…}` runs, in the
//! order of the guide, on the nodes it names. Fails when the guide goes stale (a command
//! that no longer works, a flag renamed, a port missing from the firewall, a permission
//! missing from the etcd roles) and when a new shell block carries no `on=`.
//!
//! A node is a network namespace on a shared underlay (`eth0`, 10.0.0.N/24) plus a mount and
//! UTS namespace of its own: its host name is `nodeN`, and `/etc`, `/opt`, `/usr/local`,
//! `/var/lib`, `/var/log`, `/var/backups` and `/run` are overlays whose writes stay with the
//! node (the machine's own files are never changed). What differs from real machines:
//! - no systemd in a namespace: `systemctl` is `systemctl-standin` (this crate's binary), which
//!   runs the units' `ExecStart` with their environment, `User`, directories and `Type=notify`
//!   readiness, and nothing else (no sandboxing, no restart). `systemd-analyze verify` is the
//!   real one.
//! - `cargo install` builds the debug profile (`--debug` added), the one this test suite
//!   builds anyway; the release profile would cost minutes of LTO on every run. The nodes
//!   have no Internet: cargo works offline, from this machine's registry cache.
//! - `$HOME` (where the guide keeps `~/ferrocni-pki`) is one directory shared by the three
//!   nodes: it stands for the guide's "copy the directory to node2 and node3".
//! - `apt-get install` finds everything installed already (scripts/deps.sh installs it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_netns::cluster::bin_dir;
use test_netns::{TestNs, Underlay, require_root};

/// A shell block of the guide and where it runs.
#[derive(Debug)]
struct Block {
    line: usize,
    on: Vec<usize>,
    script: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The blocks of the guide. Every `sh` block must say where it runs.
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else { continue };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        if !info.starts_with("sh") {
            continue;
        }
        let on = info
            .split_once("{on=")
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(on, _)| on)
            .unwrap_or_else(|| panic!("install.md line {}: a sh block without {{on=…}}: {info}", i + 1));
        let on = match on {
            "all" => vec![1, 2, 3],
            n => vec![
                n.strip_prefix("node")
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=3).contains(n))
                    .unwrap_or_else(|| panic!("install.md line {}: unknown target {n}", i + 1)),
            ],
        };
        out.push(Block { line: i + 1, on, script: body });
    }
    out
}

/// One node: its network namespace and the process holding its mount and UTS namespaces.
struct Node {
    // Deleted after the holder and the services (fields drop in order).
    _ns: TestNs,
    holder: Child,
}

impl Node {
    fn start(underlay: &Underlay, n: usize, work: &Path) -> Node {
        let ns = TestNs::new(&format!("inst{n}"));
        underlay.attach(&ns, "eth0", &format!("10.0.0.{n}/24"));
        let w = work.join(format!("node{n}"));
        let setup = format!(
            "set -e
             hostname node{n}
             for d in /etc /opt /usr/local /var/lib /var/log /var/backups /run; do
               mkdir -p {w}/upper$d {w}/work$d
               mount -t overlay overlay -o lowerdir=$d,upperdir={w}/upper$d,workdir={w}/work$d $d
             done
             echo ready
             exec sleep infinity",
            w = w.display()
        );
        let mut holder = ns
            .command("unshare")
            .args(["--mount", "--uts", "--propagation", "private", "--", "bash", "-c", &setup])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "node{n}'s namespaces");
        Node { _ns: ns, holder }
    }

    /// The processes in this node's mount namespace (the holder too).
    fn processes(&self) -> Vec<i32> {
        let mine = std::fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())).ok();
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| mine.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == mine)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The services the guide started, then the holder: the node's mounts and pods go
        // with its mount namespace, its links and tables with the network namespace.
        let holder = self.holder.id() as i32;
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let others: Vec<i32> = self.processes().into_iter().filter(|p| *p != holder).collect();
            for p in &others {
                // SAFETY: kill(2) on a pid read from /proc; at worst the process is gone.
                unsafe { libc::kill(*p, sig) };
            }
            for _ in 0..100 {
                if self.processes().iter().all(|p| *p == holder) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `cargo` and `systemctl` for the nodes (see the header comment).
fn stand_ins(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_systemctl-standin"), dir.join("systemctl")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let script = format!(
        "#!/bin/sh\n# `cargo install` builds the suite's debug profile (see install_guide.rs).\n\
         if [ \"$1\" = install ]; then shift; exec {cargo} install --debug \"$@\"; fi\nexec {cargo} \"$@\"\n"
    );
    std::fs::write(dir.join("cargo"), script).unwrap();
    std::fs::set_permissions(dir.join("cargo"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run_on(node: &Node, n: usize, script: &str, env: &[(String, String)]) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &node.holder.id().to_string(), "--mount", "--uts", "--net"])
        .arg(format!("--wd={}", workspace().display()))
        .args(["--", "bash", "-euo", "pipefail", "-c"])
        .arg(script)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NODE_UNDER_TEST", format!("node{n}"))
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .expect("nsenter runs")
}

#[test]
fn the_install_guide_works_as_written() {
    require_root!();
    let guide = std::fs::read_to_string(workspace().join("docs/install.md")).unwrap();
    let blocks = blocks(&guide);
    assert!(blocks.len() >= 15, "install.md has {} tested blocks", blocks.len());
    for cmd in ["systemd-analyze", "unshare", "nsenter", "etcd", "etcdctl", "openssl", "nft", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            test_netns::skip("install_guide", &format!("{cmd} is missing (scripts/deps.sh installs it)"));
            return;
        }
    }
    // The daemon and the plugins built before any node exists (`cargo install` finds them).
    bin_dir();

    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    stand_ins(&work.path().join("stand-ins"));
    let real_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or(format!("{real_home}/.cargo"));
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), home.display().to_string()),
        (
            "PATH".into(),
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{cargo_home}/bin",
                work.path().join("stand-ins").display()
            ),
        ),
        ("CARGO_HOME".into(), cargo_home.clone()),
        ("RUSTUP_HOME".into(), std::env::var("RUSTUP_HOME").unwrap_or(format!("{real_home}/.rustup"))),
        ("CARGO_NET_OFFLINE".into(), "true".into()),
        ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    for k in ["RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }

    let underlay = Underlay::new(None);
    let nodes: Vec<Node> = (1..=3).map(|n| Node::start(&underlay, n, work.path())).collect();
    for b in &blocks {
        for &n in &b.on {
            let out = run_on(&nodes[n - 1], n, &b.script, &env);
            let (stdout, stderr) =
                (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            eprintln!("--- install.md line {} on node{n}: {}\n{stdout}{stderr}", b.line, out.status);
            if !out.status.success() {
                // The services' logs (the stand-in's journal) say why.
                for (i, node) in nodes.iter().enumerate() {
                    let logs = run_on(node, i + 1, "tail -n 30 /var/log/*.log 2>/dev/null || true", &env);
                    eprintln!("--- node{} logs:\n{}", i + 1, String::from_utf8_lossy(&logs.stdout));
                }
                panic!("install.md line {} failed on node{n}:\n{}\n{stdout}\n{stderr}", b.line, b.script);
            }
        }
    }

    // What the guide promised, checked apart from its own commands.
    for (i, node) in nodes.iter().enumerate() {
        let status = run_on(node, i + 1, "overlayctl status; ip route show dev ferro-wg", &env);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ready", "true"]),
            "node{}: {text}",
            i + 1
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("10.244.") && l.contains("/24")).count(),
            2,
            "node{} routes its two peers through the tunnel: {text}",
            i + 1
        );
        let ls = run_on(
            node,
            i + 1,
            "ls /opt/cni/bin; stat -c '%a' /etc/overlayd/etcd-password /etc/default/overlayd",
            &env,
        );
        let ls = String::from_utf8_lossy(&ls.stdout);
        for p in ["vxlan", "bridge", "host-local", "loopback", "portmap", "firewall", "tuning"] {
            assert!(ls.lines().any(|l| l == p), "node{}: /opt/cni/bin lacks {p}: {ls}", i + 1);
        }
        assert_eq!(ls.lines().filter(|l| *l == "600").count(), 2, "node{}: secrets are 0600: {ls}", i + 1);
    }
    // A node's credentials cannot write the config (the documented roles).
    let denied = run_on(
        &nodes[1],
        2,
        "overlayctl network set ~/ferrocni-pki/net-conf.json --etcd-endpoints https://10.0.0.1:2379 \
         --etcd-cafile /etc/overlayd/etcd-ca.pem --etcd-username node2 --etcd-password-file /etc/overlayd/etcd-password",
        &env,
    );
    assert!(!denied.status.success(), "a node wrote the network config");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("permission denied"), "{denied:?}");
    drop(nodes);
}
