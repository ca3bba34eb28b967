//! The `vxlan` plugin (the role of flannel's CNI plugin): it asks the node daemon for the
//! node's subnet(s), the cluster network(s), the MTU and the masquerade setting, builds a
//! bridge + host-local config from them, saves it, and delegates every command to it.
//!
//! The saved config makes DEL independent of the daemon: a pod can be torn down while the
//! daemon is down or after the network config changed.

pub mod error;
pub mod http;
mod saved;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use cni_spec::delegate::Delegate;
use cni_spec::{Error, Plugin, Request, SuccessResult, parse};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use self::error::VxlanError;
use self::saved::SavedConfigs;

/// The daemon's socket, unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/overlayd/overlayd.sock";
/// Where delegate configs are saved, unless the config says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vxlan";
/// Where flannel's CNI plugin saved its delegate configs (its `dataDir` default).
pub const FLANNEL_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The plugin's own options.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Options {
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    /// Keys for the delegate; they win over what the plugin derives (but not `name`, `ipam`).
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
    /// Extra IPAM routes for the pods.
    #[serde(default)]
    routes: Option<Vec<cni_spec::Route>>,
    /// host-local's `dataDir` (its default otherwise); lets several nodes share one machine.
    #[serde(default)]
    ipam_data_dir: Option<PathBuf>,
    /// flannel's CNI plugin's `dataDir`: where DEL (and CHECK) look for the delegate config
    /// of a pod attached under flannel, when there is none of ours.
    #[serde(default)]
    flannel_data_dir: Option<PathBuf>,
}

/// What the daemon tells a plugin (`GET /v1/cni`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// The daemon holds a lease and has programmed the datapath.
    pub ready: bool,
    /// The node's IPv4 pod subnet.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// The node's IPv6 pod subnet.
    #[serde(default)]
    pub ipv6_subnet: Option<IpNet>,
    /// The cluster's IPv4 network.
    #[serde(default)]
    pub network: Option<IpNet>,
    /// The cluster's IPv6 network.
    #[serde(default)]
    pub ipv6_network: Option<IpNet>,
    /// The pods' MTU.
    pub mtu: u32,
    /// Whether the daemon masquerades pod traffic itself (then the bridge must not).
    pub ip_masq: bool,
}

/// The plugin.
pub struct Vxlan;

impl Options {
    /// Reads and validates the options; everything a later step would trip on is refused
    /// here, before the daemon is asked or a file is written.
    fn load(req: &Request) -> Result<Self, VxlanError> {
        let o: Options = req.parse_config()?;
        cni_spec::input::refuse_case_variants(
            &req.config.extra,
            &["socket", "dataDir", "delegate", "routes", "ipamDataDir", "flannelDataDir"],
            "",
        )?;
        if let Some(d) = &o.delegate {
            for key in ["name", "ipam"] {
                if d.contains_key(key) {
                    return Err(VxlanError::config(
                        format!("delegate.{key}"),
                        "must not be set: the plugin sets it",
                    ));
                }
            }
            match d.get("type") {
                None => {}
                Some(Value::String(t)) => {
                    parse::plugin_name(t).map_err(|e| VxlanError::config("delegate.type", e))?;
                }
                Some(other) => {
                    return Err(VxlanError::config(
                        "delegate.type",
                        format!("must be a string, got {other}"),
                    ));
                }
            }
        }
        for (field, path) in [
            ("socket", &o.socket),
            ("dataDir", &o.data_dir),
            ("ipamDataDir", &o.ipam_data_dir),
            ("flannelDataDir", &o.flannel_data_dir),
        ] {
            if let Some(p) = path {
                parse::abs_path(&p.to_string_lossy()).map_err(|e| VxlanError::config(field, e))?;
            }
        }
        for (i, r) in o.routes.iter().flatten().enumerate() {
            if let Some(gw) = r.gw
                && gw.is_ipv4() != r.dst.addr().is_ipv4()
            {
                return Err(VxlanError::config(
                    format!("routes[{i}].gw"),
                    format!("{gw} is not of the family of {}", r.dst),
                ));
            }
        }
        // Saved configs are files named after the network and the attachment.
        let net = req.network_name()?;
        parse::file_name(net).map_err(|e| VxlanError::config("name", e))?;
        if req.env.command.is_per_container() {
            let file = SavedConfigs::file_name(&req.env.container_id, &req.env.ifname);
            if parse::file_name(&file).is_err() {
                return Err(VxlanError::Env {
                    var: "CNI_CONTAINERID",
                    why: "too long: the saved config's file name must fit in 255 bytes".into(),
                });
            }
        }
        Ok(o)
    }

    fn socket(&self) -> &Path {
        self.socket.as_deref().unwrap_or(Path::new(DEFAULT_SOCKET))
    }

    fn saved(&self) -> SavedConfigs {
        SavedConfigs::new(self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)))
    }

    fn flannel(&self) -> saved::FlannelSaved {
        saved::FlannelSaved::new(
            self.flannel_data_dir.clone().unwrap_or_else(|| PathBuf::from(FLANNEL_DATA_DIR)),
        )
    }

    fn delegate_type(&self) -> String {
        self.delegate
            .as_ref()
            .and_then(|d| d.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("bridge")
            .to_string()
    }
}

/// Asks the daemon, with brief retries; code 11 (try again later) if it never answers.
fn ask_daemon(socket: &Path) -> Result<NodeInfo, VxlanError> {
    let mut last = String::new();
    for attempt in 0..5u32 {
        if attempt > 0 {
            thread::sleep(Duration::from_millis(100 << attempt));
        }
        match http::get(socket, "/v1/cni", Duration::from_secs(2)) {
            Ok((200, body)) => {
                return serde_json::from_slice(&body).map_err(|e| {
                    VxlanError::Decode(format!("the node daemon's answer is not understood: {e}"))
                });
            }
            Ok((status, body)) => {
                last = format!("status {status}: {}", String::from_utf8_lossy(&body).trim())
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(VxlanError::TryAgain(format!("the node daemon (overlayd) does not answer: {last}")))
}

/// The delegate config, as flannel's plugin builds it: bridge + host-local over the node's
/// subnets, a route per cluster network, the daemon's MTU; the user's `delegate` keys win.
fn delegate_config(req: &Request, opts: &Options, node: &NodeInfo) -> Result<Value, VxlanError> {
    let mut ranges = Vec::new();
    let mut routes: Vec<Value> =
        opts.routes.iter().flatten().map(|r| serde_json::to_value(r).expect("routes serialize")).collect();
    for (subnet, network) in [(node.subnet, node.network), (node.ipv6_subnet, node.ipv6_network)] {
        if let Some(s) = subnet {
            ranges.push(json!([{ "subnet": s.trunc().to_string() }]));
        }
        if let Some(n) = network {
            routes.push(json!({ "dst": n.trunc().to_string() }));
        }
    }
    if ranges.is_empty() {
        return Err(VxlanError::TryAgain("the node daemon has no subnet for this node yet".into()));
    }
    let kind = opts.delegate_type();
    let mut conf = json!({
        "cniVersion": req.version.as_str(),
        "name": req.network_name()?,
        "type": kind,
        "ipMasq": !node.ip_masq,
        "mtu": node.mtu,
    });
    if kind == "bridge" {
        // Pods reach the cluster through the overlay routes, and everything else through the
        // node (masqueraded by the daemon): the bridge is their default gateway.
        conf["isGateway"] = json!(true);
        conf["isDefaultGateway"] = json!(true);
    }
    if let Some(user) = &opts.delegate {
        for (k, v) in user {
            conf[k] = v.clone();
        }
    }
    if let Some(rc) = &req.config.runtime_config {
        conf["runtimeConfig"] = serde_json::to_value(rc).expect("runtime config serializes");
    }
    if let Some(caps) = &req.config.capabilities {
        conf["capabilities"] = json!(caps);
    }
    conf["ipam"] = json!({ "type": "host-local", "ranges": ranges, "routes": routes });
    if let Some(dir) = &opts.ipam_data_dir {
        conf["ipam"]["dataDir"] = json!(dir);
    }
    Ok(conf)
}

/// The saved config with this request's `prevResult` (CHECK, DEL) put in.
fn with_prev_result(saved: &[u8], req: &Request) -> Result<Vec<u8>, VxlanError> {
    let mut conf: Value = serde_json::from_slice(saved)
        .map_err(|e| VxlanError::Decode(format!("the saved delegate config is damaged: {e}")))?;
    if let Some(prev) = &req.config.prev_result {
        conf["prevResult"] = prev.clone();
    }
    Ok(serde_json::to_vec(&conf).expect("configs serialize"))
}

impl Plugin for Vxlan {
    fn about(&self) -> String {
        "vxlan: attach pods to the overlay network of overlayd".into()
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

fn add(req: &Request) -> Result<SuccessResult, VxlanError> {
    let opts = Options::load(req)?;
    let delegate = Delegate::for_request(req, &opts.delegate_type());
    delegate.locate("delegate.type")?;
    let node = ask_daemon(opts.socket())?;
    let conf = serde_json::to_vec(&delegate_config(req, &opts, &node)?).expect("configs serialize");
    let saved = opts.saved();
    let (net, cid, ifname) = (req.network_name()?, &req.env.container_id, &req.env.ifname);
    // Saved before the delegate runs: if ADD is killed half-way, the runtime's DEL needs it.
    let created = saved.store(net, cid, ifname, &conf)?;
    match delegate.add(&conf) {
        Ok(result) => Ok(result),
        Err(e) => {
            // The delegate undid its own work: nothing is left for a DEL to find.
            saved.forget(net, cid, ifname, &created);
            Err(name_user_delegate_field(e, &opts).into())
        }
    }
}

/// A config error of the delegate about a key the user set in `delegate` names it as the
/// user wrote it: `delegate.bridge`, not `bridge`.
fn name_user_delegate_field(mut e: Error, opts: &Options) -> Error {
    const PREFIX: &str = "invalid network config: ";
    let Some(user) = &opts.delegate else { return e };
    if e.code == cni_spec::Code::InvalidConfig as u32
        && let Some(rest) = e.msg.strip_prefix(PREFIX)
    {
        let key = rest.split(['.', '[', ':']).next().unwrap_or_default();
        if user.contains_key(key) {
            e.msg = format!("{PREFIX}delegate.{rest}");
        }
    }
    e
}

fn del(req: &Request) -> Result<(), VxlanError> {
    let opts = Options::load(req)?;
    let saved = opts.saved();
    let (net, cid, ifname) = (req.network_name()?, &req.env.container_id, &req.env.ifname);
    let Some(conf) = saved.load(net, cid, ifname)? else {
        return del_flannel(req, &opts); // ours never saw it: flannel's, or nothing
    };
    let kind = serde_json::from_slice::<Value>(&conf)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| opts.delegate_type());
    Delegate::for_request(req, &kind).del(&with_prev_result(&conf, req)?)?;
    saved.remove(net, cid, ifname)
}

/// DEL of a pod attached by flannel's CNI plugin before the node moved to overlayd: its
/// saved delegate config (`<flannel dataDir>/<containerID>`, exactly the bytes flannel gave
/// its delegate) goes to that delegate unchanged, as flannel's own DEL does, so the
/// delegate's IPAM frees the pod's addresses; the file goes once that succeeded. As in
/// flannel, a file that does not parse is left alone (and said so): failing would make the
/// runtime retry the DEL for ever.
fn del_flannel(req: &Request, opts: &Options) -> Result<(), VxlanError> {
    let flannel = opts.flannel();
    let cid = &req.env.container_id;
    let Some(conf) = flannel.load(cid)? else {
        return Ok(()); // nothing was set up, or DEL already ran
    };
    let Some(kind) = serde_json::from_slice::<Value>(&conf)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
        .filter(|t| parse::plugin_name(t).is_ok())
    else {
        eprintln!(
            "vxlan: flannel's saved config {} is damaged; left in place, nothing released",
            flannel.path(cid).display()
        );
        return Ok(());
    };
    Delegate::for_request(req, &kind).del(&conf)?;
    flannel.remove(cid)
}

fn check(req: &Request) -> Result<(), VxlanError> {
    let opts = Options::load(req)?;
    let Some(conf) = opts.saved().load(req.network_name()?, &req.env.container_id, &req.env.ifname)? else {
        // A pod flannel attached: flannel's CHECK checked nothing, and neither do we.
        if opts.flannel().load(&req.env.container_id)?.is_some() {
            return Ok(());
        }
        return Err(VxlanError::Unknown("no saved config: this attachment was never added".into()));
    };
    Ok(Delegate::for_request(req, &opts.delegate_type()).check(&with_prev_result(&conf, req)?)?)
}

fn status(req: &Request) -> Result<(), VxlanError> {
    let opts = Options::load(req)?;
    let node = match http::get(opts.socket(), "/v1/cni", Duration::from_secs(2)) {
        Ok((200, body)) => serde_json::from_slice::<NodeInfo>(&body).ok(),
        _ => None,
    };
    match node {
        Some(n) if n.ready => {
            let conf = serde_json::to_vec(&delegate_config(req, &opts, &n)?).expect("configs serialize");
            Ok(Delegate::for_request(req, &opts.delegate_type()).status(&conf)?)
        }
        _ => Err(VxlanError::NotAvailable("the node daemon (overlayd) is not ready".into())),
    }
}

fn gc(req: &Request) -> Result<(), VxlanError> {
    let opts = Options::load(req)?;
    // No list is not "nothing is valid": GC would reclaim every attachment.
    let valid = req.valid_attachments()?.ok_or_else(|| {
        VxlanError::config(
            cni_spec::plugin::VALID_ATTACHMENTS_KEY,
            "missing (GC needs the list of valid attachments)",
        )
    })?;
    let saved = opts.saved();
    let net = req.network_name()?;
    let mut errors = Vec::new();
    // Stale attachments first: DEL with their own saved config.
    for (cid, ifname) in saved.attachments(net)? {
        if valid.iter().any(|a| a.container_id == cid && a.ifname == ifname) {
            continue;
        }
        if let Some(conf) = saved.load(net, &cid, &ifname)? {
            let mut env = req.env.clone();
            env.container_id = cid.clone();
            env.ifname = ifname.clone();
            env.netns = None;
            match Delegate::new(&opts.delegate_type(), env, req.version).del(&conf) {
                Ok(()) => saved.remove(net, &cid, &ifname)?,
                Err(e) => errors.push(format!("{cid}/{ifname}: {e}")),
            }
        }
    }
    // Then GC to the delegate, with any saved config of this network (or none left).
    let template =
        saved.attachments(net)?.into_iter().find_map(|(c, i)| saved.load(net, &c, &i).ok().flatten());
    if let Some(conf) = template {
        let mut v: Value = serde_json::from_slice(&conf).unwrap_or_default();
        for key in [cni_spec::plugin::VALID_ATTACHMENTS_KEY, cni_spec::plugin::LEGACY_ATTACHMENTS_KEY] {
            v[key] = serde_json::to_value(&valid).expect("attachments serialize");
        }
        if let Err(e) =
            Delegate::for_request(req, &opts.delegate_type()).gc(&serde_json::to_vec(&v).expect("serializes"))
        {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(VxlanError::Many(errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_spec::Environment;

    fn req(conf: &str) -> Request {
        let env = Environment::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_NETNS" => Some("/run/netns/x".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            _ => None,
        })
        .unwrap();
        Request::new(env, conf.as_bytes().to_vec()).unwrap()
    }

    fn node() -> NodeInfo {
        NodeInfo {
            ready: true,
            subnet: Some("10.1.17.1/24".parse().unwrap()),
            ipv6_subnet: Some("fd00:1:0:11::/64".parse().unwrap()),
            network: Some("10.1.0.0/16".parse().unwrap()),
            ipv6_network: Some("fd00:1::/56".parse().unwrap()),
            mtu: 1450,
            ip_masq: true,
        }
    }

    #[test]
    fn delegate_config_is_flannels() {
        let r = req(r#"{"cniVersion":"1.0.0","name":"mynet","type":"vxlan"}"#);
        let opts = Options::load(&r).unwrap();
        let c = delegate_config(&r, &opts, &node()).unwrap();
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["name"], "mynet");
        assert_eq!(c["mtu"], 1450);
        assert_eq!(c["ipMasq"], false);
        assert_eq!(c["isGateway"], true);
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.1.17.0/24");
        assert_eq!(c["ipam"]["ranges"][1][0]["subnet"], "fd00:1:0:11::/64");
        assert_eq!(c["ipam"]["routes"], json!([{"dst": "10.1.0.0/16"}, {"dst": "fd00:1::/56"}]));
    }

    #[test]
    fn user_delegate_keys_win_but_not_name_or_ipam() {
        let r = req(
            r#"{"cniVersion":"1.0.0","name":"n","type":"vxlan","delegate":{"bridge":"mynet0","mtu":1400,"isGateway":false}}"#,
        );
        let c = delegate_config(&r, &Options::load(&r).unwrap(), &node()).unwrap();
        assert_eq!(
            (c["bridge"].as_str(), c["mtu"].as_u64(), c["isGateway"].as_bool()),
            (Some("mynet0"), Some(1400), Some(false))
        );
        for bad in [r#"{"name":"x"}"#, r#"{"ipam":{}}"#] {
            let r = req(&format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"vxlan","delegate":{bad}}}"#));
            let e = Error::from(Options::load(&r).unwrap_err());
            assert_eq!(e.code, 7);
            assert!(e.msg.contains("delegate."), "{e}");
        }
    }

    #[test]
    fn no_subnet_yet_is_try_again() {
        let r = req(r#"{"cniVersion":"1.0.0","name":"n","type":"vxlan"}"#);
        let mut n = node();
        n.subnet = None;
        n.ipv6_subnet = None;
        assert_eq!(delegate_config(&r, &Options::load(&r).unwrap(), &n).unwrap_err().code(), 11);
    }

    #[test]
    fn unreachable_daemon_is_code_11() {
        let e = ask_daemon(Path::new("/nonexistent/overlayd.sock")).unwrap_err();
        assert_eq!(e.code(), 11);
    }
}
