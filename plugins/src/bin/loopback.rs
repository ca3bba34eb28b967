//! The `loopback` CNI plugin.
fn main() -> std::process::ExitCode {
    cni_spec::plugin::run(&plugins::loopback::Loopback)
}
