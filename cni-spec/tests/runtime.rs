//! The runtime side against the real `cni-echo` plugin binary: chaining, the result cache in
//! libcni's format, DEL/CHECK/STATUS/GC, errors and panics of plugins, config loading, and
//! the `cnictl` binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cni_spec::plugin::Attachment;
use cni_spec::runtime::{Attach, CACHE_KIND, Runtime, load_conf_list};
use cni_spec::{NetConfList, SuccessResult, Version};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use tempfile::TempDir;

const ECHO: &str = env!("CARGO_BIN_EXE_cni-echo");
const CNICTL: &str = env!("CARGO_BIN_EXE_cnictl");

fn bin_dir() -> PathBuf {
    Path::new(ECHO).parent().unwrap().to_path_buf()
}

/// A temp dir with a cache, a log file shared by the plugins, and a runtime using both.
struct Fixture {
    dir: TempDir,
    rt: Runtime,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(vec![PathBuf::from("/nonexistent"), bin_dir()])
            .with_cache_dir(dir.path().join("cache"));
        Fixture { dir, rt }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.jsonl")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn cache_file(&self, net: &str, cid: &str, ifname: &str) -> PathBuf {
        self.cache_dir().join("results").join(format!("{net}-{cid}-{ifname}"))
    }

    /// The JSON of a list whose plugins are all `cni-echo` logging to the shared file.
    fn list_json(&self, version: &str, name: &str, plugins: &[Value]) -> Value {
        let plugins: Vec<Value> = plugins
            .iter()
            .map(|p| {
                let mut o = json!({"type": "cni-echo", "logFile": self.log_path()});
                for (k, v) in p.as_object().unwrap() {
                    o[k] = v.clone();
                }
                o
            })
            .collect();
        json!({"cniVersion": version, "name": name, "plugins": plugins})
    }

    fn list(&self, version: &str, name: &str, plugins: &[Value]) -> NetConfList {
        let bytes = serde_json::to_vec(&self.list_json(version, name, plugins)).unwrap();
        NetConfList::parse(&bytes).unwrap()
    }

    /// Every logged call since the last `take_log`.
    fn take_log(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let _ = fs::remove_file(self.log_path());
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn tags(log: &[Value]) -> Vec<String> {
    log.iter().map(|l| format!("{} {}", l["command"].as_str().unwrap(), l["tag"].as_str().unwrap())).collect()
}

fn three(extra: [Value; 3]) -> [Value; 3] {
    let mut out = [json!({"tag": "a"}), json!({"tag": "b"}), json!({"tag": "c"})];
    for (o, e) in out.iter_mut().zip(extra) {
        for (k, v) in e.as_object().unwrap() {
            o[k] = v.clone();
        }
    }
    out
}

fn attach(cid: &str, ifname: &str) -> Attach {
    Attach::new(cid, format!("/run/netns/{cid}"), ifname)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------- ADD

#[test]
fn add_chains_in_order_and_caches_in_libcni_format() {
    let f = Fixture::new();
    let plugins = three([
        json!({"capabilities": {"mac": true, "portMappings": false}}),
        json!({"capabilities": {"ips": true, "bandwidth": true}, "ip": "10.9.0.2/24"}),
        json!({"cniVersion": "0.1.0", "extraOption": {"kept": [1, 2]}}),
    ]);
    let list = f.list("1.1.0", "chain", &plugins);
    let mut att = attach("pod-1", "eth0");
    att.args = vec![("K8S_POD_NAME".into(), "web".into())];
    let caps = json!({"mac": "00:11:22:33:44:66", "ips": ["10.9.0.2/24"],
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    att.capability_args = caps.as_object().unwrap().clone();

    let result = f.rt.add(&list, &att).unwrap();
    let names: Vec<&str> = result.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(result.ips.len(), 1);
    assert_eq!(result.ips[0].address.to_string(), "10.9.0.2/24");
    assert_eq!(result.ips[0].interface, Some(1));

    let log = f.take_log();
    assert_eq!(tags(&log), ["ADD a", "ADD b", "ADD c"]);
    for l in &log {
        assert_eq!(l["containerID"], "pod-1");
        assert_eq!(l["ifname"], "eth0");
        assert_eq!(l["cniVersion"], "1.1.0");
        assert_eq!(l["config"]["name"], "chain");
        assert_eq!(l["config"]["cniVersion"], "1.1.0", "a plugin-level cniVersion is overwritten");
        assert_eq!(l["config"]["type"], "cni-echo");
    }
    // runtimeConfig: only declared (true) capabilities the runtime provided.
    assert_eq!(log[0]["config"]["runtimeConfig"], json!({"mac": "00:11:22:33:44:66"}));
    assert_eq!(log[1]["config"]["runtimeConfig"], json!({"ips": ["10.9.0.2/24"]}));
    assert!(log[2]["config"].get("runtimeConfig").is_none());
    // capabilities reach the plugin (libcni does not strip them); other keys pass through.
    assert_eq!(log[0]["config"]["capabilities"], json!({"mac": true, "portMappings": false}));
    assert_eq!(log[2]["config"]["extraOption"], json!({"kept": [1, 2]}));
    // prevResult: none for the first; then the previous plugin's result.
    assert!(log[0]["config"].get("prevResult").is_none());
    assert_eq!(log[1]["config"]["prevResult"], json!({"cniVersion": "1.1.0", "interfaces": [{"name": "a"}]}));
    assert_eq!(
        log[2]["config"]["prevResult"],
        json!({"cniVersion": "1.1.0", "interfaces": [{"name": "a"}, {"name": "b"}],
               "ips": [{"address": "10.9.0.2/24", "interface": 1}]})
    );

    // The cache file, in libcni's format.
    let file = f.cache_file("chain", "pod-1", "eth0");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let cached: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(cached["kind"], CACHE_KIND);
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "pod-1");
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["networkName"], "chain");
    assert_eq!(cached["netns"], "/run/netns/pod-1");
    assert_eq!(cached["cniArgs"], json!([["K8S_POD_NAME", "web"]]));
    assert_eq!(cached["capabilityArgs"], caps);
    let config = STANDARD.decode(cached["config"].as_str().unwrap()).unwrap();
    assert_eq!(config, list.to_bytes());
    assert_eq!(serde_json::from_slice::<Value>(&config).unwrap(), f.list_json("1.1.0", "chain", &plugins));
    assert_eq!(cached["result"], result.to_value(Version::V1_1_0).unwrap());
    assert_eq!(f.rt.cached_result(&list, &att).unwrap(), Some(result));
    // Nothing else (no temporary file) is left in the results directory.
    assert_eq!(fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn add_in_an_old_version_converts_between_plugins() {
    let f = Fixture::new();
    let list = f.list("0.3.1", "old", &three([json!({"ip": "10.1.0.2/24"}), json!({}), json!({})]));
    let result = f.rt.add(&list, &attach("p", "eth0")).unwrap();
    assert_eq!(result.interfaces.len(), 3);
    let log = f.take_log();
    assert_eq!(log[1]["config"]["prevResult"]["cniVersion"], "0.3.1");
    assert_eq!(log[1]["config"]["prevResult"]["ips"][0]["version"], "4");
    let cached: Value = serde_json::from_slice(&fs::read(f.cache_file("old", "p", "eth0")).unwrap()).unwrap();
    assert_eq!(cached["result"]["cniVersion"], "0.3.1");
    assert_eq!(cached["result"]["ips"][0]["version"], "4");
}

#[test]
fn failing_plugin_stops_the_chain_with_its_code() {
    let f = Fixture::new();
    let list = f.list(
        "1.0.0",
        "failing",
        &three([json!({}), json!({"failOn": ["ADD"], "failCode": 117}), json!({})]),
    );
    let e = f.rt.add(&list, &attach("p", "eth0")).unwrap_err();
    assert_eq!(e.code, 117);
    assert_eq!(e.msg, "cni-echo was told to fail ADD");
    assert_eq!(tags(&f.take_log()), ["ADD a", "ADD b"]);
    assert!(!f.cache_file("failing", "p", "eth0").exists(), "nothing is cached after a failed ADD");

    // Without failCode: 100. On CHECK too.
    let list = f.list("1.0.0", "failing2", &three([json!({}), json!({}), json!({"failOn": ["ADD"]})]));
    assert_eq!(f.rt.add(&list, &attach("p", "eth0")).unwrap_err().code, 100);
}

#[test]
fn panicking_plugin_is_code_999() {
    let f = Fixture::new();
    let list = f.list("1.1.0", "panics", &three([json!({"panicOn": ["ADD", "DEL"]}), json!({}), json!({})]));
    let e = f.rt.add(&list, &attach("p", "eth0")).unwrap_err();
    assert_eq!(e.code, 999);
    assert!(e.msg.contains("panic") && e.msg.contains("ADD"), "{}", e.msg);
    let e = f.rt.del(&list, &attach("p", "eth0")).unwrap_err();
    assert_eq!(e.code, 999);
    assert_eq!(tags(&f.take_log()), ["ADD a", "DEL c", "DEL b", "DEL a"]);
}

#[test]
fn missing_plugin_and_invalid_attachment() {
    let f = Fixture::new();
    let list =
        NetConfList::parse(br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"no-such-plugin"}]}"#)
            .unwrap();
    let e = f.rt.add(&list, &attach("p", "eth0")).unwrap_err();
    assert!(e.msg.contains("no-such-plugin"), "{}", e.msg);
    // The runtime checks the container ID and ifname before running anything (libcni too).
    let list = f.list("1.0.0", "n", &three([json!({}), json!({}), json!({})]));
    for (cid, ifname, var) in [
        ("../x", "eth0", "CNI_CONTAINERID"),
        ("", "eth0", "CNI_CONTAINERID"),
        ("p", "a/b", "CNI_IFNAME"),
        ("p", "", "CNI_IFNAME"),
    ] {
        let att = attach("p", "eth0");
        let att = Attach { container_id: cid.into(), ifname: ifname.into(), ..att };
        for e in [
            f.rt.add(&list, &att).unwrap_err(),
            f.rt.del(&list, &att).unwrap_err(),
            f.rt.check(&list, &att).unwrap_err(),
        ] {
            assert_eq!(e.code, 4);
            assert!(e.msg.contains(var), "{}", e.msg);
        }
    }
    assert!(f.take_log().is_empty());
    // With no plugin to object, the runtime's own check keeps odd names out of the cache.
    let empty = NetConfList::parse(br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).unwrap();
    let e = f.rt.add(&empty, &attach("-x", "eth0")).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(!f.cache_dir().exists());
    f.rt.add(&empty, &attach("x", "eth0")).unwrap();
    assert!(f.cache_file("n", "x", "eth0").exists());
}

// ---------------------------------------------------------------- DEL

#[test]
fn del_runs_in_reverse_with_the_cached_result() {
    let f = Fixture::new();
    let plugins = three([json!({"capabilities": {"mac": true}}), json!({"ip": "10.9.0.3/24"}), json!({})]);
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let list = f.list(version, "delnet", &plugins);
        let mut att = attach("pod-2", "eth0");
        att.capability_args = json!({"mac": "00:11:22:33:44:77"}).as_object().unwrap().clone();
        let result = f.rt.add(&list, &att).unwrap();
        f.take_log();

        f.rt.del(&list, &att).unwrap();
        let log = f.take_log();
        assert_eq!(tags(&log), ["DEL c", "DEL b", "DEL a"], "{version}");
        let v: Version = version.parse().unwrap();
        for l in &log {
            assert_eq!(l["config"]["prevResult"], result.to_value(v).unwrap(), "{version}");
            assert_eq!(l["containerID"], "pod-2");
        }
        assert_eq!(log[2]["config"]["runtimeConfig"], json!({"mac": "00:11:22:33:44:77"}));
        assert!(!f.cache_file("delnet", "pod-2", "eth0").exists());

        // Again, without a cache: it still runs, with no prevResult.
        f.rt.del(&list, &att).unwrap();
        let log = f.take_log();
        assert_eq!(tags(&log), ["DEL c", "DEL b", "DEL a"]);
        assert!(log.iter().all(|l| l["config"].get("prevResult").is_none()));
    }
}

#[test]
fn del_below_040_has_no_prev_result() {
    let f = Fixture::new();
    let list = f.list("0.3.1", "old", &three([json!({"ip": "10.1.0.2/24"}), json!({}), json!({})]));
    let att = attach("p", "eth0");
    f.rt.add(&list, &att).unwrap();
    assert!(f.cache_file("old", "p", "eth0").exists());
    f.take_log();
    f.rt.del(&list, &att).unwrap();
    let log = f.take_log();
    assert_eq!(tags(&log), ["DEL c", "DEL b", "DEL a"]);
    assert!(log.iter().all(|l| l["config"].get("prevResult").is_none()));
    assert!(!f.cache_file("old", "p", "eth0").exists(), "the cache entry goes in every version");
}

#[test]
fn del_without_netns() {
    let f = Fixture::new();
    let list = f.list("1.0.0", "n", &three([json!({}), json!({}), json!({})]));
    let att = Attach { netns: None, ..attach("p", "eth0") };
    f.rt.del(&list, &att).unwrap();
    assert_eq!(f.take_log().len(), 3);
}

#[test]
fn failed_del_keeps_the_cache() {
    let f = Fixture::new();
    let list =
        f.list("1.0.0", "n", &three([json!({}), json!({"failOn": ["DEL"], "failCode": 130}), json!({})]));
    let att = attach("p", "eth0");
    f.rt.add(&list, &att).unwrap();
    f.take_log();
    assert_eq!(f.rt.del(&list, &att).unwrap_err().code, 130);
    assert_eq!(tags(&f.take_log()), ["DEL c", "DEL b"]);
    assert!(f.cache_file("n", "p", "eth0").exists());
}

// ---------------------------------------------------------------- CHECK

#[test]
fn check_uses_the_cached_result() {
    let f = Fixture::new();
    let list = f.list("1.0.0", "checknet", &three([json!({}), json!({"ip": "10.3.0.2/24"}), json!({})]));
    let att = attach("p", "eth0");
    let result = f.rt.add(&list, &att).unwrap();
    f.take_log();
    f.rt.check(&list, &att).unwrap();
    let log = f.take_log();
    assert_eq!(tags(&log), ["CHECK a", "CHECK b", "CHECK c"]);
    for l in &log {
        assert_eq!(l["config"]["prevResult"], result.to_value(Version::V1_0_0).unwrap());
    }

    // A cached result without b's interface: b's CHECK fails, c is not run.
    let file = f.cache_file("checknet", "p", "eth0");
    let mut cached: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    cached["result"]["interfaces"].as_array_mut().unwrap().remove(1);
    fs::write(&file, serde_json::to_vec(&cached).unwrap()).unwrap();
    let e = f.rt.check(&list, &att).unwrap_err();
    assert_eq!(e.code, 101);
    assert!(e.msg.contains("\"b\""), "{}", e.msg);
    assert_eq!(tags(&f.take_log()), ["CHECK a", "CHECK b"]);
}

#[test]
fn check_without_add_fails_and_disable_check_skips() {
    let f = Fixture::new();
    let list = f.list("1.1.0", "checknet", &three([json!({}), json!({}), json!({})]));
    let e = f.rt.check(&list, &attach("never-added", "eth0")).unwrap_err();
    assert_eq!(e.code, 3);
    assert!(e.msg.contains("never-added"));
    assert!(f.take_log().is_empty());

    // Added then deleted: no cache, CHECK fails again.
    let att = attach("p", "eth0");
    f.rt.add(&list, &att).unwrap();
    f.rt.del(&list, &att).unwrap();
    f.take_log();
    assert_eq!(f.rt.check(&list, &att).unwrap_err().code, 3);
    assert!(f.take_log().is_empty());

    let mut json = f.list_json("1.1.0", "nocheck", &three([json!({}), json!({}), json!({})]));
    json["disableCheck"] = true.into();
    let list = NetConfList::parse(json.to_string().as_bytes()).unwrap();
    f.rt.check(&list, &attach("never-added", "eth0")).unwrap();
    f.rt.add(&list, &att).unwrap();
    f.take_log();
    f.rt.check(&list, &att).unwrap();
    assert!(f.take_log().is_empty(), "disableCheck: no plugin is called");
}

#[test]
fn check_is_refused_below_040() {
    let f = Fixture::new();
    for version in ["0.3.0", "0.3.1"] {
        let list = f.list(version, "old", &three([json!({"ip": "10.1.0.2/24"}), json!({}), json!({})]));
        let att = attach("p", "eth0");
        f.rt.add(&list, &att).unwrap();
        f.take_log();
        let e = f.rt.check(&list, &att).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("CHECK"));
        assert!(f.take_log().is_empty());
    }
}

// ---------------------------------------------------------------- STATUS

#[test]
fn status_reports_a_plugin_not_ready() {
    let f = Fixture::new();
    let list = f.list("1.1.0", "statusnet", &three([json!({}), json!({"notReady": true}), json!({})]));
    let e = f.rt.status(&list).unwrap_err();
    assert_eq!(e.code, 50);
    assert_eq!(e.msg, "cni-echo is not ready");
    let log = f.take_log();
    assert_eq!(tags(&log), ["STATUS a", "STATUS b"]);
    for l in &log {
        assert_eq!(l["containerID"], "");
        assert_eq!(l["ifname"], "");
        assert_eq!(l["config"]["name"], "statusnet");
        assert!(l["config"].get("prevResult").is_none() && l["config"].get("runtimeConfig").is_none());
    }
    let ok = f.list("1.1.0", "statusnet", &three([json!({}), json!({}), json!({})]));
    f.rt.status(&ok).unwrap();
    assert_eq!(tags(&f.take_log()), ["STATUS a", "STATUS b", "STATUS c"]);
}

#[test]
fn status_is_a_no_op_below_110() {
    let f = Fixture::new();
    for version in ["0.4.0", "1.0.0"] {
        let list = f.list(version, "statusnet", &three([json!({"notReady": true}), json!({}), json!({})]));
        f.rt.status(&list).unwrap();
        assert!(f.take_log().is_empty());
    }
}

// ---------------------------------------------------------------- GC

#[test]
fn gc_deletes_stale_attachments_then_sends_gc() {
    let f = Fixture::new();
    let plugins = three([json!({"capabilities": {"mac": true}}), json!({"ip": "10.5.0.2/24"}), json!({})]);
    let list = f.list("1.1.0", "gcnet", &plugins);
    let other = f.list("1.1.0", "othernet", &plugins);
    for (cid, ifname) in [("c1", "eth0"), ("c2", "eth0"), ("c3", "net1")] {
        let mut att = attach(cid, ifname);
        att.capability_args =
            json!({"mac": format!("00:00:00:00:00:{}", &cid[1..])}).as_object().unwrap().clone();
        f.rt.add(&list, &att).unwrap();
    }
    f.rt.add(&other, &attach("c2", "eth0")).unwrap();
    let c2_result: Value = serde_json::from_slice::<Value>(
        &fs::read(f.cache_file("gcnet", "c2", "eth0")).unwrap(),
    )
    .unwrap()["result"]
        .clone();
    f.take_log();

    let valid = [Attachment::new("c1", "eth0"), Attachment::new("ghost", "eth9")];
    f.rt.gc(&list, &valid).unwrap();
    let log = f.take_log();
    assert_eq!(tags(&log), ["DEL c", "DEL b", "DEL a", "DEL c", "DEL b", "DEL a", "GC a", "GC b", "GC c"]);
    // The synthesized DELs: the cached netns, ifname, capability args and result.
    for l in &log[..3] {
        assert_eq!((l["containerID"].as_str(), l["ifname"].as_str()), (Some("c2"), Some("eth0")));
        assert_eq!(l["config"]["prevResult"], c2_result);
    }
    assert_eq!(log[2]["config"]["runtimeConfig"], json!({"mac": "00:00:00:00:00:2"}));
    for l in &log[3..6] {
        assert_eq!((l["containerID"].as_str(), l["ifname"].as_str()), (Some("c3"), Some("net1")));
    }
    // GC: both keys, the valid list, no per-attachment fields.
    let expected =
        json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "ghost", "ifname": "eth9"}]);
    for l in &log[6..] {
        let c = &l["config"];
        assert_eq!(c["cni.dev/valid-attachments"], expected);
        assert_eq!(c["cni.dev/attachments"], expected);
        assert_eq!((c["name"].as_str(), c["cniVersion"].as_str()), (Some("gcnet"), Some("1.1.0")));
        assert!(c.get("prevResult").is_none() && c.get("runtimeConfig").is_none());
        assert_eq!(l["containerID"], "");
    }
    assert!(f.cache_file("gcnet", "c1", "eth0").exists());
    assert!(!f.cache_file("gcnet", "c2", "eth0").exists());
    assert!(!f.cache_file("gcnet", "c3", "net1").exists());
    assert!(f.cache_file("othernet", "c2", "eth0").exists(), "other networks are not touched");

    // Nothing stale any more: GC only.
    f.rt.gc(&list, &[Attachment::new("c1", "eth0")]).unwrap();
    assert_eq!(tags(&f.take_log()), ["GC a", "GC b", "GC c"]);
}

#[test]
fn gc_keeps_going_and_joins_errors() {
    let f = Fixture::new();
    let plugins = three([
        json!({"failOn": ["GC"], "failCode": 120}),
        json!({"failOn": ["DEL"], "failCode": 121}),
        json!({"failOn": ["GC"], "failCode": 122}),
    ]);
    let list = f.list("1.1.0", "gcfail", &plugins);
    f.rt.add(&list, &attach("s1", "eth0")).unwrap();
    f.rt.add(&list, &attach("s2", "eth0")).unwrap();
    f.take_log();
    let e = f.rt.gc(&list, &[]).unwrap_err();
    assert_eq!(
        tags(&f.take_log()),
        ["DEL c", "DEL b", "DEL c", "DEL b", "GC a", "GC b", "GC c"],
        "DEL stops at its first error, GC goes on"
    );
    for part in ["s1", "s2", "told to fail DEL", "(code 121)", "(code 120)", "(code 122)"] {
        assert!(e.msg.contains(part), "{:?} lacks {part}", e.msg);
    }
    assert!(f.cache_file("gcfail", "s1", "eth0").exists(), "a failed DEL keeps the entry");
}

#[test]
fn gc_below_110_only_deletes() {
    let f = Fixture::new();
    let list = f.list("1.0.0", "gcold", &three([json!({}), json!({}), json!({})]));
    f.rt.add(&list, &attach("s1", "eth0")).unwrap();
    f.take_log();
    f.rt.gc(&list, &[]).unwrap();
    assert_eq!(tags(&f.take_log()), ["DEL c", "DEL b", "DEL a"]);
    assert!(!f.cache_file("gcold", "s1", "eth0").exists());
}

#[test]
fn disable_gc_skips_everything() {
    let f = Fixture::new();
    let mut json = f.list_json("1.1.0", "nogc", &three([json!({}), json!({}), json!({})]));
    json["disableGC"] = "true".into();
    let list = NetConfList::parse(json.to_string().as_bytes()).unwrap();
    f.rt.add(&list, &attach("s1", "eth0")).unwrap();
    f.take_log();
    f.rt.gc(&list, &[]).unwrap();
    assert!(f.take_log().is_empty());
    assert!(f.cache_file("nogc", "s1", "eth0").exists());
}

#[test]
fn cache_entries_with_dotted_names_do_not_collide() {
    let f = Fixture::new();
    let list = f.list("1.0.0", "dots", &three([json!({}), json!({}), json!({})]));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (rt, list) = (f.rt.clone(), list.clone());
            std::thread::spawn(move || rt.add(&list, &attach(&format!("pod.{i}"), "eth0")).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let entries = f.rt.cache.attachments("dots").unwrap();
    let ids: Vec<&str> = entries.iter().map(|e| e.container_id.as_str()).collect();
    assert_eq!(ids, ["pod.0", "pod.1", "pod.2", "pod.3", "pod.4", "pod.5"]);
    assert_eq!(fs::read_dir(f.cache_dir().join("results")).unwrap().count(), 6);
}

// ---------------------------------------------------------------- loading

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn load_conf_list_picks_by_name_in_filename_order() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(&dir.join("05-broken.conflist"), "{not json");
    write(
        &dir.join("10-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"o"}]}"#,
    );
    let first = r#"{"cniVersion":"1.0.0","name":"net1",  "plugins":[{"type":"first"}]}"#;
    write(&dir.join("20-net.conflist"), first);
    write(
        &dir.join("30-net.conflist"),
        r#"{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"second"}]}"#,
    );
    write(&dir.join("00-net.conf"), r#"{"cniVersion":"1.0.0","name":"net1","type":"legacy"}"#);

    let l = load_conf_list(dir, "net1").unwrap();
    assert_eq!(l.plugin_types(), ["first"]);
    assert_eq!(l.to_bytes(), first.as_bytes(), "the file's bytes, verbatim, for the cache");
    assert_eq!(load_conf_list(dir, "other").unwrap().plugin_types(), ["o"]);
    let e = load_conf_list(dir, "missing").unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("missing"));

    // A broken file that names the network asked for is an error.
    write(&dir.join("01-bad.conflist"), r#"{"cniVersion":"1.0.0","name":"net1","plugins":{}}"#);
    let e = load_conf_list(dir, "net1").unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("01-bad.conflist") && e.msg.contains("plugins"), "{}", e.msg);
}

#[test]
fn load_conf_list_appends_side_directory_plugins() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(
        &dir.join("10-net.conflist"),
        r#"{"cniVersion":"1.1.0","name":"net1","plugins":[{"type":"inline"}]}"#,
    );
    write(&dir.join("net1/20-b.conf"), r#"{"type":"side-b","opt":1}"#);
    write(&dir.join("net1/10-a.conf"), r#"{"type":"side-a"}"#);
    write(&dir.join("net1/30-c.json"), r#"{"type":"not-loaded"}"#);
    let l = load_conf_list(dir, "net1").unwrap();
    assert_eq!(l.plugin_types(), ["inline", "side-a", "side-b"]);
    assert_eq!(l.plugins[2]["opt"], 1);

    write(
        &dir.join("10-net.conflist"),
        r#"{"cniVersion":"1.1.0","name":"net1","loadOnlyInlinedPlugins":true,"plugins":[{"type":"inline"}]}"#,
    );
    assert_eq!(load_conf_list(dir, "net1").unwrap().plugin_types(), ["inline"]);

    // A list with no inline plugins at all, filled from its folder.
    write(&dir.join("20-side.conflist"), r#"{"cniVersion":"1.1.0","name":"sideonly"}"#);
    write(&dir.join("sideonly/x.conf"), r#"{"type":"x"}"#);
    assert_eq!(load_conf_list(dir, "sideonly").unwrap().plugin_types(), ["x"]);

    // A side plugin without a type fails the list.
    write(&dir.join("sideonly/y.conf"), r#"{"notype":1}"#);
    let e = load_conf_list(dir, "sideonly").unwrap_err();
    assert!(e.code == 7 && e.msg.contains("plugins[1].type"), "{}", e.msg);
}

#[test]
fn load_conf_list_falls_back_to_a_legacy_conf() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(
        &dir.join("10-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"o"}]}"#,
    );
    write(
        &dir.join("50-old.conf"),
        r#"{"cniVersion":"0.3.1","name":"legacy","type":"bridge","bridge":"cni0"}"#,
    );
    write(&dir.join("60-json.json"), r#"{"cniVersion":"0.2.0","name":"legacyjson","type":"macvlan"}"#);
    let l = load_conf_list(dir, "legacy").unwrap();
    assert_eq!(l.name, "legacy");
    assert_eq!(l.version().unwrap(), Version::V0_3_1);
    assert_eq!(l.plugin_types(), ["bridge"]);
    assert_eq!(l.plugins[0]["bridge"], "cni0");
    assert_eq!(load_conf_list(dir, "legacyjson").unwrap().version().unwrap(), Version::V0_2_0);
}

// ---------------------------------------------------------------- cnictl

struct Ctl {
    f: Fixture,
    conf_dir: PathBuf,
}

impl Ctl {
    fn new(version: &str, plugins: &[Value]) -> Self {
        let f = Fixture::new();
        let conf_dir = f.dir.path().join("net.d");
        let list = f.list_json(version, "ctlnet", plugins);
        write(&conf_dir.join("10-ctl.conflist"), &list.to_string());
        Ctl { f, conf_dir }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
        let mut cmd = std::process::Command::new(CNICTL);
        cmd.env_clear()
            .args(args)
            .env("NETCONFPATH", &self.conf_dir)
            .env("CNI_PATH", format!("/nonexistent:{}", bin_dir().display()))
            .env("CNI_CACHE_DIR", self.f.cache_dir());
        cmd.envs(env.iter().copied());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.output().unwrap()
    }
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cnictl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn cnictl_add_check_status_del() {
    let ctl = Ctl::new(
        "1.1.0",
        &[json!({"tag": "a", "capabilities": {"mac": true}}), json!({"tag": "b", "ip": "10.7.0.2/24"})],
    );
    let env =
        [("CNI_CONTAINERID", "ctl1"), ("CAP_ARGS", r#"{"mac":"0a:58:0a:07:00:02"}"#), ("CNI_ARGS", "K=V")];
    let out = ok(&ctl.run(&["add", "ctlnet", "/run/netns/ctl1"], &env, None));
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"], json!([{"name": "a"}, {"name": "b"}]));
    assert_eq!(result["ips"][0]["address"], "10.7.0.2/24");
    let log = ctl.f.take_log();
    assert_eq!(tags(&log), ["ADD a", "ADD b"]);
    assert_eq!(log[0]["ifname"], "eth0", "CNI_IFNAME defaults to eth0");
    assert_eq!(log[0]["config"]["runtimeConfig"], json!({"mac": "0a:58:0a:07:00:02"}));
    let file = ctl.f.cache_file("ctlnet", "ctl1", "eth0");
    let cached: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(cached["netns"], "/run/netns/ctl1");
    assert_eq!(cached["cniArgs"], json!([["K", "V"]]));
    assert_eq!(
        SuccessResult::from_value(cached["result"].clone(), Version::V1_1_0).unwrap().interfaces.len(),
        2
    );

    ok(&ctl.run(&["check", "ctlnet", "/run/netns/ctl1"], &env, None));
    assert_eq!(tags(&ctl.f.take_log()), ["CHECK a", "CHECK b"]);
    ok(&ctl.run(&["status", "ctlnet"], &[], None));
    assert_eq!(tags(&ctl.f.take_log()), ["STATUS a", "STATUS b"]);
    ok(&ctl.run(&["del", "ctlnet", "/run/netns/ctl1"], &env, None));
    assert_eq!(tags(&ctl.f.take_log()), ["DEL b", "DEL a"]);
    assert!(!file.exists());

    let out = ctl.run(&["check", "ctlnet", "/run/netns/ctl1"], &env, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(code 3)"));
    let out = ctl.run(&["add", "nonet", "/run/netns/ctl1"], &env, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonet"));
    let out = ctl.run(&["add", "ctlnet", "/run/netns/ctl1"], &[("CNI_IFNAME", "bad/name")], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CNI_IFNAME"));
}

#[test]
fn cnictl_ifname_and_failures() {
    let ctl = Ctl::new(
        "1.1.0",
        &[json!({"tag": "a", "notReady": true}), json!({"tag": "b", "failOn": ["ADD"], "failCode": 140})],
    );
    let out = ctl.run(&["status", "ctlnet"], &[], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(code 50)"));
    let out = ctl.run(
        &["add", "ctlnet", "/run/netns/x"],
        &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "net1")],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(code 140)"));
    let log = ctl.f.take_log();
    assert_eq!(tags(&log), ["STATUS a", "ADD a", "ADD b"]);
    assert_eq!(log[1]["ifname"], "net1");
}

#[test]
fn cnictl_gc_with_valid_attachments() {
    let ctl = Ctl::new("1.1.0", &[json!({"tag": "a"}), json!({"tag": "b"})]);
    for cid in ["ctl1", "ctl2"] {
        ok(&ctl.run(&["add", "ctlnet", &format!("/run/netns/{cid}")], &[("CNI_CONTAINERID", cid)], None));
    }
    ctl.f.take_log();
    ok(&ctl.run(&["gc", "ctlnet", "--valid", "ctl2:eth0", "--valid", "gone:net9"], &[], None));
    let log = ctl.f.take_log();
    assert_eq!(tags(&log), ["DEL b", "DEL a", "GC a", "GC b"]);
    assert_eq!(log[0]["containerID"], "ctl1");
    assert_eq!(
        log[2]["config"]["cni.dev/valid-attachments"],
        json!([{"containerID": "ctl2", "ifname": "eth0"}, {"containerID": "gone", "ifname": "net9"}])
    );
    assert!(!ctl.f.cache_file("ctlnet", "ctl1", "eth0").exists());
    assert!(ctl.f.cache_file("ctlnet", "ctl2", "eth0").exists());
    let out = ctl.run(&["gc", "ctlnet", "--valid", "no-colon"], &[], None);
    assert!(!out.status.success());
    assert!(ctl.f.take_log().is_empty());
}

#[test]
fn cnictl_container_id_is_cnitools() {
    let ctl = Ctl::new("1.0.0", &[json!({"tag": "a"})]);
    let cwd = ctl.f.dir.path().canonicalize().unwrap();
    // cnitool: filepath.Abs (which also cleans `..`), then sha512.
    let abs = format!("{}/pod-ns", cwd.display());
    let digest = Sha512::digest(abs.as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    let expected = format!("cnitool-{hex}");
    assert_eq!(expected.len(), "cnitool-".len() + 20);

    for arg in ["pod-ns", "./pod-ns", "sub/../pod-ns", abs.as_str()] {
        ok(&ctl.run(&["add", "ctlnet", arg], &[], Some(&cwd)));
        let log = ctl.f.take_log();
        assert_eq!(log[0]["containerID"], expected.as_str(), "netns argument {arg:?}");
        let file = ctl.f.cache_file("ctlnet", &expected, "eth0");
        let cached: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(cached["netns"], abs.as_str());
        ok(&ctl.run(&["del", "ctlnet", arg], &[], Some(&cwd)));
        assert!(!file.exists());
        ctl.f.take_log();
    }
    // A different path, a different ID; CNI_CONTAINERID wins over the derived one.
    ok(&ctl.run(&["add", "ctlnet", "other-ns"], &[], Some(&cwd)));
    assert_ne!(ctl.f.take_log()[0]["containerID"], expected.as_str());
    ok(&ctl.run(&["add", "ctlnet", "pod-ns"], &[("CNI_CONTAINERID", "given")], Some(&cwd)));
    assert_eq!(ctl.f.take_log()[0]["containerID"], "given");
}

// ---------------------------------------------------------------- plugins as scripts

/// A fixture whose path starts with a directory of shell-script plugins.
fn with_scripts(f: &Fixture, scripts: &[(&str, &str)]) -> Runtime {
    let dir = f.dir.path().join("scripts");
    fs::create_dir_all(&dir).unwrap();
    for (name, body) in scripts {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    Runtime::new(vec![dir, bin_dir()]).with_cache_dir(f.cache_dir())
}

fn list_of(version: &str, types: &[&str], f: &Fixture) -> NetConfList {
    let plugins: Vec<Value> = types
        .iter()
        .map(|t| json!({"type": t, "tag": format!("{t}-tag"), "logFile": f.log_path()}))
        .collect();
    let json = json!({"cniVersion": version, "name": "scripted", "plugins": plugins});
    NetConfList::parse(json.to_string().as_bytes()).unwrap()
}

#[test]
fn plugin_outputs_that_are_not_error_objects() {
    let f = Fixture::new();
    let rt = with_scripts(
        &f,
        &[
            ("garbage", "echo 'this is not JSON'; exit 1"),
            ("silent", "echo 'something broke' >&2; exit 3"),
            ("mute", "exit 2"),
            ("badresult", r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"nope"}]}'"#),
            ("notjson", "echo '{'"),
        ],
    );
    let att = attach("p", "eth0");
    let e = rt.add(&list_of("1.0.0", &["garbage"], &f), &att).unwrap_err();
    assert_eq!(e.code, 6);
    assert!(e.msg.contains("this is not JSON"), "{}", e.msg);
    let e = rt.add(&list_of("1.0.0", &["silent"], &f), &att).unwrap_err();
    assert_eq!(e.code, 999);
    assert!(e.msg.contains("something broke"), "{}", e.msg);
    let e = rt.add(&list_of("1.0.0", &["mute"], &f), &att).unwrap_err();
    assert_eq!(e.code, 999);
    assert!(e.msg.contains("no error message"), "{}", e.msg);
    let e = rt.add(&list_of("1.0.0", &["badresult"], &f), &att).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("ips[0]"), "{}", e.msg);
    assert_eq!(rt.add(&list_of("1.0.0", &["notjson"], &f), &att).unwrap_err().code, 6);
    assert!(!f.cache_dir().exists());
}

#[test]
fn a_result_in_its_own_version_is_converted_to_the_lists() {
    let f = Fixture::new();
    let rt = with_scripts(
        &f,
        &[
            (
                "newer",
                r#"echo '{"cniVersion":"1.1.0","interfaces":[{"name":"n0","mtu":9000}],"ips":[{"address":"10.4.0.2/24","interface":0}]}'"#,
            ),
            ("unversioned", r#"echo '{"interfaces":[{"name":"u0"}],"ips":[{"address":"fd00::2/64"}]}'"#),
            (
                "legacy",
                r#"echo '{"cniVersion":"0.2.0","ip4":{"ip":"10.8.0.2/24","routes":[{"dst":"0.0.0.0/0"}]}}'"#,
            ),
        ],
    );
    let att = attach("p", "eth0");
    let r = rt.add(&list_of("0.4.0", &["newer", "cni-echo"], &f), &att).unwrap();
    assert_eq!(r.interfaces[0].mtu, None, "converted to 0.4.0 on the way");
    let log = f.take_log();
    assert_eq!(
        log[0]["config"]["prevResult"],
        json!({"cniVersion": "0.4.0", "interfaces": [{"name": "n0"}],
               "ips": [{"version": "4", "address": "10.4.0.2/24", "interface": 0}]})
    );
    // No cniVersion: read as the list's version (libcni's fixupResultVersion).
    let r = rt.add(&list_of("1.0.0", &["unversioned", "cni-echo"], &f), &att).unwrap();
    assert_eq!(r.ips[0].address.to_string(), "fd00::2/64");
    assert_eq!(f.take_log()[0]["config"]["prevResult"]["interfaces"], json!([{"name": "u0"}]));
    // A 0.2.0 result in a 1.0.0 list: flattened.
    let r = rt.add(&list_of("1.0.0", &["legacy"], &f), &att).unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.8.0.2/24");
    assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
    // A 0.2.0 list keeps its shape in the cache.
    let r = rt.add(&list_of("0.2.0", &["legacy"], &f), &attach("q", "eth0")).unwrap();
    let cached: Value =
        serde_json::from_slice(&fs::read(f.cache_file("scripted", "q", "eth0")).unwrap()).unwrap();
    assert_eq!(cached["result"], r.to_value(Version::V0_2_0).unwrap());
    assert_eq!(cached["result"]["ip4"]["ip"], "10.8.0.2/24");
}

#[test]
fn plugin_lookup_and_version_probe() {
    let f = Fixture::new();
    let rt = with_scripts(
        &f,
        &[
            ("old-version", r#"echo '{"cniVersion":"0.2.0"}'"#),
            ("no-supported", r#"echo '{"cniVersion":"0.4.0"}'"#),
        ],
    );
    // Not executable: not found, and the error names CNI_PATH.
    let dir = f.dir.path().join("scripts");
    fs::write(dir.join("noexec"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(dir.join("noexec"), fs::Permissions::from_mode(0o644)).unwrap();
    let e = rt.add(&list_of("1.0.0", &["noexec"], &f), &attach("p", "eth0")).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(e.msg.contains("CNI_PATH") && e.msg.contains("noexec"), "{}", e.msg);

    let info = rt.version_info("cni-echo").unwrap();
    assert_eq!(info.cni_version, "1.1.0");
    let all: Vec<String> = Version::ALL.iter().map(|v| v.to_string()).collect();
    assert_eq!(info.supported_versions, all);
    assert_eq!(rt.version_info("old-version").unwrap().supported_versions, ["0.1.0", "0.2.0"]);
    assert_eq!(rt.version_info("no-supported").unwrap_err().code, 6);
    assert_eq!(rt.version_info("absent").unwrap_err().code, 4);
}

// ---------------------------------------------------------------- delegation

mod delegation {
    use super::*;
    use cni_spec::Environment;
    use cni_spec::delegate::Delegate;

    fn env(command: &str, path: &str) -> Environment {
        let vars = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "d1"),
            ("CNI_NETNS", "/run/netns/d1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "A=1"),
            ("CNI_PATH", path),
        ];
        Environment::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
    }

    #[test]
    fn delegate_runs_the_plugin_with_the_same_environment() {
        let f = Fixture::new();
        let path = format!("/nonexistent:{}", bin_dir().display());
        let config = json!({"cniVersion": "1.0.0", "name": "dnet", "type": "outer",
            "tag": "ipam", "ip": "10.6.0.2/24", "logFile": f.log_path()});
        let config = serde_json::to_vec(&config).unwrap();
        let d = Delegate::new("cni-echo", env("ADD", &path), Version::V1_0_0);
        assert_eq!(d.plugin(), "cni-echo");

        let r = d.add(&config).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.6.0.2/24");
        d.check(
            &serde_json::to_vec(
                &json!({"cniVersion": "1.0.0", "name": "dnet", "type": "outer", "tag": "ipam",
            "logFile": f.log_path(), "prevResult": r.to_value(Version::V1_0_0).unwrap()}),
            )
            .unwrap(),
        )
        .unwrap();
        d.del(&config).unwrap();
        let log = f.take_log();
        let commands: Vec<&str> = log.iter().map(|l| l["command"].as_str().unwrap()).collect();
        assert_eq!(commands, ["ADD", "CHECK", "DEL"]);
        for l in &log {
            assert_eq!((l["containerID"].as_str(), l["ifname"].as_str()), (Some("d1"), Some("eth0")));
            assert_eq!(l["config"]["type"], "outer", "the complete config is passed on");
        }

        // A guarded ADD is undone when dropped, and not when kept.
        {
            let added = d.add_guarded(&config).unwrap();
            assert_eq!(added.result().interfaces[0].name, "ipam");
        }
        let kept = d.add_guarded(&config).unwrap().keep();
        assert_eq!(kept.ips.len(), 1);
        let commands: Vec<String> =
            f.take_log().iter().map(|l| l["command"].as_str().unwrap().to_string()).collect();
        assert_eq!(commands, ["ADD", "DEL", "ADD"]);

        // Errors of the delegate come back with their code; a missing one names CNI_PATH.
        let failing = json!({"cniVersion": "1.0.0", "name": "dnet", "type": "outer", "failOn": ["ADD"], "failCode": 111});
        assert_eq!(d.add(&serde_json::to_vec(&failing).unwrap()).unwrap_err().code, 111);
        let missing = Delegate::new("cni-echo", env("ADD", "/nonexistent"), Version::V1_0_0);
        let e = missing.add(&config).unwrap_err();
        assert!(e.code == 4 && e.msg.contains("CNI_PATH"), "{e}");
        let gc =
            json!({"cniVersion": "1.1.0", "name": "dnet", "type": "outer", "cni.dev/valid-attachments": []});
        Delegate::new("cni-echo", env("GC", &path), Version::V1_1_0)
            .gc(&serde_json::to_vec(&gc).unwrap())
            .unwrap();
    }
}
