//! The `bridge` CNI plugin.
fn main() -> std::process::ExitCode {
    cni_spec::plugin::run(&plugins::bridge::Bridge)
}
