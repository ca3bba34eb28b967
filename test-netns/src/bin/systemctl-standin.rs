//! `systemctl` for the install-guide test (`tests/install_guide.rs`), whose nodes are network
//! and mount namespaces: they have no systemd of their own. It runs a unit's `ExecStart` as
//! systemd would for the directives the project's unit and Debian's etcd unit use
//! (`Environment`, `EnvironmentFile`, specifiers `%H %p %n`, `Type=notify` with
//! `$NOTIFY_SOCKET`, `User`, `RuntimeDirectory`, `StateDirectory`, `TimeoutStopSec`), and
//! nothing else (no capability bounding, no sandboxing, no restart on failure). Output goes
//! to `/var/log/<unit>.log` instead of the journal.
//!
//! systemctl [--no-block] daemon-reload | enable [--now] UNIT... | start|stop|restart UNIT... | is-active UNIT

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const STATE: &str = "/run/systemctl-standin";
const UNIT_DIRS: [&str; 3] = ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

/// What a unit file says, `[Service]` only.
#[derive(Debug, Default)]
struct Unit {
    name: String,
    exec_start: String,
    environment: Vec<String>,
    environment_files: Vec<String>,
    notify: bool,
    user: Option<String>,
    runtime_dirs: Vec<String>,
    runtime_mode: Option<u32>,
    state_dirs: Vec<String>,
    state_mode: Option<u32>,
    stop_timeout: Duration,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let no_block = args.iter().any(|a| a == "--no-block");
    let now = args.iter().any(|a| a == "--now");
    let words: Vec<&str> = args.iter().filter(|a| !a.starts_with("--")).map(String::as_str).collect();
    let Some((&verb, units)) = words.split_first() else {
        eprintln!("systemctl (stand-in): no command");
        return ExitCode::from(2);
    };
    let result = (|| -> Result<u8, String> {
        match verb {
            "daemon-reload" => Ok(0),
            "enable" => {
                for u in units {
                    let unit = load(u)?;
                    if now {
                        start(&unit, no_block)?;
                    }
                }
                Ok(0)
            }
            "start" | "restart" | "stop" => {
                for u in units {
                    let unit = load(u)?;
                    if verb != "start" {
                        stop(&unit)?;
                    }
                    if verb != "stop" {
                        start(&unit, no_block)?;
                    }
                }
                Ok(0)
            }
            "is-active" => {
                let unit = load(units.first().ok_or("is-active: which unit?")?)?;
                let active = running(&unit).is_some();
                println!("{}", if active { "active" } else { "inactive" });
                Ok(if active { 0 } else { 3 })
            }
            other => Err(format!("the stand-in does not implement `{other}`")),
        }
    })();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("systemctl (stand-in): {e}");
            ExitCode::FAILURE
        }
    }
}

fn unit_name(u: &str) -> String {
    if u.contains('.') { u.to_string() } else { format!("{u}.service") }
}

fn load(u: &str) -> Result<Unit, String> {
    let name = unit_name(u);
    let path = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("Unit {name} not found."))?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let prefix = name.trim_end_matches(".service");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let spec = |v: &str| {
        v.replace("%%", "\u{0}")
            .replace("%H", &host)
            .replace("%p", prefix)
            .replace("%n", &name)
            .replace('\u{0}', "%")
    };
    let mut unit =
        Unit { name: prefix.to_string(), stop_timeout: Duration::from_secs(90), ..Default::default() };
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section != "[Service]" || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = spec(v.trim());
        let mode = |s: &str| u32::from_str_radix(s, 8).map_err(|_| format!("{name}: bad mode {s}"));
        match k.trim() {
            "ExecStart" if !v.is_empty() => {
                unit.exec_start = v.trim_start_matches(['-', '@', ':', '+', '!']).to_string()
            }
            "Environment" => {
                unit.environment.extend(v.split_whitespace().map(|s| s.trim_matches('"').to_string()))
            }
            "EnvironmentFile" => unit.environment_files.push(v),
            "Type" => unit.notify = v == "notify",
            "User" => unit.user = Some(v),
            "RuntimeDirectory" => unit.runtime_dirs.extend(v.split_whitespace().map(String::from)),
            "StateDirectory" => unit.state_dirs.extend(v.split_whitespace().map(String::from)),
            "RuntimeDirectoryMode" => unit.runtime_mode = Some(mode(&v)?),
            "StateDirectoryMode" => unit.state_mode = Some(mode(&v)?),
            "TimeoutStopSec" => {
                unit.stop_timeout = Duration::from_secs(v.trim_end_matches('s').parse().unwrap_or(90))
            }
            _ => {}
        }
    }
    if unit.exec_start.is_empty() {
        return Err(format!("{name} has no ExecStart"));
    }
    Ok(unit)
}

fn pid_file(unit: &Unit) -> PathBuf {
    Path::new(STATE).join(format!("{}.pid", unit.name))
}

/// The main process, when it runs (a zombie does not count).
fn running(unit: &Unit) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(unit)).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (state != "Z" && state != "X").then_some(pid)
}

/// The unit's environment: `Environment=` then the files, later ones winning.
fn environment(unit: &Unit) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    let mut put = |line: &str| {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            env.insert(k.trim().to_string(), v.to_string());
        }
    };
    for e in &unit.environment {
        put(e);
    }
    for f in &unit.environment_files {
        let (optional, f) = f.strip_prefix('-').map_or((false, f.as_str()), |f| (true, f));
        match std::fs::read_to_string(f) {
            Ok(text) => {
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                    put(line);
                }
            }
            Err(_) if optional => {}
            Err(e) => return Err(format!("{}: EnvironmentFile {f}: {e}", unit.name)),
        }
    }
    Ok(env)
}

/// ExecStart's words with `$VAR` (split at white space) and `${VAR}` (one word) expanded.
fn argv(unit: &Unit, env: &BTreeMap<String, String>) -> Vec<String> {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for word in unit.exec_start.split_whitespace() {
        if let Some(var) =
            word.strip_prefix('$').filter(|v| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            out.extend(get(var).split_whitespace().map(String::from));
            continue;
        }
        let mut w = word.to_string();
        while let Some(start) = w.find("${") {
            let Some(len) = w[start..].find('}') else { break };
            let value = get(&w[start + 2..start + len]);
            w.replace_range(start..start + len + 1, &value);
        }
        out.push(w);
    }
    out
}

fn make_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn start(unit: &Unit, no_block: bool) -> Result<(), String> {
    if running(unit).is_some() {
        return Ok(());
    }
    let env = environment(unit)?;
    let argv = argv(unit, &env);
    let owner = match &unit.user {
        Some(u) => {
            let user = nix::unistd::User::from_name(u)
                .map_err(|e| format!("{}: user {u}: {e}", unit.name))?
                .ok_or_else(|| format!("{}: no user {u}", unit.name))?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        }
        None => None,
    };
    for d in &unit.runtime_dirs {
        make_dir(&Path::new("/run").join(d), unit.runtime_mode.unwrap_or(0o755), owner)?;
    }
    for d in &unit.state_dirs {
        make_dir(&Path::new("/var/lib").join(d), unit.state_mode.unwrap_or(0o755), owner)?;
    }
    make_dir(Path::new(STATE), 0o755, None)?;
    let log_path = format!("/var/log/{}.log", unit.name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{log_path}: {e}"))?;
    let notify_path = Path::new(STATE).join(format!("{}.notify", unit.name));
    let _ = std::fs::remove_file(&notify_path);
    let listener = if unit.notify && !no_block {
        let s = UnixDatagram::bind(&notify_path).map_err(|e| format!("{}: {e}", notify_path.display()))?;
        if let Some((uid, gid)) = owner {
            let _ = std::os::unix::fs::chown(&notify_path, Some(uid), Some(gid));
        }
        Some(s)
    } else {
        None
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(&env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        // Its own process group: it outlives this command, as a service outlives systemctl.
        .process_group(0);
    if unit.notify {
        cmd.env("NOTIFY_SOCKET", &notify_path);
    }
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {}: {e}", unit.name, argv[0]))?;
    std::fs::write(pid_file(unit), child.id().to_string()).map_err(|e| e.to_string())?;
    let Some(listener) = listener else { return Ok(()) };
    // Type=notify: started once the service says READY=1 (systemd's default 90 s timeout).
    listener.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut buf = [0u8; 4096];
    let result = loop {
        if let Ok(n) = listener.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
        {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "{} exited before it was ready ({status}); see {log_path}:\n{}",
                unit.name,
                tail(&log_path)
            ));
        }
        if Instant::now() > deadline {
            break Err(format!("{} not ready after 90 s; see {log_path}:\n{}", unit.name, tail(&log_path)));
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&notify_path);
    result
}

fn stop(unit: &Unit) -> Result<(), String> {
    let Some(pid) = running(unit) else { return Ok(()) };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + unit.stop_timeout;
    while running(unit).is_some() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(pid_file(unit));
    Ok(())
}

fn tail(path: &str) -> String {
    let mut s = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
