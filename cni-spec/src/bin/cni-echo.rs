//! `cni-echo`: a small plugin for testing runtimes. It records every invocation as one JSON
//! line in `logFile`, and on ADD hands on `prevResult` with an interface named `tag` (and
//! the address `ip`, if set) appended. `failOn: ["ADD", ...]` makes those commands fail with
//! code `failCode` (default 100); `panicOn` makes them panic; `notReady` makes STATUS
//! answer code 50. CHECK fails unless `prevResult` holds the `tag` interface.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;

use cni_spec::plugin::{self, Plugin, Request};
use cni_spec::{Code, Error, Interface, IpConfig, SuccessResult};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Options {
    tag: String,
    ip: Option<ipnet::IpNet>,
    log_file: Option<String>,
    fail_on: Vec<String>,
    fail_code: Option<u32>,
    panic_on: Vec<String>,
    not_ready: bool,
}

struct Echo;

impl Echo {
    fn start(&self, req: &Request) -> Result<Options, Error> {
        let opts: Options = req.parse_config()?;
        let command = req.env.command.as_str();
        if let Some(path) = &opts.log_file {
            let line = json!({
                "command": command,
                "tag": opts.tag,
                "containerID": req.env.container_id,
                "ifname": req.env.ifname,
                "cniVersion": req.version.as_str(),
                "config": serde_json::from_slice::<serde_json::Value>(&req.raw).unwrap_or_default(),
            });
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening {path}"), &e))?;
            writeln!(f, "{line}").map_err(|e| Error::io(format!("writing {path}"), &e))?;
        }
        if opts.panic_on.iter().any(|c| c == command) {
            panic!("cni-echo was told to panic on {command}");
        }
        if opts.fail_on.iter().any(|c| c == command) {
            let code = opts.fail_code.unwrap_or(100);
            return Err(Error::with_code(code, format!("cni-echo was told to fail {command}")));
        }
        Ok(opts)
    }
}

impl Plugin for Echo {
    fn about(&self) -> String {
        "cni-echo: a CNI test plugin".into()
    }

    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        let opts = self.start(req)?;
        let mut result = req.prev_result()?.unwrap_or_default();
        result.interfaces.push(Interface::new(&opts.tag));
        if let Some(ip) = opts.ip {
            let mut ip = IpConfig::new(ip);
            ip.interface = Some(result.interfaces.len() - 1);
            result.ips.push(ip);
        }
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        self.start(req).map(drop)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let opts = self.start(req)?;
        let prev =
            req.prev_result()?.ok_or_else(|| Error::invalid_config("prevResult", "missing on CHECK"))?;
        if prev.interfaces.iter().any(|i| i.name == opts.tag) {
            Ok(())
        } else {
            Err(Error::with_code(101, format!("interface {:?} not in prevResult", opts.tag)))
        }
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let opts = self.start(req)?;
        if opts.not_ready { Err(Error::new(Code::NotAvailable, "cni-echo is not ready")) } else { Ok(()) }
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        self.start(req)?;
        req.valid_attachments().map(drop)
    }
}

fn main() -> ExitCode {
    plugin::run(&Echo)
}
