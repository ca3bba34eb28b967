//! `host-local`: the IPAM plugin binary (logic in `plugins::host_local`).

fn main() -> std::process::ExitCode {
    cni_spec::plugin::run(&plugins::host_local::HostLocal)
}
