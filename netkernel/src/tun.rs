//! TUN devices: open (or re-attach to) a layer-3 TUN device, one file descriptor per queue,
//! with the multi-queue, virtio-net header, offload and persist switches. The only place
//! that issues TUN ioctls.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{KernelError, Result};

/// `IFF_TUN`: layer 3, no Ethernet header.
const IFF_TUN: libc::c_short = 0x0001;
/// `IFF_NO_PI`: no 4-byte packet-information prefix.
const IFF_NO_PI: libc::c_short = 0x1000;
/// `IFF_MULTI_QUEUE`: every open file is one more queue of the same device.
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `IFF_VNET_HDR`: every read and write starts with a `virtio_net_hdr`.
const IFF_VNET_HDR: libc::c_short = 0x4000;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Offload flags for [`TunQueue::set_offload`] (`TUN_F_*`).
pub mod offload {
    /// The kernel may hand us packets with a partial checksum.
    pub const CSUM: u32 = 0x01;
    /// TCP segmentation offload over IPv4.
    pub const TSO4: u32 = 0x02;
    /// TCP segmentation offload over IPv6.
    pub const TSO6: u32 = 0x04;
    /// TSO with the ECN bit.
    pub const TSO_ECN: u32 = 0x08;
}

/// The size of `struct virtio_net_hdr` (without `num_buffers`), the default vnet header size.
pub const VNET_HDR_LEN: usize = 10;

/// How to open a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunOptions {
    /// `IFF_MULTI_QUEUE`; every queue of one device must agree.
    pub multi_queue: bool,
    /// `IFF_VNET_HDR` with a [`VNET_HDR_LEN`]-byte header.
    pub vnet_hdr: bool,
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of a TUN device: reads give packets the kernel routed to the device, writes
/// inject packets into the kernel. Non-blocking, close-on-exec.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
}

impl TunQueue {
    /// Opens a queue of TUN device `name` in the calling thread's network namespace,
    /// creating the device if it does not exist. A persistent device of that name is
    /// re-attached (its flags must agree on `multi_queue`).
    pub fn open(name: &str, opts: TunOptions) -> Result<TunQueue> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(KernelError::InvalidName { name: name.into(), why: "not an interface name" });
        }
        // SAFETY: a plain open(2) of a constant NUL-terminated path.
        let raw = unsafe {
            libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)
        };
        if raw < 0 {
            return Err(KernelError::io("opening /dev/net/tun")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if opts.multi_queue {
            req.flags |= IFF_MULTI_QUEUE;
        }
        if opts.vnet_hdr {
            req.flags |= IFF_VNET_HDR;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq lays out.
        ioctl(&fd, TUNSETIFF, &mut req as *mut IfReq as libc::c_ulong)
            .map_err(KernelError::io(format!("TUNSETIFF {name}")))?;
        if opts.vnet_hdr {
            let mut size: libc::c_int = VNET_HDR_LEN as libc::c_int;
            ioctl(&fd, TUNSETVNETHDRSZ, &mut size as *mut libc::c_int as libc::c_ulong)
                .map_err(KernelError::io(format!("TUNSETVNETHDRSZ {name}")))?;
        }
        // The kernel may have completed the name; the device lives in our namespace, so
        // the index is looked up here.
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        let ifindex =
            if_index(&req.name).map_err(KernelError::io(format!("looking up the index of {name}")))?;
        Ok(TunQueue { fd, name, ifindex })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's interface index (in the namespace it was opened in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// TUNSETPERSIST: whether the device survives the last queue being closed.
    pub fn set_persist(&self, on: bool) -> Result<()> {
        ioctl(&self.fd, TUNSETPERSIST, on as libc::c_ulong)
            .map_err(KernelError::io(format!("TUNSETPERSIST {} on {}", on as u8, self.name)))
    }

    /// TUNSETOFFLOAD with [`offload`] flags; needs a queue opened with `vnet_hdr`.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        ioctl(&self.fd, TUNSETOFFLOAD, flags as libc::c_ulong)
            .map_err(KernelError::io(format!("TUNSETOFFLOAD {flags:#x} on {}", self.name)))
    }

    /// Reads one packet (non-blocking: `WouldBlock` when none is queued).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) into a buffer we exclusively borrow, bounded by its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes one packet.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: write(2) from a buffer we borrow, bounded by its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// if_nametoindex(3) of a NUL-padded name.
fn if_index(name: &[u8; libc::IFNAMSIZ]) -> io::Result<u32> {
    if !name.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the name is NUL-terminated within its array (checked above).
    let idx = unsafe { libc::if_nametoindex(name.as_ptr().cast()) };
    if idx == 0 { Err(io::Error::last_os_error()) } else { Ok(idx) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the callers pass TUN ioctls whose argument is either a value or a pointer to
    // a live object of the type the ioctl expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether `/dev/net/tun` exists here (TUN support in the kernel).
pub fn available() -> bool {
    let path: &CStr = c"/dev/net/tun";
    // SAFETY: access(2) on a constant NUL-terminated path.
    unsafe { libc::access(path.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "a/b", "0123456789abcdef"] {
            assert!(matches!(
                TunQueue::open(bad, TunOptions::default()),
                Err(KernelError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn multi_queue_persist_and_reattach() {
        if !nix::unistd::geteuid().is_root() || !available() {
            // Under CI=true a test that cannot run fails (as test-netns's `skip`).
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "needs root and /dev/net/tun (CI=true)"
            );
            eprintln!("SKIPPED: needs root and /dev/net/tun");
            return;
        }
        // Runs in a fresh namespace of its own so nothing leaks into the host's.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let opts = TunOptions { multi_queue: true, vnet_hdr: true };
            let q0 = TunQueue::open("tuntest0", opts).expect("first queue");
            let q1 = TunQueue::open("tuntest0", opts).expect("second queue");
            assert_eq!(q0.ifindex(), q1.ifindex());
            q0.set_offload(offload::CSUM | offload::TSO4 | offload::TSO6).expect("offload");
            q0.set_persist(true).expect("persist");
            let idx = q0.ifindex();
            drop((q0, q1));
            let q = TunQueue::open("tuntest0", opts).expect("re-attach");
            assert_eq!(q.ifindex(), idx, "the persistent device is the same");
            q.set_persist(false).expect("unpersist");
            drop(q);
            let mut name = [0u8; libc::IFNAMSIZ];
            name[..8].copy_from_slice(b"tuntest0");
            // Gone with the last close of its queues. That close can come a little after
            // ours: a process another test thread spawns holds a copy of every descriptor
            // from its fork until its exec (close-on-exec closes it only then).
            let started = std::time::Instant::now();
            while if_index(&name).is_ok() {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "still there after the last close"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
        .join()
        .expect("test thread");
    }
}
