//! The `portmap` CNI plugin.
fn main() -> std::process::ExitCode {
    cni_spec::plugin::run(&plugins::portmap::Portmap)
}
