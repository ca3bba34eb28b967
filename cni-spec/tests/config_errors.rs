//! Every error path of config and environment parsing: the code, and the field or variable
//! the message names. Then a property: no input makes any parser panic.

use std::collections::HashMap;

use cni_spec::version::VersionInfo;
use cni_spec::{CniArgs, Command, Environment, Error, NetConf, NetConfList, SuccessResult, Version};
use proptest::prelude::*;
use serde_json::{Value, json};

#[track_caller]
fn assert_err(r: Result<impl std::fmt::Debug, Error>, code: u32, names: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    assert_eq!(e.code, code, "wrong code for {e:?}");
    for n in names {
        assert!(e.msg.contains(n), "{:?} does not name {n:?}", e.msg);
    }
    e
}

// ---------------------------------------------------------------- NetConf

#[test]
fn malformed_json_is_code_6_with_position() {
    for (input, line, column) in [
        ("{\"type\":\"x\",}", 1, 13),
        ("{\n  \"type\": \"x\"\n  \"name\": \"n\"\n}", 3, 3),
        ("{\"type\":", 1, 8),
    ] {
        let e = assert_err(NetConf::parse(input.as_bytes()), 6, &["line", "column"]);
        assert!(e.msg.contains(&format!("line {line} column {column}")), "{input:?}: {}", e.msg);
        assert_err(NetConfList::parse(input.as_bytes()), 6, &["line", "column"]);
    }
    // Trailing garbage after a valid object is malformed too.
    assert_err(NetConf::parse(br#"{"type":"x"} x"#), 6, &["line 1"]);
    // So are empty input and a key given twice.
    for empty in ["", " \n\t"] {
        assert_err(NetConf::parse(empty.as_bytes()), 6, &["empty"]);
    }
    assert_err(NetConf::parse(br#"{"type":"x","type":"y"}"#), 6, &["duplicate key \"type\""]);
}

#[test]
fn unknown_cni_version_is_code_1() {
    let e = assert_err(NetConf::parse(br#"{"cniVersion":"0.5.0","type":"x"}"#), 1, &["incompatible"]);
    assert!(e.details.unwrap().contains("\"0.5.0\""));
    assert_err(NetConf::parse(br#"{"cniVersion":"2.0.0","name":"n","type":"x"}"#), 1, &[]);
    assert_err(NetConfList::parse(br#"{"cniVersion":"9.9.9","name":"n","plugins":[]}"#), 1, &[]);
    // No cniVersion, or an empty one, is 0.1.0.
    assert_eq!(NetConf::parse(br#"{"type":"x"}"#).unwrap().version().unwrap(), Version::V0_1_0);
    assert_eq!(
        NetConf::parse(br#"{"cniVersion":"","type":"x"}"#).unwrap().version().unwrap(),
        Version::V0_1_0
    );
}

#[test]
fn plugin_type_errors_name_type() {
    assert_err(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#), 7, &["type"]);
    assert_err(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":""}"#), 7, &["type"]);
    assert_err(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"../bin/x"}"#), 7, &["type"]);
    assert_err(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":5}"#), 7, &["type"]);
}

#[test]
fn network_name_must_match_the_regex() {
    for bad in ["-net", ".net", "_net", "a/b", "a b", "nét", "a:b"] {
        let conf = json!({"cniVersion": "1.0.0", "name": bad, "type": "bridge"}).to_string();
        assert_err(NetConf::parse(conf.as_bytes()), 7, &["name", bad]);
        let list = json!({"cniVersion": "1.0.0", "name": bad, "plugins": [{"type": "bridge"}]}).to_string();
        assert_err(NetConfList::parse(list.as_bytes()), 7, &["name"]);
    }
    for good in ["n", "My-Net_1.0", "0net"] {
        let conf = json!({"cniVersion": "1.0.0", "name": good, "type": "bridge"}).to_string();
        assert!(NetConf::parse(conf.as_bytes()).is_ok(), "{good}");
    }
    // A list needs a name; a plugin config only when it is asked for.
    assert_err(NetConfList::parse(br#"{"cniVersion":"1.0.0","plugins":[]}"#), 7, &["name"]);
    assert_err(NetConfList::parse(br#"{"cniVersion":"1.0.0","name":"","plugins":[]}"#), 7, &["name"]);
    let anonymous = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"x"}"#).unwrap();
    assert_err(anonymous.network_name(), 7, &["name"]);
    assert_err(NetConf::parse(br#"{"cniVersion":"1.0.0","name":7,"type":"x"}"#), 7, &["name"]);
}

#[test]
fn wrong_field_types_are_code_7_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"cniVersion":"1.0.0","name":"n","type":"x","ipMasq":"yes"}"#, "ipMasq"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"x","ipam":"host-local"}"#, "ipam"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"x","ipam":{"type":5}}"#, "ipam.type"),
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"x","dns":{"nameservers":"1.1.1.1"}}"#,
            "dns.nameservers",
        ),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"x","capabilities":{"mac":"yes"}}"#, "capabilities.mac"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"x","runtimeConfig":{"mac":5}}"#, "runtimeConfig.mac"),
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"x","runtimeConfig":{"portMappings":[{"hostPort":"80"}]}}"#,
            "runtimeConfig.portMappings[0]",
        ),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"x","args":{"cni":{"ips":"10.0.0.1"}}}"#, "args.cni.ips"),
        (r#"{"cniVersion":1,"name":"n","type":"x"}"#, "cniVersion"),
    ];
    for (input, field) in cases {
        assert_err(NetConf::parse(input.as_bytes()), 7, &[field]);
    }
    let lists: &[(&str, &str)] = &[
        (r#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#, "plugins"),
        (r#"{"cniVersion":"1.0.0","name":"n","plugins":[5]}"#, "plugins[0]"),
        (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{}]}"#, "plugins[1].type"),
        (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":7}]}"#, "plugins[0].type"),
        (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a/b"}]}"#, "plugins[0].type"),
        (r#"{"cniVersion":"1.0.0","cniVersions":"1.1.0","name":"n","plugins":[]}"#, "cniVersions"),
        (r#"{"cniVersion":"1.0.0","name":"n","disableCheck":"yes","plugins":[]}"#, "disableCheck"),
        (r#"{"cniVersion":"1.0.0","name":"n","disableCheck":1,"plugins":[]}"#, "disableCheck"),
        (r#"{"cniVersion":"1.0.0","name":"n","disableGC":[],"plugins":[]}"#, "disableGC"),
        (r#"{"cniVersion":"1.0.0","name":"n","loadOnlyInlinedPlugins":true}"#, "plugins"),
        (r#"{"cniVersion":"1.0.0","name":["n"],"plugins":[]}"#, "name"),
    ];
    for (input, field) in lists {
        assert_err(NetConfList::parse(input.as_bytes()), 7, &[field]);
    }
}

#[test]
fn capabilities_are_tolerated_in_a_plugin_config() {
    let conf = NetConf::parse(
        br#"{"cniVersion":"1.1.0","name":"n","type":"portmap","capabilities":{"portMappings":true,"mac":false},
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}"#,
    )
    .unwrap();
    let caps = conf.capabilities.as_ref().unwrap();
    assert_eq!((caps["portMappings"], caps["mac"]), (true, false));
    let pm = conf.runtime_config.as_ref().unwrap().port_mappings.as_ref().unwrap();
    assert_eq!((pm[0].host_port, pm[0].container_port), (8080, 80));
}

#[test]
fn prev_result_errors() {
    // prevResult is read as the config's version: a 0.2.0 shape in a 1.0.0 config has no
    // addresses, and a broken one is an error naming the field.
    let conf = NetConf::parse(br#"{"cniVersion":"0.3.1","type":"x","prevResult":{"ips":[{"address":"x"}]}}"#)
        .unwrap();
    assert_err(conf.prev_result(), 7, &["ips[0]"]);
    let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"x","prevResult":null}"#).unwrap();
    assert_eq!(conf.prev_result().unwrap(), None);
    // A prevResult that is not a result is a bad value in a well-formed config: code 7.
    let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"x","prevResult":[1]}"#).unwrap();
    assert_err(conf.prev_result(), 7, &["prevResult"]);
}

// ---------------------------------------------------------------- NetConfList

#[test]
fn cni_versions_negotiation() {
    let parse = |s: &str| NetConfList::parse(s.as_bytes());
    let v = |s: &str| parse(s).unwrap().version().unwrap();
    assert_eq!(v(r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","0.3.1"],"name":"n"}"#), Version::V1_0_0);
    assert_eq!(v(r#"{"cniVersion":"1.1.0","cniVersions":["1.0.0"],"name":"n"}"#), Version::V1_1_0);
    // Newer (or unknown) entries are dropped before the pick.
    assert_eq!(
        v(r#"{"cniVersion":"0.3.1","cniVersions":["1.0.0","2.0.0","1.5.0"],"name":"n"}"#),
        Version::V1_0_0
    );
    assert_eq!(v(r#"{"cniVersions":["0.4.0"],"name":"n"}"#), Version::V0_4_0);
    assert_eq!(v(r#"{"cniVersions":null,"cniVersion":"0.3.0","name":"n"}"#), Version::V0_3_0);
    assert_eq!(v(r#"{"name":"n"}"#), Version::V0_1_0);
    let e = assert_err(parse(r#"{"cniVersion":"3.0.0","cniVersions":["2.0.0"],"name":"n"}"#), 1, &[]);
    assert!(e.details.unwrap().contains("2.0.0"));
    assert_err(parse(r#"{"cniVersions":[1],"name":"n"}"#), 7, &["cniVersions[0]"]);
}

#[test]
fn disable_check_as_bool_or_string() {
    let flag = |v: Value| {
        let s =
            json!({"cniVersion":"1.0.0","name":"n","disableCheck":v,"disableGC":v,"plugins":[{"type":"x"}]});
        let l = NetConfList::parse(s.to_string().as_bytes()).unwrap();
        assert_eq!(l.disable_check, l.disable_gc);
        l.disable_check
    };
    assert!(flag(json!(true)));
    assert!(!flag(json!(false)));
    assert!(flag(json!("true")));
    assert!(flag(json!("TRUE")));
    assert!(!flag(json!("false")));
    assert!(!flag(json!("False")));
    assert!(!flag(Value::Null));
    // A true flag writes back as a bool; a false one is left out.
    let l = NetConfList::parse(br#"{"name":"n","disableCheck":"true","disableGC":"false","plugins":[]}"#)
        .unwrap();
    let back = serde_json::to_value(&l).unwrap();
    assert_eq!(back["disableCheck"], true);
    assert!(back.get("disableGC").is_none());
}

#[test]
fn legacy_conf_becomes_a_list() {
    let l = NetConfList::from_conf(br#"{"cniVersion":"0.2.0","name":"old","type":"bridge","bridge":"cni0"}"#)
        .unwrap();
    assert_eq!(l.name, "old");
    assert_eq!(l.version().unwrap(), Version::V0_2_0);
    assert_eq!(l.plugin_types(), ["bridge"]);
    assert_eq!(l.plugins[0]["bridge"], "cni0");
    assert_err(NetConfList::from_conf(br#"{"cniVersion":"0.2.0","type":"bridge"}"#), 7, &["name"]);
    assert_err(NetConfList::from_conf(br#"{"cniVersion":"0.2.0","name":"old"}"#), 7, &["type"]);
    assert_err(NetConfList::from_conf(br#"{"cniVersion":"0.2.0","name":"old","type":"x""#), 6, &["line"]);
    assert_err(NetConfList::from_conf(br#"{"cniVersion":"0.9.0","name":"old","type":"x"}"#), 1, &[]);
}

#[test]
fn unknown_keys_survive_parse_and_serialize_in_order() {
    let input = r#"{"cniVersion":"1.1.0","name":"net","plugins":[{"type":"bridge","zz":1,"bridge":"cni0","aa":{"y":1,"x":2},"ipam":{"type":"host-local","subnet":"10.0.0.0/24"}},{"type":"portmap","capabilities":{"portMappings":true},"snat":true}],"zeta":1,"alpha":{"b":2,"a":[3]},"mid":"x"}"#;
    let l = NetConfList::parse(input.as_bytes()).unwrap();
    let extra: Vec<&str> = l.extra.keys().map(String::as_str).collect();
    assert_eq!(extra, ["zeta", "alpha", "mid"]);
    let plugin0: Vec<&str> = l.plugins[0].keys().map(String::as_str).collect();
    assert_eq!(plugin0, ["type", "zz", "bridge", "aa", "ipam"]);
    // Serialized again byte for byte: the well-known keys come first, as in the input.
    assert_eq!(serde_json::to_string(&l).unwrap(), input);
    // The bytes kept for the cache are the source, verbatim (whitespace included).
    let spaced = input.replace(",\"", ", \"");
    let l2 = NetConfList::parse(spaced.as_bytes()).unwrap();
    assert_eq!(l2.to_bytes(), spaced.as_bytes());
    assert_eq!(serde_json::to_string(&l2).unwrap(), input);
    // Without a source (built in code) the bytes are the serialization.
    let built = NetConfList { source: None, ..l.clone() };
    assert_eq!(built.to_bytes(), input.as_bytes());

    // A plugin config keeps its unknown keys too, in order.
    let conf_in = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","q":1,"b":{"z":1,"a":2},"a":[1,2]}"#;
    let conf = NetConf::parse(conf_in.as_bytes()).unwrap();
    assert_eq!(serde_json::to_string(&conf).unwrap(), conf_in);
    assert_eq!(conf.ipam_type(), None);
    let with_ipam = NetConf::parse(
        br#"{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]],"x":1}}"#,
    )
    .unwrap();
    assert_eq!(with_ipam.ipam_type(), Some("host-local"));
    let keys: Vec<&str> = with_ipam.ipam.as_ref().unwrap().extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["ranges", "x"]);
}

// ---------------------------------------------------------------- Environment

fn env_of(vars: &[(&str, &str)]) -> Result<Environment, Error> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Environment::from_lookup(|k| map.get(k).cloned())
}

fn full(command: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", "c1".into()),
        ("CNI_NETNS", "/run/netns/c1".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
    ]
}

/// `full(command)` with `var` set to `value` (`None`: unset).
fn env_with(command: &str, var: &str, value: Option<&str>) -> Result<Environment, Error> {
    let mut vars: Vec<(&str, String)> = full(command).into_iter().filter(|(k, _)| *k != var).collect();
    if let Some(v) = value {
        vars.push((var, v.to_string()));
    }
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env_of(&refs)
}

#[test]
fn cni_command_missing_or_unknown() {
    assert_err(env_with("ADD", "CNI_COMMAND", None), 4, &["CNI_COMMAND", "missing"]);
    assert_err(env_with("ADD", "CNI_COMMAND", Some("")), 4, &["CNI_COMMAND"]);
    for bad in ["add", "DELETE", "UPDATE", " ADD"] {
        assert_err(env_with(bad, "", None), 4, &["CNI_COMMAND", bad]);
    }
    for (s, c) in [
        ("ADD", Command::Add),
        ("DEL", Command::Del),
        ("CHECK", Command::Check),
        ("STATUS", Command::Status),
        ("GC", Command::Gc),
        ("VERSION", Command::Version),
    ] {
        assert_eq!(env_with(s, "", None).unwrap().command, c);
    }
}

#[test]
fn container_id_missing_or_invalid() {
    for cmd in ["ADD", "DEL", "CHECK"] {
        assert_err(env_with(cmd, "CNI_CONTAINERID", None), 4, &["CNI_CONTAINERID", "missing"]);
        assert_err(env_with(cmd, "CNI_CONTAINERID", Some("")), 4, &["CNI_CONTAINERID"]);
        for bad in ["-abc", ".abc", "a/b", "a b", "a:b", "ä"] {
            assert_err(env_with(cmd, "CNI_CONTAINERID", Some(bad)), 4, &["CNI_CONTAINERID"]);
        }
        for good in ["A", "0abc", "Pod_1.2-x"] {
            assert_eq!(env_with(cmd, "CNI_CONTAINERID", Some(good)).unwrap().container_id, good);
        }
    }
    for cmd in ["STATUS", "GC", "VERSION"] {
        assert!(env_with(cmd, "CNI_CONTAINERID", None).is_ok(), "{cmd}");
    }
}

#[test]
fn netns_required_for_add_and_check_only() {
    for cmd in ["ADD", "CHECK"] {
        assert_err(env_with(cmd, "CNI_NETNS", None), 4, &["CNI_NETNS", cmd]);
        assert_err(env_with(cmd, "CNI_NETNS", Some("")), 4, &["CNI_NETNS"]);
    }
    let del = env_with("DEL", "CNI_NETNS", None).unwrap();
    assert_eq!(del.netns, None);
    let del = env_with("DEL", "CNI_NETNS", Some("")).unwrap();
    assert_eq!(del.netns, None);
    assert_eq!(env_with("ADD", "", None).unwrap().netns.unwrap().to_str(), Some("/run/netns/c1"));
    assert!(env_with("STATUS", "CNI_NETNS", None).is_ok());
}

#[test]
fn ifname_rules() {
    for cmd in ["ADD", "DEL", "CHECK"] {
        assert_err(env_with(cmd, "CNI_IFNAME", None), 4, &["CNI_IFNAME"]);
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:1", "a b", "a\tb", "eth0\n"] {
            assert_err(env_with(cmd, "CNI_IFNAME", Some(bad)), 4, &["CNI_IFNAME"]);
        }
        for good in ["e", "abcdefghijklmno", "eth0.100", "...", "veth-1_x"] {
            assert_eq!(env_with(cmd, "CNI_IFNAME", Some(good)).unwrap().ifname, good);
        }
    }
    // 15 bytes, not characters.
    assert_err(env_with("ADD", "CNI_IFNAME", Some("ééééééééé")), 4, &["CNI_IFNAME"]);
    assert!(env_with("GC", "CNI_IFNAME", None).is_ok());
}

#[test]
fn cni_args_parsing() {
    for bad in ["IP", "=1", "A=1=2", "A=1;B", "A=1;;=x"] {
        assert_err(CniArgs::parse(bad), 4, &["CNI_ARGS"]);
        assert_err(env_with("ADD", "CNI_ARGS", Some(bad)), 4, &["CNI_ARGS"]);
    }
    let a = CniArgs::parse("K8S_POD_NAME=web;IP=10.0.0.5;IP=10.0.0.6;EMPTY=").unwrap();
    assert_eq!(a.pairs.len(), 4);
    assert_eq!(a.get("IP"), Some("10.0.0.6"), "the last value wins");
    assert_eq!(a.get("EMPTY"), Some(""));
    assert_eq!(a.get("NOPE"), None);
    assert_eq!(a.encode(), "K8S_POD_NAME=web;IP=10.0.0.5;IP=10.0.0.6;EMPTY=");
    assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    assert_eq!(env_with("ADD", "CNI_ARGS", Some("A=1;B=2")).unwrap().args.get("B"), Some("2"));
}

#[test]
fn cni_args_known_keys() {
    let a = CniArgs::parse("IP=10.0.0.5;K8S_POD_NAME=web").unwrap();
    assert!(a.check_known(&["IP", "K8S_POD_NAME"]).is_ok());
    assert_err(a.check_known(&["IP"]), 4, &["CNI_ARGS", "K8S_POD_NAME"]);
    for ignore in ["1", "true", "TRUE"] {
        let a = CniArgs::parse(&format!("IgnoreUnknown={ignore};IP=10.0.0.5;K8S_POD_NAME=web")).unwrap();
        assert!(a.ignore_unknown());
        assert!(a.check_known(&["IP"]).is_ok());
    }
    for not in ["0", "false", "yes"] {
        let a = CniArgs::parse(&format!("IgnoreUnknown={not};K8S_POD_NAME=web")).unwrap();
        assert!(!a.ignore_unknown());
        assert_err(a.check_known(&[]), 4, &["K8S_POD_NAME"]);
    }
    // IgnoreUnknown itself is never "unknown".
    assert!(CniArgs::parse("IgnoreUnknown=0").unwrap().check_known(&[]).is_ok());
}

#[test]
fn cni_path_required_for_gc_only() {
    assert_err(env_with("GC", "CNI_PATH", None), 4, &["CNI_PATH"]);
    assert_err(env_with("GC", "CNI_PATH", Some("")), 4, &["CNI_PATH"]);
    assert_err(env_with("GC", "CNI_PATH", Some(":::")), 4, &["CNI_PATH"]);
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "VERSION"] {
        assert!(env_with(cmd, "CNI_PATH", None).unwrap().path.is_empty(), "{cmd}");
    }
    let gc = env_with("GC", "CNI_PATH", Some("/a::/b:")).unwrap();
    assert_eq!(gc.path, [std::path::PathBuf::from("/a"), "/b".into()]);
}

// ---------------------------------------------------------------- nothing panics

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "cniVersion",
            "cniVersions",
            "name",
            "type",
            "plugins",
            "ipMasq",
            "ipam",
            "dns",
            "capabilities",
            "runtimeConfig",
            "args",
            "prevResult",
            "disableCheck",
            "disableGC",
            "loadOnlyInlinedPlugins",
            "interfaces",
            "ips",
            "routes",
            "ip4",
            "ip6",
            "ip",
            "address",
            "gateway",
            "interface",
            "version",
            "dst",
            "gw",
            "mtu",
            "scope",
            "table",
            "nameservers",
            "supportedVersions",
            "portMappings",
            "cni",
            "hostPort",
            "mac",
            "ips",
            "sandbox",
            "pciID",
        ])
        .prop_map(str::to_string),
        "[a-zA-Z]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "0.1.0",
            "0.2.0",
            "0.3.0",
            "0.3.1",
            "0.4.0",
            "1.0.0",
            "1.1.0",
            "9.9.9",
            "4",
            "6",
            "bridge",
            "a/b",
            "10.0.0.2/24",
            "10.0.0.1",
            "fd00::2/64",
            "fd00::1",
            "0.0.0.0/0",
            "::/0",
            "true",
            "false",
            "eth0",
            "net",
        ])
        .prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
        ]
    })
}

fn feed_all(bytes: &[u8]) {
    let _ = NetConf::parse(bytes).map(|c| (c.prev_result(), c.version(), c.ipam_type().map(str::len)));
    let _ = NetConfList::parse(bytes).map(|l| (l.version(), l.to_bytes()));
    let _ = NetConfList::from_conf(bytes);
    for v in Version::ALL {
        if let Ok(r) = SuccessResult::from_slice(bytes, v) {
            for to in Version::ALL {
                let _ = r.converted(to);
            }
        }
    }
    let _ = VersionInfo::parse(bytes);
    let _ = serde_json::from_slice::<Error>(bytes);
    let s = String::from_utf8_lossy(bytes);
    let _ = CniArgs::parse(&s).map(|a| a.check_known(&["IP"]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        feed_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        feed_all(&bytes);
        for version in Version::ALL {
            let _ = SuccessResult::from_value(v.clone(), version);
        }
        // The same value as a config's prevResult and as a list's plugins.
        let conf = json!({"cniVersion": "1.0.0", "type": "x", "prevResult": v.clone()});
        feed_all(&serde_json::to_vec(&conf).unwrap());
        let list = json!({"cniVersion": "1.1.0", "name": "n", "plugins": [v.clone(), {"type": "x"}]});
        feed_all(&serde_json::to_vec(&list).unwrap());
    }

    #[test]
    fn arbitrary_environments_never_panic(
        vars in prop::collection::hash_map(
            prop::sample::select(vec!["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]),
            prop_oneof![
                prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "", "c1", "eth0", "/x", "A=1;B=2", ":"]).prop_map(str::to_string),
                ".{0,20}",
            ],
            0..7,
        )
    ) {
        let r = Environment::from_lookup(|k| vars.get(k).cloned());
        if let Err(e) = r {
            prop_assert_eq!(e.code, 4);
        }
    }
}
