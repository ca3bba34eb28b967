//! Daemons a node runs beside it (strongSwan's charon): started detached with a private
//! `/run`, signalled and reaped by pid. The unsafe part (code between fork and exec) lives
//! here so that the daemon crates can forbid unsafe code.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Whether a process with `pid` exists (a zombie not yet reaped counts as gone).
pub fn alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok() && !zombie(pid)
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Whether `pid` runs a program whose path (its first argument) ends with `suffix`.
pub fn runs(pid: i32, suffix: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).next().is_some_and(|a| a.ends_with(suffix.as_bytes())))
}

/// Sends `signal` to `pid`; false when it is gone (or not ours to signal).
pub fn signal(pid: i32, signal: Signal) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), signal).is_ok()
}

/// Reaps `pid` if it is our child and has exited (`block`: waits for it).
pub fn reap(pid: i32, block: bool) {
    let flags = if block { None } else { Some(WaitPidFlag::WNOHANG) };
    let _ = waitpid(Pid::from_raw(pid), flags);
}

/// Makes `cmd` start in a process group of its own (signals to its parent's group, such as
/// a Ctrl-C or a `kill -- -PGID` of the daemon, do not reach it, and it outlives the parent)
/// and a private mount namespace in which `run_dir` is bind-mounted on `/run`, so that a
/// daemon with a fixed pid file path (`/run/charon.pid`) can run once per node namespace.
///
/// Not a session of its own: with the kernel's autogroup scheduling (`CONFIG_SCHED_AUTOGROUP`,
/// on in Debian's kernels) every new session is a new scheduling group, and the datapath
/// daemon would then be scheduled as one group against everything else instead of thread by
/// thread as when started by hand; with kernel-libipsec that cost a third of the IPsec
/// throughput (docs/benchmarks.md, "IPsec").
pub fn detach_with_private_run(cmd: &mut Command, run_dir: &Path) -> std::io::Result<()> {
    let run = CString::new(run_dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: between fork and exec only async-signal-safe system calls are made (setpgid,
    // unshare, mount) on C strings prepared before the fork; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let target = c"/run";
            if libc::mount(run.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_pid_zero_is_not() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(-1));
    }

    #[test]
    fn an_exited_child_is_not_alive_once_reaped() {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        assert!(!alive(pid) || !zombie(pid));
        reap(pid, false);
    }
}
