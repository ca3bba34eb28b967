//! The Container Network Interface specification, 0.1.0 to 1.1.0, for plugin writers and
//! runtimes.
//!
//! - [`config`]: network config lists and plugin configs, unknown keys passed through.
//! - [`result`]: success results of every version and the conversions between them.
//! - [`error`]: the error object and its well-known codes.
//! - [`version`]: versions, feature gates, negotiation, the `VERSION` reply.
//! - [`env`]: the `CNI_*` environment, validated.
//! - [`input`]: reading stdin and the environment, every fault in its class (the codes).
//! - [`parse`]: strict parsers for addresses, prefixes, MACs, interface names, paths.
//! - [`plugin`]: the entry point for a plugin binary.
//! - [`delegate`]: running another plugin (IPAM) from a plugin.
//! - [`runtime`]: running a network list as libcni does, with its result cache.
//!
//! A whole plugin:
//!
//! ```no_run
//! use cni_spec::{plugin, Error, Interface, Plugin, Request, SuccessResult};
//!
//! struct Tag;
//! impl Plugin for Tag {
//!     fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
//!         let mut result = req.prev_result()?.unwrap_or_default();
//!         result.interfaces.push(Interface::new(&req.env.ifname));
//!         Ok(result)
//!     }
//!     fn del(&self, _: &Request) -> Result<(), Error> { Ok(()) }
//!     fn check(&self, _: &Request) -> Result<(), Error> { Ok(()) }
//! }
//! fn main() -> std::process::ExitCode { plugin::run(&Tag) }
//! ```

#![forbid(unsafe_code)]

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod exec;
pub mod input;
mod json;
pub mod parse;
pub mod plugin;
pub mod result;
pub mod runtime;
pub mod version;

pub use config::{Dns, NetConf, NetConfList};
pub use env::{CniArgs, Command, Environment};
pub use error::{Code, Error};
pub use plugin::{Plugin, Request};
pub use result::{Interface, IpConfig, Route, SuccessResult};
pub use version::Version;
