//! The plugins' logic; each binary in `src/bin/` is a thin `main` over one module.

pub mod bridge;
pub mod fsutil;
pub mod host_local;
pub mod vxlan;

/// Maps a kernel error to a CNI error (code 999 with what was being done), for `map_err`.
#[allow(dead_code)]
pub(crate) fn kernel_error(
    what: impl std::fmt::Display,
) -> impl Fn(netkernel::KernelError) -> cni_spec::Error {
    move |e| cni_spec::Error::internal(format!("{what}: {e}"))
}
