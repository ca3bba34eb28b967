//! `host-local`: IP address management from local ranges, with leases on the local disk.
//! A drop-in for the reference plugin (same config, same on-disk store), which adds STATUS
//! and GC (spec 1.1.0), CHECK against `prevResult`, and an ADD whose cost does not grow
//! with the number of leases.
//!
//! - [`config`] – the configuration, validated before anything touches the disk;
//! - [`range`] – ranges and range sets;
//! - [`allocator`] – the round-robin walk;
//! - [`store`] – the lease directory and its lock; [`index`] – the cache that keeps ADD flat;
//! - [`dns`] – `resolvConf`;
//! - [`error`] – errors and their CNI codes.

pub mod allocator;
pub mod config;
pub mod dns;
pub mod error;
pub mod index;
pub mod range;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;

use cni_spec::plugin::Attachment;
use cni_spec::{Dns, Error, Plugin, Request, SuccessResult};

use self::config::Config;
use self::error::HostLocalError;
use self::index::Owner;
use self::store::{Find, Store};

/// The plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLocal;

impl Plugin for HostLocal {
    fn about(&self) -> String {
        "host-local: IP address management from local ranges (CNI IPAM plugin)".into()
    }

    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        add(req).map_err(Error::from)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        del(req).map_err(Error::from)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        check(req).map_err(Error::from)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        status(req).map_err(Error::from)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc(req).map_err(Error::from)
    }
}

fn attachment(req: &Request) -> Attachment {
    Attachment::new(&req.env.container_id, &req.env.ifname)
}

/// One address from each range set, in set order.
pub fn add(req: &Request) -> Result<SuccessResult, HostLocalError> {
    // Everything that can be refused is refused before the directory is created.
    let cfg = Config::load(&req.config, req.version)?;
    let requested = cfg.requested(&req.config, &req.env.args)?;
    let dns = match &cfg.resolv_conf {
        Some(path) => dns::read(path)?,
        None => Dns::default(),
    };
    let me = attachment(req);

    let mut store = Store::open(&cfg.dir(), true).map_err(|e| e.data_dir_fault())?.expect("created");
    // First an address for every range set, then the leases: a set that cannot give one
    // fails the ADD before anything is written.
    let mut picks = Vec::with_capacity(cfg.sets.len());
    for (i, set) in cfg.sets.iter().enumerate() {
        match allocator::pick(&mut store, i, set, &me, requested[i]) {
            Ok(ip) => picks.push(ip),
            Err(e) => {
                store.abandon();
                return Err(e);
            }
        }
    }
    let mut result = SuccessResult { routes: cfg.routes.clone(), dns, ..Default::default() };
    for (i, set) in cfg.sets.iter().enumerate() {
        let leased = match store.reserve(picks[i], &me, i) {
            Ok(true) => Ok(allocator::config_for(set, picks[i])),
            // Taken since the look (a writer that does not lock): allocate again.
            Ok(false) => allocator::allocate(&mut store, i, set, &me, requested[i]),
            Err(e) => Err(e),
        };
        match leased {
            Ok(ip) => result.ips.push(ip),
            Err(e) => {
                // Give back exactly what this ADD took; earlier leases stay.
                for ip in &result.ips {
                    if let Err(undo) = store.release(ip.address.addr()) {
                        eprintln!("host-local: releasing {} after a failed ADD: {undo}", ip.address.addr());
                    }
                }
                store.abandon();
                return Err(e);
            }
        }
    }
    store.commit_add(&me);
    Ok(result)
}

/// Releases the attachment's leases; nothing to release is success.
pub fn del(req: &Request) -> Result<(), HostLocalError> {
    let cfg = Config::load(&req.config, req.version)?;
    let store = match Store::open(&cfg.dir(), false) {
        Ok(s) => s,
        // A data directory that cannot exist (a file in its path, a name too long) holds
        // nothing to release.
        Err(e) if e.is_unusable_path() => None,
        Err(e) => return Err(e),
    };
    let Some(mut store) = store else { return Ok(()) };
    // The DEL that rolls back an ADD of this same invocation (a plugin whose later step
    // failed): put the store back exactly as it was, round-robin position included.
    if rolling_back() && store.rollback_add(&attachment(req)) {
        return Ok(());
    }
    let mine = store.find(&attachment(req), Find::ForRelease);
    let mut errors = Vec::new();
    match mine {
        Ok(ips) => {
            for ip in ips {
                if let Err(e) = store.release(ip) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    store.close();
    collect(errors)
}

/// The attachment holds an address (like the reference), and when `prevResult` lists
/// addresses they agree with the leases: every lease is listed, and every listed address
/// inside one of our subnets is a lease of this attachment.
pub fn check(req: &Request) -> Result<(), HostLocalError> {
    let cfg = Config::load(&req.config, req.version)?;
    let prev = req.prev_result()?;
    let me = attachment(req);
    let not_found = || HostLocalError::NotFound { id: me.container_id.clone() };
    let Some(mut store) = Store::open(&cfg.dir(), false).map_err(|e| e.data_dir_fault())? else {
        return Err(not_found());
    };
    let mut mine = store.find(&me, Find::Any);
    // A failure is worth one full read of the directory before it is reported.
    if matches!(&mine, Ok(ips) if ips.is_empty()) && store.refresh().unwrap_or(false) {
        mine = store.find(&me, Find::Any);
    }
    store.close();
    let mine = mine?;
    if mine.is_empty() {
        return Err(not_found());
    }
    let Some(prev) = prev.filter(|p| !p.ips.is_empty()) else { return Ok(()) };
    let listed: HashSet<IpAddr> = prev.ips.iter().map(|ip| ip.address.addr()).collect();
    if let Some(ip) = mine.iter().find(|ip| !listed.contains(ip)) {
        return Err(HostLocalError::CheckMismatch(format!(
            "{ip} is allocated to container {} but missing from prevResult",
            me.container_id
        )));
    }
    let ours = |ip: &IpAddr| cfg.sets.iter().any(|s| s.ranges.iter().any(|r| r.subnet.contains(ip)));
    if let Some(ip) = listed.iter().find(|ip| ours(ip) && !mine.contains(ip)) {
        return Err(HostLocalError::CheckMismatch(format!(
            "prevResult lists {ip}, which is not allocated to container {} interface {}",
            me.container_id, me.ifname
        )));
    }
    Ok(())
}

/// Ready unless a range set has no free address (code 50). Reads only file names and takes
/// no lock: it is informational.
pub fn status(req: &Request) -> Result<(), HostLocalError> {
    let cfg = Config::load(&req.config, req.version)?;
    let leased = store::leased_addresses(&cfg.dir()).map_err(|e| e.data_dir_fault())?;
    match cfg.sets.iter().enumerate().find(|(_, set)| set.free(&leased) == 0) {
        Some((i, set)) => Err(HostLocalError::NotAvailable { set: i, range: set.to_string() }),
        None => Ok(()),
    }
}

/// Frees every lease that no valid attachment owns: a lease of `id`/`ifname` stays if that
/// attachment is valid, a legacy lease of `id` if any attachment of container `id` is,
/// an empty or unreadable lease never. `lock` and `last_reserved_ip.*` stay.
pub fn gc(req: &Request) -> Result<(), HostLocalError> {
    let valid = req.valid_attachments()?.ok_or_else(|| {
        HostLocalError::config(
            cni_spec::plugin::VALID_ATTACHMENTS_KEY,
            "missing (GC needs the list of valid attachments)",
        )
    })?;
    let cfg = Config::load(&req.config, req.version)?;
    let store = match Store::open(&cfg.dir(), false) {
        Ok(s) => s,
        // Where no store can be, there is nothing to collect.
        Err(e) if e.is_unusable_path() => None,
        Err(e) => return Err(e),
    };
    let Some(mut store) = store else { return Ok(()) };
    let mut errors = Vec::new();
    // GC is the repair path: it never trusts the index.
    let leases = match store.refresh().and_then(|_| store.leases()) {
        Ok(l) => l,
        Err(e) => {
            store.close();
            return Err(e);
        }
    };
    let attachments: HashSet<(&str, &str)> =
        valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let containers: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let keep = |owner: &Owner| match owner {
        Owner::Attachment { id, ifname } => attachments.contains(&(id.as_str(), ifname.as_str())),
        Owner::Legacy { id } => containers.contains(id.as_str()),
        Owner::Unowned => false,
    };
    let stale: Vec<IpAddr> = leases.iter().filter(|(_, o)| !keep(o)).map(|(ip, _)| *ip).collect();
    for ip in stale {
        if let Err(e) = store.release(ip) {
            errors.push(e);
        }
    }
    if let Err(e) = store.remove_temp_files() {
        errors.push(e);
    }
    store.close();
    collect(errors)
}

/// Whether this DEL rolls back a failed ADD (see [`cni_spec::delegate::ROLLBACK_ENV`]).
fn rolling_back() -> bool {
    std::env::var_os(cni_spec::delegate::ROLLBACK_ENV).is_some_and(|v| v == "1")
}

fn collect(mut errors: Vec<HostLocalError>) -> Result<(), HostLocalError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(HostLocalError::Many(errors)),
    }
}
