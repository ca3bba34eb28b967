//! Running host-local binaries as a runtime does (environment + config on stdin), and
//! inspecting the lease directory. Shared by the host-local integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// Our binary.
pub const OURS: &str = env!("CARGO_BIN_EXE_host-local");
/// The reference Go binary (Debian containernetworking-plugins 1.1.1, spec ≤ 1.0.0).
pub const REFERENCE: &str = "/usr/lib/cni/host-local";

/// Every spec version.
pub const VERSIONS: [&str; 7] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Whether the reference binary is installed (interop tests skip without it).
pub fn have_reference() -> bool {
    let ok = Path::new(REFERENCE).exists();
    if !ok {
        eprintln!("skipping: {REFERENCE} is not installed");
    }
    ok
}

/// One invocation's environment.
#[derive(Debug, Clone)]
pub struct Call {
    pub bin: &'static str,
    pub command: String,
    pub id: String,
    pub ifname: String,
    pub cni_args: Option<String>,
    pub netns: Option<String>,
    /// Variables to leave out entirely.
    pub unset: Vec<&'static str>,
    /// Variables to set to something else.
    pub set: Vec<(&'static str, String)>,
}

impl Call {
    pub fn new(bin: &'static str, command: &str, id: &str, ifname: &str) -> Call {
        Call {
            bin,
            command: command.into(),
            id: id.into(),
            ifname: ifname.into(),
            cni_args: None,
            netns: Some("/some/where".into()),
            unset: Vec::new(),
            set: Vec::new(),
        }
    }

    pub fn args(mut self, a: &str) -> Call {
        self.cni_args = Some(a.into());
        self
    }

    pub fn without(mut self, var: &'static str) -> Call {
        self.unset.push(var);
        self
    }

    pub fn with(mut self, var: &'static str, value: &str) -> Call {
        self.set.push((var, value.into()));
        self
    }

    fn command(&self) -> Command {
        let mut vars: BTreeMap<&str, String> = BTreeMap::new();
        vars.insert("CNI_COMMAND", self.command.clone());
        vars.insert("CNI_CONTAINERID", self.id.clone());
        vars.insert("CNI_IFNAME", self.ifname.clone());
        // The Go skeleton requires CNI_PATH for every command.
        vars.insert("CNI_PATH", "/usr/lib/cni".into());
        if let Some(n) = &self.netns {
            vars.insert("CNI_NETNS", n.clone());
        }
        if let Some(a) = &self.cni_args {
            vars.insert("CNI_ARGS", a.clone());
        }
        for (k, v) in &self.set {
            vars.insert(k, v.clone());
        }
        for k in &self.unset {
            vars.remove(k);
        }
        let mut cmd = Command::new(self.bin);
        cmd.env_clear().envs(vars).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Runs to completion with `stdin`.
    pub fn run(&self, stdin: &str) -> Out {
        let out = self.spawn(stdin).wait_with_output().expect("waiting for the plugin");
        Out {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the plugin with `stdin` written and closed.
    pub fn spawn(&self, stdin: &str) -> Child {
        let mut child = self.command().spawn().expect("starting the plugin");
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A plugin killed early may close its stdin first; that is fine.
        let _ = pipe.write_all(stdin.as_bytes());
        drop(pipe);
        child
    }
}

/// What an invocation printed and how it exited.
#[derive(Debug, Clone)]
pub struct Out {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(&self) -> &Out {
        assert_eq!(self.status, Some(0), "expected success, got {self:?}");
        self
    }

    /// Asserts failure and returns the error object printed on stdout.
    #[track_caller]
    pub fn err(&self) -> Value {
        assert_ne!(self.status, Some(0), "expected a failure, got {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("error object expected ({e}): {self:?}"))
    }

    /// Asserts failure with `code` and returns the message (and details).
    #[track_caller]
    pub fn err_code(&self, code: u64) -> String {
        let e = self.err();
        assert_eq!(e["code"], code, "{self:?}");
        format!("{} {}", e["msg"].as_str().unwrap_or_default(), e["details"].as_str().unwrap_or_default())
    }

    /// The stdout as JSON (a result).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("JSON expected ({e}): {self:?}"))
    }

    /// The addresses of a result (any version), as `ip/len` strings.
    pub fn addresses(&self) -> Vec<String> {
        let v = self.json();
        let mut out = Vec::new();
        if let Some(ips) = v["ips"].as_array() {
            out.extend(ips.iter().map(|ip| ip["address"].as_str().unwrap().to_string()));
        }
        for k in ["ip4", "ip6"] {
            if let Some(ip) = v[k]["ip"].as_str() {
                out.push(ip.to_string());
            }
        }
        out
    }

    /// The result's addresses without prefix lengths.
    pub fn ips(&self) -> Vec<String> {
        self.addresses().iter().map(|a| a.split('/').next().unwrap().to_string()).collect()
    }
}

/// A network in a fresh temporary data directory.
pub struct Net {
    pub tmp: tempfile::TempDir,
    pub name: String,
}

impl Net {
    pub fn new(name: &str) -> Net {
        Net { tmp: tempfile::Builder::new().prefix("host-local-test").tempdir().unwrap(), name: name.into() }
    }

    /// The `dataDir` (not created until a plugin creates it).
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The lease directory.
    pub fn dir(&self) -> PathBuf {
        self.data_dir().join(&self.name)
    }

    /// A config of `version` with `ipam` (its `type` and `dataDir` are filled in), plus
    /// `extra` top-level keys.
    pub fn conf(&self, version: &str, mut ipam: Value, extra: Value) -> String {
        ipam["type"] = json!("host-local");
        if ipam.get("dataDir").is_none() {
            ipam["dataDir"] = json!(self.data_dir());
        }
        let mut c = json!({"cniVersion": version, "name": self.name, "type": "bridge", "ipam": ipam});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                c[k] = v;
            }
        }
        c.to_string()
    }

    /// The sorted names in the lease directory (empty if it does not exist).
    pub fn files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.dir()) else { return Vec::new() };
        let mut v: Vec<String> = rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    /// The lease files only (names that are addresses).
    pub fn leases(&self) -> Vec<String> {
        self.files().into_iter().filter(|f| f.parse::<std::net::IpAddr>().is_ok()).collect()
    }

    /// The files besides leases and the `last_reserved_ip.*` family (round-robin state,
    /// spares included): after every DEL, only `lock` should be left.
    pub fn others(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|f| f.parse::<std::net::IpAddr>().is_err() && !f.starts_with("last_reserved_ip."))
            .collect()
    }

    /// A file's content.
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir().join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }

    /// Writes a file into the lease directory (creating it).
    pub fn write(&self, file: &str, content: &str) {
        std::fs::create_dir_all(self.dir()).unwrap();
        std::fs::write(self.dir().join(file), content).unwrap();
    }

    /// Whether anything exists under the data directory.
    pub fn data_dir_exists(&self) -> bool {
        self.data_dir().exists()
    }
}
