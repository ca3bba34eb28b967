//! Offload settings through the ethtool ioctl.

use std::os::fd::AsRawFd;

use crate::error::{KernelError, Result};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool(ifname: &str, value: &mut EthtoolValue) -> Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(KernelError::InvalidName { name: ifname.into(), why: "not an interface name" });
    }
    // An ioctl socket acts in the namespace of the thread that made it.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")
        .or_else(|_| std::net::UdpSocket::bind("[::]:0"))
        .map_err(KernelError::io("opening an ioctl socket"))?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: value, _pad: [0; 16] };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq whose data pointer outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(KernelError::io(format!("ethtool ioctl on {ifname}"))(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether transmit checksum offload is on.
pub fn tx_checksum(ifname: &str) -> Result<bool> {
    let mut v = EthtoolValue { cmd: ETHTOOL_GTXCSUM, data: 0 };
    ethtool(ifname, &mut v)?;
    Ok(v.data != 0)
}

/// Turns transmit checksum offload on or off (`ethtool -K <if> tx on|off`).
pub fn set_tx_checksum(ifname: &str, on: bool) -> Result<()> {
    let mut v = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: on as u32 };
    ethtool(ifname, &mut v)
}
