//! Running the chained plugins as a runtime runs them: the binary, `CNI_*` variables, the
//! config on stdin, inside a test namespace that plays the node.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;
use test_netns::TestNs;

/// Every spec version the reference plugins accept.
pub const ALL_VERSIONS: [&str; 7] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Whether `version` has CHECK.
pub fn has_check(version: &str) -> bool {
    !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
}

/// The directory of the built plugins.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bridge")).parent().unwrap().to_path_buf()
}

/// One invocation.
pub struct Call<'a> {
    pub plugin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
}

impl<'a> Call<'a> {
    pub fn new(plugin: &'a str, command: &'a str, container_id: &'a str, netns: Option<&'a Path>) -> Self {
        Call { plugin, command, container_id, netns, ifname: "eth0", args: None }
    }

    /// Runs the plugin in `host` with `conf` on stdin.
    pub fn run(&self, host: &TestNs, conf: &Value) -> Output {
        let mut cmd = host.command(bin_dir().join(self.plugin).to_str().unwrap());
        cmd.env_clear()
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", bin_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = self.netns {
            cmd.env("CNI_NETNS", ns);
        }
        if let Some(a) = self.args {
            cmd.env("CNI_ARGS", a);
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs it and requires success; the printed result (`Null` when nothing).
    pub fn ok(&self, host: &TestNs, conf: &Value) -> Value {
        let out = self.run(host, conf);
        assert!(
            out.status.success(),
            "{} {} failed: {}\n{}",
            self.plugin,
            self.command,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout).unwrap() }
    }

    /// Runs it and requires failure; the error object.
    pub fn err(&self, host: &TestNs, conf: &Value) -> Value {
        let out = self.run(host, conf);
        assert!(
            !out.status.success(),
            "{} {} succeeded: {}",
            self.plugin,
            self.command,
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not an error object ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// A `prevResult` in `version`'s shape with one container interface and its addresses.
pub fn prev_result(version: &str, ifname: &str, sandbox: &Path, ips: &[&str]) -> Value {
    use serde_json::json;
    if matches!(version, "0.1.0" | "0.2.0") {
        let mut r = json!({"cniVersion": version});
        for ip in ips {
            let key = if ip.contains(':') { "ip6" } else { "ip4" };
            r[key] = json!({"ip": ip});
        }
        return r;
    }
    let ips: Vec<Value> = ips
        .iter()
        .map(|ip| {
            let mut v = json!({"address": ip, "interface": 1});
            if matches!(version, "0.3.0" | "0.3.1" | "0.4.0") {
                v["version"] = json!(if ip.contains(':') { "6" } else { "4" });
            }
            v
        })
        .collect();
    json!({"cniVersion": version,
        "interfaces": [{"name": "veth0host"}, {"name": ifname, "sandbox": sandbox}],
        "ips": ips})
}

/// The programs an `strace -f -e trace=execve -o log` run started, by path, in order
/// (successful execs only).
pub fn executed(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter(|l| l.contains("execve(\"") && l.trim_end().ends_with("= 0"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect()
}
