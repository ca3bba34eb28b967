//! The `firewall` CNI plugin.
fn main() -> std::process::ExitCode {
    cni_spec::plugin::run(&plugins::firewall::Firewall)
}
