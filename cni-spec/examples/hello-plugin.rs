//! A complete CNI plugin: it adds a route to every result it is chained after, and keeps
//! no state. Build: `cargo build --example hello-plugin`; see docs/cni-spec.md.
use cni_spec::{Error, Plugin, Request, Route, SuccessResult, plugin};

struct Hello;

impl Plugin for Hello {
    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        let mut result = req.prev_result()?.unwrap_or_default();
        let dst = req.config.extra.get("route").and_then(|v| v.as_str()).unwrap_or("0.0.0.0/0");
        let dst = dst.parse().map_err(|e| Error::invalid_config("route", e))?;
        result.routes.push(Route::new(dst, None));
        Ok(result)
    }
    fn del(&self, _req: &Request) -> Result<(), Error> {
        Ok(()) // nothing to undo: DEL must succeed
    }
    fn check(&self, req: &Request) -> Result<(), Error> {
        req.prev_result()?.map(drop).ok_or_else(|| Error::invalid_config("prevResult", "missing"))
    }
}

fn main() -> std::process::ExitCode {
    plugin::run(&Hello)
}
