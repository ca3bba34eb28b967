//! Delegation (spec §4): a plugin runs another plugin (usually IPAM) found in `CNI_PATH`,
//! with the same environment, `CNI_COMMAND` overridden, and the complete config on stdin.
//!
//! ```no_run
//! # fn f(req: &cni_spec::Request) -> Result<(), cni_spec::Error> {
//! use cni_spec::delegate::Delegate;
//! let ipam = Delegate::for_request(req, "host-local");
//! let added = ipam.add_guarded(&req.raw)?;     // DEL runs on drop unless kept
//! // ... configure the interface with added.result().ips ...
//! let result = added.keep();
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use crate::env::{Command, Environment};
use crate::error::Error;
use crate::exec::{Invocation, find_plugin};
use crate::plugin::Request;
use crate::result::SuccessResult;
use crate::version::Version;

/// Set to `1` in the environment of the DEL with which [`Added`] rolls back a delegate's
/// ADD after a later step of the same invocation failed. A delegate that can undo its ADD
/// exactly (host-local puts its round-robin position and index back) does so; any other
/// plugin ignores it and deletes as usual.
///
/// ```
/// assert_eq!(cni_spec::delegate::ROLLBACK_ENV, "FERROCNI_ROLLBACK");
/// ```
pub const ROLLBACK_ENV: &str = "FERROCNI_ROLLBACK";

/// A delegated plugin, bound to the caller's environment.
#[derive(Debug, Clone)]
pub struct Delegate {
    plugin: String,
    env: Environment,
    version: Version,
}

impl Delegate {
    /// A delegate `plugin` (a binary name) called with `env`; results are read as `version`
    /// when the delegate's output carries none.
    pub fn new(plugin: &str, env: Environment, version: Version) -> Self {
        Delegate { plugin: plugin.to_string(), env, version }
    }

    /// A delegate for the current request.
    pub fn for_request(req: &Request, plugin: &str) -> Self {
        Delegate::new(plugin, req.env.clone(), req.version)
    }

    /// The delegate's binary name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Finds the delegate's binary before anything is done with it, telling whose fault a
    /// miss is: when no directory of `CNI_PATH` exists (or it is empty) the environment is
    /// wrong (code 4 naming `CNI_PATH`); when they exist but none holds the plugin, the
    /// config names a plugin that is not installed (code 7 naming `field`).
    ///
    /// ```
    /// use cni_spec::{Command, Environment, Version, delegate::Delegate};
    /// let env = Environment::new(Command::Add).with_path(&["/".into()]);
    /// let e = Delegate::new("no-such-ipam", env, Version::V1_0_0).locate("ipam.type").unwrap_err();
    /// assert_eq!((e.code, e.msg.contains("ipam.type")), (7, true));
    /// let env = Environment::new(Command::Add).with_path(&["/nonexistent".into()]);
    /// assert_eq!(Delegate::new("host-local", env, Version::V1_0_0).locate("ipam.type").unwrap_err().code, 4);
    /// ```
    pub fn locate(&self, field: &str) -> Result<PathBuf, Error> {
        if let Err(why) = crate::parse::plugin_name(&self.plugin) {
            return Err(Error::invalid_config(field, why));
        }
        match find_plugin(&self.plugin, &self.env.path) {
            Ok(p) => Ok(p),
            Err(e) if self.env.path.iter().any(|d| d.is_dir()) => {
                Err(Error::invalid_config(field, e.msg.trim_start_matches("CNI_PATH: ")))
            }
            Err(e) => Err(e),
        }
    }

    fn call(&self, command: Command, config: &[u8]) -> Result<Vec<u8>, Error> {
        self.call_with(command, config, &[])
    }

    fn call_with(&self, command: Command, config: &[u8], extra: &[(&str, &str)]) -> Result<Vec<u8>, Error> {
        let binary: PathBuf = find_plugin(&self.plugin, &self.env.path)?;
        let inv = Invocation { command, ..self.env.clone() };
        inv.run_with(&binary, config, extra)
    }

    /// DEL that rolls back this invocation's ADD (with [`ROLLBACK_ENV`] set); what
    /// [`Added`] does on drop.
    ///
    /// ```no_run
    /// # fn f(req: &cni_spec::Request) -> Result<(), cni_spec::Error> {
    /// let ipam = cni_spec::delegate::Delegate::for_request(req, "host-local");
    /// let result = ipam.add(&req.raw)?;
    /// // ... a later step fails:
    /// ipam.rollback(&req.raw)?;
    /// # Ok(()) }
    /// ```
    pub fn rollback(&self, config: &[u8]) -> Result<(), Error> {
        self.call_with(Command::Del, config, &[(ROLLBACK_ENV, "1")]).map(drop)
    }

    /// ADD: returns the delegate's result.
    pub fn add(&self, config: &[u8]) -> Result<SuccessResult, Error> {
        let out = self.call(Command::Add, config)?;
        SuccessResult::from_slice(&out, self.version)
    }

    /// ADD, returning a guard that calls DEL when dropped unless [`Added::keep`] is called:
    /// the spec's "call DEL on the delegate if ADD fails after it".
    pub fn add_guarded<'a>(&'a self, config: &'a [u8]) -> Result<Added<'a>, Error> {
        let result = self.add(config)?;
        Ok(Added { delegate: self, config, result: Some(result) })
    }

    /// DEL.
    pub fn del(&self, config: &[u8]) -> Result<(), Error> {
        self.call(Command::Del, config).map(drop)
    }

    /// CHECK.
    pub fn check(&self, config: &[u8]) -> Result<(), Error> {
        self.call(Command::Check, config).map(drop)
    }

    /// STATUS.
    pub fn status(&self, config: &[u8]) -> Result<(), Error> {
        self.call(Command::Status, config).map(drop)
    }

    /// GC.
    pub fn gc(&self, config: &[u8]) -> Result<(), Error> {
        self.call(Command::Gc, config).map(drop)
    }
}

/// A successful delegated ADD that is undone (DEL) on drop unless kept.
#[derive(Debug)]
pub struct Added<'a> {
    delegate: &'a Delegate,
    config: &'a [u8],
    result: Option<SuccessResult>,
}

impl Added<'_> {
    /// The delegate's result.
    pub fn result(&self) -> &SuccessResult {
        self.result.as_ref().expect("present until kept")
    }

    /// Keeps the delegate's work and returns its result.
    pub fn keep(mut self) -> SuccessResult {
        self.result.take().expect("present until kept")
    }
}

impl Drop for Added<'_> {
    fn drop(&mut self) {
        if self.result.is_some()
            && let Err(e) = self.delegate.rollback(self.config)
        {
            eprintln!("rolling back {} ADD after a failure: DEL failed too: {e}", self.delegate.plugin);
        }
    }
}
