//! Golden tests on the JSON of the spec and of the Go plugins (reference cni.md §1.4, §1.6,
//! §1.7, §1.3 VERSION, §2.3): parse with the library, check the fields, and check that
//! writing them back gives the same JSON (key order aside; an empty `dns` is omitted, the
//! documented difference from older Go).

use std::net::IpAddr;

use cni_spec::plugin::gate;
use cni_spec::version::VersionInfo;
use cni_spec::{Code, Command, Error, NetConf, SuccessResult, Version};
use serde_json::{Value, json};

/// §1.4: the second plugin of a chain, as the SPEC appendix shows it.
const CHAIN_REQUEST: &str = r#"{"cniVersion":"1.1.0","name":"dbnet","type":"tuning","sysctl":{"net.core.somaxconn":"500"},
 "runtimeConfig":{"mac":"00:11:22:33:44:66"},
 "prevResult":{"ips":[{"address":"10.1.0.5/16","gateway":"10.1.0.1","interface":2}],
  "routes":[{"dst":"0.0.0.0/0"}],
  "interfaces":[{"name":"cni0","mac":"00:11:22:33:44:55"},{"name":"veth3243","mac":"55:44:33:22:11:11"},
                {"name":"eth0","mac":"99:88:77:66:55:44","sandbox":"/var/run/netns/blue"}],
  "dns":{"nameservers":["10.1.0.1"]}}}"#;

/// §1.6: local host-local 1.1.1, cniVersion 0.3.1.
const HOST_LOCAL_031: &str = r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.22.0.3/24","gateway":"10.22.0.1"},
 {"version":"6","address":"fd00:22::3/64","gateway":"fd00:22::1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

/// §1.6: the same request with cniVersion 0.2.0.
const HOST_LOCAL_020: &str = r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.22.0.2/24","gateway":"10.22.0.1","routes":[{"dst":"0.0.0.0/0"}]},
 "ip6":{"ip":"fd00:22::2/64","gateway":"fd00:22::1"},"dns":{}}"#;

/// §2.3: bridge, 0.4.0 (plugins#559).
const BRIDGE_040: &str = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"br0","mac":"ae:c9:d6:c5:04:b9"},{"name":"vethfb73823e","mac":"ca:98:1e:57:c9:07"},
 {"name":"eth0","mac":"0e:ae:b3:f1:fe:3e","sandbox":"/var/run/netns/testing"}],
 "ips":[{"version":"4","interface":2,"address":"10.99.0.2/16","gateway":"10.99.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

/// §1.7: the SPEC's error example.
const ERROR_OBJECT: &str = r#"{"cniVersion":"1.1.0","code":7,"msg":"Invalid Configuration","details":"Network 192.168.0.0/31 too small to allocate from."}"#;

/// §1.7: a local reference plugin's error (no cniVersion, code 999).
const GO_INTERNAL_ERROR: &str =
    r#"{"code":999,"msg":"invalid range set 0: Network 10.9.0.0/31 too small to allocate from"}"#;

/// §1.3: the local Debian plugins' VERSION reply.
const VERSION_REPLY: &str =
    r#"{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}"#;

/// §1.8: a Debian plugin given a 1.1.0 config.
const INCOMPATIBLE: &str = r#"{"code":1,"msg":"incompatible CNI versions","details":"config is \"1.1.0\", plugin supports [\"0.1.0\" \"0.2.0\" \"0.3.0\" \"0.3.1\" \"0.4.0\" \"1.0.0\"]"}"#;

fn value(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// `v` without its `dns` key when that is `{}` (Go 1.1.1 prints it, the library omits it).
fn without_empty_dns(mut v: Value) -> Value {
    if v.get("dns") == Some(&json!({})) {
        v.as_object_mut().unwrap().remove("dns");
    }
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn chain_request_example() {
    let conf = NetConf::parse(CHAIN_REQUEST.as_bytes()).unwrap();
    assert_eq!(conf.version().unwrap(), Version::V1_1_0);
    assert_eq!(conf.network_name().unwrap(), "dbnet");
    assert_eq!(conf.kind, "tuning");
    assert_eq!(conf.extra["sysctl"], json!({"net.core.somaxconn": "500"}));
    assert_eq!(conf.runtime_config.as_ref().unwrap().mac.as_deref(), Some("00:11:22:33:44:66"));
    assert!(conf.ipam_type().is_none());

    // prevResult has no cniVersion: it is read in the config's version.
    let prev = conf.prev_result().unwrap().expect("prevResult is present");
    let names: Vec<&str> = prev.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["cni0", "veth3243", "eth0"]);
    assert_eq!(prev.interfaces[2].sandbox.as_deref(), Some("/var/run/netns/blue"));
    assert_eq!(prev.interfaces[0].sandbox, None);
    assert_eq!(prev.interfaces[1].mac.as_deref(), Some("55:44:33:22:11:11"));
    assert_eq!(prev.ips.len(), 1);
    assert_eq!(prev.ips[0].address.to_string(), "10.1.0.5/16");
    assert_eq!(prev.ips[0].gateway, Some(ip("10.1.0.1")));
    assert_eq!(prev.ips[0].interface, Some(2));
    assert_eq!(prev.routes.len(), 1);
    assert_eq!(prev.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(prev.routes[0].gw, None);
    assert_eq!(prev.dns.nameservers, ["10.1.0.1"]);

    // The whole request writes back as it came.
    assert_eq!(serde_json::to_value(&conf).unwrap(), value(CHAIN_REQUEST));
    // The result writes back in 1.1.0 with its version filled in.
    let mut expected = value(CHAIN_REQUEST)["prevResult"].clone();
    expected["cniVersion"] = "1.1.0".into();
    assert_eq!(prev.to_value(Version::V1_1_0).unwrap(), expected);
}

#[test]
fn host_local_031_output() {
    // Read with a misleading default: its own version decides.
    let r = SuccessResult::from_slice(HOST_LOCAL_031.as_bytes(), Version::V1_1_0).unwrap();
    assert!(r.interfaces.is_empty());
    assert_eq!(r.ips.len(), 2);
    assert!(r.ips[0].is_v4() && !r.ips[1].is_v4());
    assert_eq!(r.ips[0].address.to_string(), "10.22.0.3/24");
    assert_eq!(r.ips[1].gateway, Some(ip("fd00:22::1")));
    assert!(r.ips.iter().all(|i| i.interface.is_none()));
    assert_eq!(r.routes.len(), 1);
    assert!(r.dns.is_empty());
    assert_eq!(r.to_value(Version::V0_3_1).unwrap(), without_empty_dns(value(HOST_LOCAL_031)));
    assert_ne!(r.to_value(Version::V0_3_1).unwrap(), value(HOST_LOCAL_031), "an empty dns is omitted");
}

#[test]
fn host_local_020_output() {
    let r = SuccessResult::from_slice(HOST_LOCAL_020.as_bytes(), Version::V1_0_0).unwrap();
    let addrs: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
    assert_eq!(addrs, ["10.22.0.2/24", "fd00:22::2/64"]);
    assert_eq!(r.ips[0].gateway, Some(ip("10.22.0.1")));
    assert_eq!(r.routes.len(), 1);
    assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(r.to_value(Version::V0_2_0).unwrap(), without_empty_dns(value(HOST_LOCAL_020)));
    // Up to 0.3.1 it has the shape of the 0.3.1 output (with its own addresses).
    let up = r.to_value(Version::V0_3_1).unwrap();
    let expected = HOST_LOCAL_031.replace("10.22.0.3", "10.22.0.2").replace("fd00:22::3", "fd00:22::2");
    assert_eq!(up, without_empty_dns(value(&expected)));
}

#[test]
fn host_local_031_down_to_020_is_the_020_output() {
    let r = SuccessResult::from_slice(HOST_LOCAL_031.as_bytes(), Version::V0_3_1).unwrap();
    let down = r.to_value(Version::V0_2_0).unwrap();
    let expected = HOST_LOCAL_020.replace("10.22.0.2", "10.22.0.3").replace("fd00:22::2", "fd00:22::3");
    assert_eq!(down, without_empty_dns(value(&expected)));
}

#[test]
fn bridge_040_result() {
    let r = SuccessResult::from_slice(BRIDGE_040.as_bytes(), Version::V0_4_0).unwrap();
    let names: Vec<&str> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["br0", "vethfb73823e", "eth0"]);
    assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/var/run/netns/testing"));
    assert!(r.interfaces.iter().all(|i| i.mtu.is_none()));
    assert_eq!(r.ips[0].interface, Some(2));
    assert_eq!(r.ips[0].address.to_string(), "10.99.0.2/16");
    assert_eq!(r.to_value(Version::V0_4_0).unwrap(), without_empty_dns(value(BRIDGE_040)));

    // As 1.0.0: the same without ips[].version.
    let mut expected = without_empty_dns(value(BRIDGE_040));
    expected["cniVersion"] = "1.0.0".into();
    expected["ips"][0].as_object_mut().unwrap().remove("version");
    assert_eq!(r.to_value(Version::V1_0_0).unwrap(), expected);

    // As 0.2.0: the container address only, no interfaces.
    assert_eq!(
        r.to_value(Version::V0_2_0).unwrap(),
        json!({"cniVersion":"0.2.0","ip4":{"ip":"10.99.0.2/16","gateway":"10.99.0.1","routes":[{"dst":"0.0.0.0/0"}]}})
    );
}

#[test]
fn error_objects() {
    let e: Error = serde_json::from_str(ERROR_OBJECT).unwrap();
    assert_eq!(e.code, 7);
    assert_eq!(e.well_known(), Some(Code::InvalidConfig));
    assert_eq!(e.msg, "Invalid Configuration");
    assert_eq!(e.details.as_deref(), Some("Network 192.168.0.0/31 too small to allocate from."));
    assert_eq!(value(&e.to_json(Some(Version::V1_1_0))), value(ERROR_OBJECT));
    assert!(e.to_string().contains("(code 7)"));

    let go: Error = serde_json::from_str(GO_INTERNAL_ERROR).unwrap();
    assert_eq!((go.code, go.well_known(), go.details.as_deref()), (999, Some(Code::Internal), None));
    assert_eq!(go.to_json(None), GO_INTERNAL_ERROR);

    let inc: Error = serde_json::from_str(INCOMPATIBLE).unwrap();
    assert_eq!(inc.well_known(), Some(Code::IncompatibleVersion));
    // The library's own gate writes the very same object as the Go skeleton.
    let ours = gate(&Version::ALL[..6], Command::Add, Version::V1_1_0).unwrap_err();
    assert_eq!(ours, inc);
    assert_eq!(value(&ours.to_json(None)), value(INCOMPATIBLE));
}

#[test]
fn version_reply() {
    let info = VersionInfo::parse(VERSION_REPLY.as_bytes()).unwrap();
    assert_eq!(info.cni_version, "1.0.0");
    assert!(info.supports("0.1.0") && info.supports("0.4.0") && info.supports("1.0.0"));
    assert!(!info.supports("1.1.0"));
    assert_eq!(serde_json::to_string(&info).unwrap(), VERSION_REPLY);
    // What a plugin of this library limited to 1.0.0 answers: byte for byte the Go reply.
    let ours = VersionInfo::new(Version::V1_0_0, &Version::ALL[..6]);
    assert_eq!(serde_json::to_string(&ours).unwrap(), VERSION_REPLY);
    // A 0.2.0 reply may leave out supportedVersions; others may not.
    let old = VersionInfo::parse(br#"{"cniVersion":"0.2.0"}"#).unwrap();
    assert_eq!(old.supported_versions, ["0.1.0", "0.2.0"]);
    assert_eq!(VersionInfo::parse(br#"{"cniVersion":"0.3.1"}"#).unwrap_err().code, 6);
    assert_eq!(VersionInfo::parse(br#"{"supportedVersions":["1.0.0"]}"#).unwrap_err().code, 6);
}
