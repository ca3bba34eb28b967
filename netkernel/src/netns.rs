//! Network namespaces: create named ones (visible to `ip netns`), open any by path, and run
//! code or commands inside one without moving the caller's thread.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{KernelError, Result};

/// Where named namespaces are bind-mounted, as iproute2 does.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NSFS_MAGIC`: the filesystem type of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Opens the namespace at `path` (a bind mount such as `/run/netns/x`, or
    /// `/proc/<pid>/ns/net`). Fails if the path is not a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(KernelError::io(format!("opening netns {}", path.display())))?;
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(KernelError::sys(format!("statfs {}", path.display())))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(KernelError::NotNetns(path));
        }
        Ok(NetNs { path, file })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Creates a new, empty namespace named `name` under [`NETNS_RUN_DIR`], like
    /// `ip netns add`. Fails if the name is taken.
    pub fn create_named(name: &str) -> Result<Self> {
        validate_name(name)?;
        prepare_run_dir()?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(KernelError::io(format!("creating {}", path.display())))?;
        let target = path.clone();
        // unshare() on a thread of its own: only that thread moves, and it ends right after.
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(KernelError::sys("unshare(CLONE_NEWNET)"))?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(KernelError::sys(format!("bind-mounting the netns on {}", target.display())))
        })
        .join()
        .unwrap_or_else(|_| Err(KernelError::NotNetns(path.clone())));
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Self::open(&path)
    }

    /// Removes the named namespace (unmount and unlink), like `ip netns del`. A name that
    /// does not exist is not an error. The namespace itself lives on while anything still
    /// holds it open.
    pub fn delete_named(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => {}
            Err(e) => {
                return Err(KernelError::sys(format!("unmounting {}", path.display()))(e));
            }
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(KernelError::io(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether both handles name the same namespace.
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Runs `f` on a short-lived thread that has entered this namespace; the caller's
    /// thread never moves. A panic in `f` is passed on to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<T> {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(KernelError::sys(format!("entering netns {}", self.path.display())))?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A command that runs inside this namespace (it enters it between fork and exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is a plain system call, safe between fork and exec; the fd stays
        // open in the child because the parent holds it for the command's lifetime.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." || name.contains('/') {
        Some("must be a plain file name")
    } else if name.len() > 200 {
        Some("too long")
    } else {
        None
    };
    match why {
        Some(why) => Err(KernelError::InvalidName { name: name.into(), why }),
        None => Ok(()),
    }
}

/// Makes [`NETNS_RUN_DIR`] a shared mount point (as iproute2 does), so bind mounts in it
/// propagate to other mount namespaces. Done once per process.
fn prepare_run_dir() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    fs::create_dir_all(NETNS_RUN_DIR).map_err(KernelError::io(format!("creating {NETNS_RUN_DIR}")))?;
    let make_shared = || {
        mount(None::<&str>, NETNS_RUN_DIR, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
    };
    if let Err(nix::Error::EINVAL) = make_shared() {
        // Not a mount point yet: bind it onto itself first.
        mount(
            Some(NETNS_RUN_DIR),
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(KernelError::sys(format!("bind-mounting {NETNS_RUN_DIR} on itself")))?;
        make_shared().map_err(KernelError::sys(format!("making {NETNS_RUN_DIR} shared")))?;
    }
    *done = true;
    Ok(())
}
