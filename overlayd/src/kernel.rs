//! How async code does blocking kernel work: through [`blocking`], on a handle its owner
//! opened once (the backend's reconciler, the encryption controller and the readiness probe
//! each have their own `netkernel::Netlink`). One mechanism, so a reader never wonders which
//! rule applies: the runtime hands the worker's other tasks on while the call blocks.

/// Runs `f`, which may block on the kernel, from async code.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
