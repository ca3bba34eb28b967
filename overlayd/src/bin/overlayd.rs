//! The overlay daemon. See `overlayd --help`; every flag also reads `OVERLAYD_<NAME>`, and
//! flanneld's `FLANNELD_<NAME>` when that is unset.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use overlayd::options::{DaemonArgs, LogFormat};

fn main() -> ExitCode {
    let args = DaemonArgs::parse_with_flannel_env();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        // Fields at the top level beside time, level and target: what collectors index.
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).init(),
    }
    // First: without a store there is nothing to do, whatever the underlay.
    if let Err(e) = args.check_store() {
        tracing::error!(error = %e, "no usable store");
        return ExitCode::FAILURE;
    }
    // Before the runtime: the kernel layer runs netlink on a runtime of its own.
    let underlay = match overlayd::underlay::detect(&args.iface_selection(), args.public_ip, args.public_ipv6)
    {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot determine the underlay");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "starting the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(overlayd::daemon::run(args, underlay)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "overlayd failed");
            ExitCode::FAILURE
        }
    }
}
