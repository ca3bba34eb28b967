//! Executing a plugin binary as a runtime does: find it in `CNI_PATH`, set the `CNI_*`
//! variables, send the config on stdin, read the result or the error object from stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::thread;
use std::time::Duration;

use crate::env::{CniArgs, Command, Environment};
use crate::error::{Code, Error};

/// Finds `plugin` (a binary name without `/`) in the search path.
///
/// ```
/// let e = cni_spec::exec::find_plugin("no-such-plugin", &["/nonexistent".into()]).unwrap_err();
/// assert!(e.msg.contains("no-such-plugin"));
/// ```
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, Error> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::invalid_config("type", format!("{plugin:?} is not a plugin name")));
    }
    path.iter().map(|dir| dir.join(plugin)).find(|p| is_executable(p)).ok_or_else(|| {
        let dirs: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
        Error::invalid_env(
            "CNI_PATH",
            format!("failed to find plugin {plugin:?} in path [{}]", dirs.join(" ")),
        )
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `CNI_*` variables of one plugin invocation: the same fields a plugin reads back as
/// its [`Environment`], here to be set for a child.
///
/// ```
/// use cni_spec::exec::Invocation;
/// use cni_spec::Command;
/// let inv = Invocation::new(Command::Add).container("c1", Some("/run/netns/a".into()), "eth0");
/// assert!(inv.env().contains(&("CNI_IFNAME", "eth0".to_string())));
/// ```
pub type Invocation = Environment;

impl Environment {
    /// An invocation of `command` with nothing else set.
    pub fn new(command: Command) -> Self {
        Environment {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: CniArgs::default(),
            path: Vec::new(),
        }
    }

    /// Sets the container variables.
    pub fn container(mut self, id: &str, netns: Option<PathBuf>, ifname: &str) -> Self {
        self.container_id = id.to_string();
        self.netns = netns;
        self.ifname = ifname.to_string();
        self
    }

    /// Sets the plugin search path.
    pub fn with_path(mut self, path: &[PathBuf]) -> Self {
        self.path = path.to_vec();
        self
    }

    /// The variables to set (libcni sets all of them, empty or not).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let path: Vec<String> = self.path.iter().map(|p| p.display().to_string()).collect();
        vec![
            ("CNI_COMMAND", self.command.to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.args.encode()),
            ("CNI_PATH", path.join(":")),
        ]
    }

    /// Runs the plugin binary at `binary` with `stdin`; returns its stdout on success.
    ///
    /// A non-zero exit becomes the plugin's error object (or an error quoting its output
    /// when that is not one). The plugin's stderr is passed on to ours. "Text file busy"
    /// is retried, as libcni does.
    pub fn run(&self, binary: &Path, stdin: &[u8]) -> Result<Vec<u8>, Error> {
        self.run_with(binary, stdin, &[])
    }

    /// [`Invocation::run`] with more environment variables for the child.
    ///
    /// ```no_run
    /// use cni_spec::{Command, exec::Invocation};
    /// let inv = Invocation::new(Command::Del).container("c1", None, "eth0");
    /// inv.run_with("/opt/cni/bin/host-local".as_ref(), b"{}", &[("FERROCNI_ROLLBACK", "1")]).unwrap();
    /// ```
    pub fn run_with(&self, binary: &Path, stdin: &[u8], extra: &[(&str, &str)]) -> Result<Vec<u8>, Error> {
        let mut attempt = 0;
        loop {
            match self.run_once(binary, stdin, extra) {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 5 => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(100 << attempt));
                }
                Err(e) => {
                    return Err(Error::io(format!("executing {}", binary.display()), &e));
                }
                Ok(out) => return plugin_outcome(out),
            }
        }
    }

    fn run_once(
        &self,
        binary: &Path,
        stdin: &[u8],
        extra: &[(&str, &str)],
    ) -> std::io::Result<std::process::Output> {
        let mut child = Process::new(binary)
            .envs(self.env())
            .envs(extra.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = stdin.to_vec();
        // Write from another thread so a plugin that prints before reading cannot deadlock us.
        let writer = thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        Ok(out)
    }
}

fn plugin_outcome(out: std::process::Output) -> Result<Vec<u8>, Error> {
    if !out.stderr.is_empty() {
        // Informational only: a failure to copy it must not fail the call.
        let _ = std::io::stderr().write_all(&out.stderr);
    }
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.trim().is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = if stderr.trim().is_empty() {
            format!("plugin failed with no error message: {}", out.status)
        } else {
            format!("plugin failed: {:?}", stderr.trim())
        };
        return Err(Error::internal(msg));
    }
    match serde_json::from_slice::<Error>(&out.stdout) {
        Ok(e) => Err(e),
        Err(perr) => Err(Error::new(
            Code::DecodingFailure,
            format!("plugin failed, and its error output {stdout:?} is not an error object: {perr}"),
        )),
    }
}
