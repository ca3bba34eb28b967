//! The `bandwidth` CNI plugin.
fn main() -> std::process::ExitCode {
    cni_spec::plugin::run(&plugins::bandwidth::Bandwidth)
}
