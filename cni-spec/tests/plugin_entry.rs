//! The plugin entry point, driven in-process through `plugin::dispatch` with a small test
//! plugin: VERSION, the version gates, result versions, error objects, panics, GC keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use cni_spec::plugin::{Attachment, Outcome, dispatch};
use cni_spec::{Code, Command, Error, Interface, IpConfig, Plugin, Request, Route, SuccessResult, Version};
use serde::Deserialize;
use serde_json::{Value, json};

/// What the test plugin saw of one call.
#[derive(Debug, Clone)]
struct Call {
    command: Command,
    container_id: String,
    netns: Option<PathBuf>,
    ifname: String,
    args: Vec<(String, String)>,
    raw: Vec<u8>,
    attachments: Option<Vec<Attachment>>,
}

/// A plugin driven by its config: `fail` (a code), `panic`, `noIp`, `notReady`.
#[derive(Default)]
struct TestPlugin {
    supported: Option<Vec<Version>>,
    calls: Mutex<Vec<Call>>,
}

impl TestPlugin {
    fn supporting(versions: &[Version]) -> Self {
        TestPlugin { supported: Some(versions.to_vec()), ..Default::default() }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn start(&self, req: &Request) -> Result<(), Error> {
        let attachments = if req.env.command == Command::Gc { req.valid_attachments()? } else { None };
        self.calls.lock().unwrap().push(Call {
            command: req.env.command,
            container_id: req.env.container_id.clone(),
            netns: req.env.netns.clone(),
            ifname: req.env.ifname.clone(),
            args: req.env.args.pairs.clone(),
            raw: req.raw.clone(),
            attachments,
        });
        let extra = &req.config.extra;
        if extra.get("panic") == Some(&Value::Bool(true)) {
            panic!("test plugin told to panic on {}", req.env.command);
        }
        if let Some(code) = extra.get("fail").and_then(Value::as_u64) {
            return Err(Error::with_code(code as u32, "told to fail").with_details("as asked"));
        }
        Ok(())
    }
}

impl Plugin for TestPlugin {
    fn supported_versions(&self) -> &[Version] {
        self.supported.as_deref().unwrap_or(&Version::ALL)
    }

    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        self.start(req)?;
        let mut result = req.prev_result()?.unwrap_or_default();
        let netns = req.env.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        result.interfaces.push(Interface::new(&req.env.ifname).with_sandbox(netns));
        if req.config.extra.get("noIp").is_none() {
            let mut ip =
                IpConfig::new("10.0.0.2/24".parse().unwrap()).with_gateway("10.0.0.1".parse().unwrap());
            ip.interface = Some(result.interfaces.len() - 1);
            result.ips.push(ip);
            result.routes.push(Route::new("0.0.0.0/0".parse().unwrap(), None));
        }
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        self.start(req)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        self.start(req)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        self.start(req)?;
        if req.config.extra.contains_key("notReady") {
            return Err(Error::new(Code::NotAvailable, "not ready"));
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        self.start(req)
    }
}

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

/// The environment of a normal per-container call.
fn env(command: &str) -> impl Fn(&str) -> Option<String> + use<> {
    lookup(&[
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", "/run/netns/ctr-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAME=web;IgnoreUnknown=1"),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

fn conf(version: &str, extra: Value) -> Vec<u8> {
    let mut c = json!({"cniVersion": version, "name": "testnet", "type": "test"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

fn run(p: &TestPlugin, command: &str, stdin: Vec<u8>) -> Outcome {
    dispatch(p, env(command), stdin)
}

/// The error object of a failed outcome (and its exit status is 1).
#[track_caller]
fn error_of(out: &Outcome) -> Value {
    assert_eq!(out.exit, 1, "expected a failure: {out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("the error is JSON");
    let _: Error = serde_json::from_value(v.clone()).expect("the error is an error object");
    v
}

#[track_caller]
fn success(out: &Outcome) -> &str {
    assert_eq!(out.exit, 0, "expected success: {out:?}");
    &out.stdout
}

fn all_strings() -> Vec<&'static str> {
    Version::ALL.iter().map(|v| v.as_str()).collect()
}

// ---------------------------------------------------------------- VERSION

#[test]
fn version_without_stdin_answers_newest() {
    let p = TestPlugin::default();
    let out = dispatch(&p, lookup(&[("CNI_COMMAND", "VERSION")]), Vec::new());
    let v: Value = serde_json::from_str(success(&out)).unwrap();
    assert_eq!(v, json!({"cniVersion": "1.1.0", "supportedVersions": all_strings()}));
    assert!(p.calls().is_empty(), "VERSION is answered by the library");
}

#[test]
fn version_with_stdin() {
    let p = TestPlugin::default();
    let ask = |p: &TestPlugin, stdin: &[u8]| -> Value {
        let out = dispatch(p, lookup(&[("CNI_COMMAND", "VERSION")]), stdin.to_vec());
        serde_json::from_str(success(&out)).unwrap()
    };
    assert_eq!(ask(&p, br#"{"cniVersion":"0.4.0"}"#)["cniVersion"], "0.4.0");
    assert_eq!(ask(&p, br#"{"cniVersion":"0.2.0"}"#)["cniVersion"], "0.2.0");
    assert_eq!(ask(&p, br#"{"cniVersion":"9.9.9"}"#)["cniVersion"], "1.1.0");
    assert_eq!(ask(&p, b"{}")["cniVersion"], "1.1.0");
    // Stdin that does not decode is code 6, as for every command.
    let bad = dispatch(&p, lookup(&[("CNI_COMMAND", "VERSION")]), b"not json".to_vec());
    assert_eq!(error_of(&bad)["code"], 6);
    // libcni's probe, with the fake variables it sets.
    let probe = dispatch(
        &p,
        lookup(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
        ]),
        br#"{"cniVersion":"1.1.0"}"#.to_vec(),
    );
    assert_eq!(serde_json::from_str::<Value>(success(&probe)).unwrap()["cniVersion"], "1.1.0");

    // A plugin limited to 1.0.0 answers a 1.1.0 question in 1.0.0, listing what it has.
    let old = TestPlugin::supporting(&Version::ALL[..6]);
    let v = ask(&old, br#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(v, json!({"cniVersion": "1.0.0", "supportedVersions": all_strings()[..6]}));
    assert_eq!(ask(&old, br#"{"cniVersion":"0.3.1"}"#)["cniVersion"], "0.3.1");
}

// ---------------------------------------------------------------- version gates

#[test]
fn command_gates() {
    for v in Version::ALL {
        for (command, allowed) in [
            ("ADD", true),
            ("DEL", true),
            ("CHECK", v >= Version::V0_4_0),
            ("STATUS", v >= Version::V1_1_0),
            ("GC", v >= Version::V1_1_0),
        ] {
            let p = TestPlugin::default();
            let out = run(&p, command, conf(v.as_str(), json!({})));
            if allowed {
                success(&out);
                assert_eq!(p.calls().len(), 1, "{command} {v}");
                assert_eq!(p.calls()[0].command.as_str(), command);
            } else {
                let e = error_of(&out);
                assert_eq!(e["code"], 1, "{command} {v}");
                assert_eq!(e["cniVersion"], v.as_str());
                assert!(e["msg"].as_str().unwrap().contains(command), "{e}");
                assert!(p.calls().is_empty(), "{command} must not reach the plugin at {v}");
            }
        }
    }
}

#[test]
fn unsupported_version_lists_the_plugins_versions() {
    let p = TestPlugin::supporting(&[Version::V0_3_1, Version::V0_4_0, Version::V1_0_0]);
    for (command, version) in [("ADD", "1.1.0"), ("DEL", "0.2.0"), ("CHECK", "0.3.0")] {
        let e = error_of(&run(&p, command, conf(version, json!({}))));
        assert_eq!(e["code"], 1);
        assert_eq!(e["msg"], "incompatible CNI versions");
        assert_eq!(
            e["details"],
            format!(r#"config is "{version}", plugin supports ["0.3.1" "0.4.0" "1.0.0"]"#)
        );
    }
    // A version no library knows: still the plugin's own list.
    let e = error_of(&run(&p, "ADD", conf("7.0.0", json!({}))));
    assert_eq!(e["code"], 1);
    assert_eq!(e["details"], r#"config is "7.0.0", plugin supports ["0.3.1" "0.4.0" "1.0.0"]"#);
    assert!(e.get("cniVersion").is_none(), "the config's version is unknown");
    assert!(p.calls().is_empty());
}

// ---------------------------------------------------------------- results

#[test]
fn result_is_printed_in_the_configs_version() {
    for v in Version::ALL {
        let p = TestPlugin::default();
        let out = run(&p, "ADD", conf(v.as_str(), json!({})));
        let json: Value = serde_json::from_str(success(&out)).unwrap();
        assert_eq!(json["cniVersion"], v.as_str());
        if v.has_legacy_result() {
            assert_eq!(
                json["ip4"],
                json!({"ip": "10.0.0.2/24", "gateway": "10.0.0.1", "routes": [{"dst": "0.0.0.0/0"}]})
            );
            assert!(json.get("ips").is_none() && json.get("interfaces").is_none());
        } else {
            assert_eq!(json["interfaces"], json!([{"name": "eth0", "sandbox": "/run/netns/ctr-1"}]));
            assert_eq!(json["ips"][0]["address"], "10.0.0.2/24");
            assert_eq!(json["ips"][0]["interface"], 0);
            assert_eq!(
                json["ips"][0].get("version").and_then(Value::as_str),
                v.has_ip_version().then_some("4")
            );
        }
        // Parseable as what it claims to be.
        SuccessResult::from_slice(out.stdout.as_bytes(), Version::V1_1_0).unwrap();
    }
}

#[test]
fn prev_result_is_read_in_the_configs_version() {
    let p = TestPlugin::default();
    let prev = json!({"cniVersion": "0.3.1", "interfaces": [{"name": "br0"}],
        "ips": [{"version": "4", "address": "10.0.0.9/24", "interface": 0}]});
    let out = run(&p, "ADD", conf("0.3.1", json!({"prevResult": prev})));
    let r = SuccessResult::from_slice(success(&out).as_bytes(), Version::V0_3_1).unwrap();
    let names: Vec<&str> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["br0", "eth0"]);
    assert_eq!(r.ips.len(), 2);
    assert_eq!(r.ips[1].interface, Some(1));
    // A broken prevResult is the plugin's error, reported with the config's version.
    let out = run(&p, "ADD", conf("1.0.0", json!({"prevResult": {"ips": [{"address": "nope"}]}})));
    let e = error_of(&out);
    assert_eq!((e["code"].as_u64(), e["cniVersion"].as_str()), (Some(7), Some("1.0.0")));
}

#[test]
fn legacy_result_without_address_is_code_1() {
    let p = TestPlugin::default();
    for v in ["0.1.0", "0.2.0"] {
        let e = error_of(&run(&p, "ADD", conf(v, json!({"noIp": true}))));
        assert_eq!(e["code"], 1);
        assert_eq!(e["cniVersion"], v);
        assert!(e["msg"].as_str().unwrap().contains("no valid IP addresses"));
    }
    success(&run(&p, "ADD", conf("0.3.0", json!({"noIp": true}))));
}

// ---------------------------------------------------------------- errors

#[test]
fn plugin_errors_are_json_with_version_and_code() {
    let p = TestPlugin::default();
    for command in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        let out = run(&p, command, conf("1.1.0", json!({"fail": 117})));
        assert_eq!(out.exit, 1);
        // cniVersion first, then the Go fields.
        assert_eq!(
            out.stdout, r#"{"cniVersion":"1.1.0","code":117,"msg":"told to fail","details":"as asked"}"#,
            "{command}"
        );
    }
    assert_eq!(p.calls().len(), 5);
    let e = error_of(&run(&p, "STATUS", conf("1.1.0", json!({"notReady": true}))));
    assert_eq!((e["code"].as_u64(), e["cniVersion"].as_str()), (Some(50), Some("1.1.0")));
}

#[test]
fn environment_errors_are_code_4_without_version() {
    let p = TestPlugin::default();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")], "CNI_COMMAND"),
        (&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")], "CNI_CONTAINERID"),
        (&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")], "CNI_NETNS"),
        (&[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/n")], "CNI_IFNAME"),
        (
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "a:b")],
            "CNI_IFNAME",
        ),
        (
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "broken"),
            ],
            "CNI_ARGS",
        ),
        (&[("CNI_COMMAND", "GC")], "CNI_PATH"),
        (&[("CNI_COMMAND", "REMOVE")], "CNI_COMMAND"),
    ];
    for (vars, named) in cases {
        let e = error_of(&dispatch(&p, lookup(vars), conf("1.1.0", json!({}))));
        assert_eq!(e["code"], 4, "{vars:?}");
        assert!(e["msg"].as_str().unwrap().contains(named), "{e} should name {named}");
        assert!(e.get("cniVersion").is_none());
    }
    assert!(p.calls().is_empty());
}

#[test]
fn panics_become_code_999() {
    let p = TestPlugin::default();
    for command in ["ADD", "DEL", "GC"] {
        let e = error_of(&run(&p, command, conf("1.1.0", json!({"panic": true}))));
        assert_eq!(e["code"], 999);
        assert_eq!(e["cniVersion"], "1.1.0");
        let msg = e["msg"].as_str().unwrap();
        assert!(msg.contains("panic") && msg.contains(command), "{msg}");
    }
    // The entry point still works afterwards.
    success(&run(&p, "ADD", conf("1.1.0", json!({}))));
}

#[test]
fn bad_stdin() {
    let p = TestPlugin::default();
    // Nothing to decode, or a key given twice: code 6.
    for empty in [&b""[..], b"  \n\t", br#"{"cniVersion":"1.0.0","name":"n","type":"test","type":"x"}"#] {
        let e = error_of(&run(&p, "ADD", empty.to_vec()));
        assert_eq!(e["code"], 6, "{e}");
    }
    // A config without cniVersion (missing, null or empty) is refused, naming it.
    for conf in [
        json!({"name": "n", "type": "test"}),
        json!({"cniVersion": null, "name": "n", "type": "test"}),
        json!({"cniVersion": "", "name": "n", "type": "test"}),
    ] {
        let e = error_of(&run(&p, "ADD", conf.to_string().into_bytes()));
        assert_eq!(e["code"], 7, "{conf}");
        assert!(e["msg"].as_str().unwrap().contains("cniVersion"), "{e}");
    }
    let e = error_of(&run(&p, "ADD", b"[1]".to_vec()));
    assert_eq!(e["code"], 7);
    let e = error_of(&run(&p, "ADD", b"{\"cniVersion\":".to_vec()));
    assert_eq!(e["code"], 6);
    assert!(e["msg"].as_str().unwrap().contains("line 1"));
    let e = error_of(&run(&p, "DEL", br#"{"cniVersion":"1.0.0","name":"n"}"#.to_vec()));
    assert_eq!(e["code"], 7);
    assert!(e["msg"].as_str().unwrap().contains("type"));
    // STATUS and GC need a config as well.
    assert_eq!(error_of(&run(&p, "STATUS", Vec::new()))["code"], 6);
    assert!(p.calls().is_empty());
}

// ---------------------------------------------------------------- requests

#[test]
fn request_carries_env_and_raw_config() {
    let p = TestPlugin::default();
    let stdin = conf("1.0.0", json!({"mtu": 1400}));
    success(&run(&p, "ADD", stdin.clone()));
    let call = &p.calls()[0];
    assert_eq!(call.container_id, "ctr-1");
    assert_eq!(call.netns.as_deref(), Some(std::path::Path::new("/run/netns/ctr-1")));
    assert_eq!(call.ifname, "eth0");
    assert_eq!(
        call.args,
        [("K8S_POD_NAME".to_string(), "web".to_string()), ("IgnoreUnknown".into(), "1".into())]
    );
    assert_eq!(call.raw, stdin);

    // DEL without a netns.
    let vars = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "ctr-1"), ("CNI_IFNAME", "eth0")];
    success(&dispatch(&p, lookup(&vars), conf("1.0.0", json!({}))));
    assert_eq!(p.calls()[1].netns, None);
}

#[test]
fn plugin_options_errors_name_the_field() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Opts {
        mtu: u32,
    }
    let req = Request::new(
        cni_spec::Environment::from_lookup(env("ADD")).unwrap(),
        conf("1.0.0", json!({"mtu": "big"})),
    )
    .unwrap();
    let e = req.parse_config::<Opts>().unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("mtu"), "{}", e.msg);
    let req = Request::new(cni_spec::Environment::from_lookup(env("ADD")).unwrap(), conf("1.0.0", json!({})))
        .unwrap();
    let e = req.parse_config::<Opts>().unwrap_err();
    assert!(e.code == 7 && e.msg.contains("mtu"), "{}", e.msg);
}

fn gc_with(extra: Value) -> Outcome {
    let p = TestPlugin::default();
    let out =
        dispatch(&p, lookup(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]), conf("1.1.0", extra));
    if out.exit == 0 {
        let calls = p.calls();
        assert_eq!(calls.len(), 1);
        return Outcome { stdout: serde_json::to_string(&calls[0].attachments).unwrap(), exit: 0 };
    }
    out
}

#[test]
fn gc_reads_valid_attachments_and_falls_back_to_the_old_key() {
    let a = json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]);
    let b = json!([{"containerID": "old", "ifname": "eth0"}]);
    let seen = |extra: Value| -> Value { serde_json::from_str(success(&gc_with(extra))).unwrap() };
    assert_eq!(seen(json!({"cni.dev/valid-attachments": a})), a);
    assert_eq!(seen(json!({"cni.dev/attachments": b})), b);
    assert_eq!(seen(json!({"cni.dev/valid-attachments": a, "cni.dev/attachments": b})), a);
    assert_eq!(seen(json!({"cni.dev/valid-attachments": null, "cni.dev/attachments": b})), b);
    assert_eq!(seen(json!({"cni.dev/valid-attachments": []})), json!([]));
    assert_eq!(seen(json!({})), Value::Null);
    let e = error_of(&gc_with(json!({"cni.dev/valid-attachments": [{"containerID": 5}]})));
    assert_eq!(e["code"], 7);
    assert!(e["msg"].as_str().unwrap().contains("cni.dev/valid-attachments"));
}

// ---------------------------------------------------------------- as a process (`plugin::run`)

mod process {
    use std::io::Write;
    use std::process::{Command as Process, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    const ECHO: &str = env!("CARGO_BIN_EXE_cni-echo");

    fn echo(env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
        let mut child = Process::new(ECHO)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A plugin that fails before reading stdin (no command) may close it first.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (out.status.code().unwrap(), text(out.stdout), text(out.stderr))
    }

    #[test]
    fn without_command_it_prints_about_and_fails_without_reading_stdin() {
        // stdin stays open: the plugin must not wait for it.
        let mut child = Process::new(ECHO)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let status = status.expect("the plugin waited for stdin");
        // No command is a bad environment: code 4 naming CNI_COMMAND, exit 1.
        assert_eq!(status.code(), Some(1));
        let e: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e["code"], 4);
        assert!(e["msg"].as_str().unwrap().contains("CNI_COMMAND"), "{e}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("cni-echo: a CNI test plugin"), "{stderr}");
        assert!(
            stderr.contains(r#"CNI protocol versions supported: ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#),
            "{stderr}"
        );
    }

    #[test]
    fn version_add_and_errors_through_the_process() {
        let (code, out, _) = echo(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(code, 0);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["cniVersion"], "0.4.0");

        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        let conf = br#"{"cniVersion":"0.3.1","name":"n","type":"cni-echo","tag":"t0","ip":"10.0.0.2/24"}"#;
        let (code, out, _) = echo(&env, conf);
        assert_eq!(code, 0);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"cniVersion": "0.3.1", "interfaces": [{"name": "t0"}],
                   "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}]})
        );

        let failing =
            br#"{"cniVersion":"1.0.0","name":"n","type":"cni-echo","failOn":["ADD"],"failCode":105}"#;
        let (code, out, _) = echo(&env, failing);
        assert_eq!(code, 1, "errors exit 1, whatever their code");
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"cniVersion": "1.0.0", "code": 105, "msg": "cni-echo was told to fail ADD"})
        );

        let (code, out, _) = echo(&env, b"");
        assert_eq!(code, 1);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["code"], 6);
        let (code, out, _) = echo(&[("CNI_COMMAND", ""), ("CNI_CONTAINERID", "c1")], b"{}");
        assert_eq!(code, 1);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["code"], 4);
        let (code, out, _) = echo(&[("CNI_COMMAND", "ADD")], b"{}");
        assert_eq!(code, 1);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["code"], 4);
    }
}
