//! The binaries' own command lines: `--version` names the git commit, `overlayctl
//! completions` and `overlayctl man` print what shells and `man` read (no daemon needed).

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("{bin}: {e}"));
    assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = match (std::env::var("FERROCNI_GIT_COMMIT"), head) {
        (Ok(c), _) if !c.is_empty() => c,
        (_, Some(h)) => h,
        _ => "unknown".into(),
    };
    for (bin, name) in
        [(env!("CARGO_BIN_EXE_overlayd"), "overlayd"), (env!("CARGO_BIN_EXE_overlayctl"), "overlayctl")]
    {
        let v = run(bin, &["--version"]);
        assert_eq!(v.trim(), format!("{name} {} (commit {expected})", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn completions_and_man_pages() {
    let ctl = env!("CARGO_BIN_EXE_overlayctl");
    let bash = run(ctl, &["completions", "bash"]);
    assert!(bash.contains("_overlayctl()") && bash.contains("encryption"), "{bash}");
    let zsh = run(ctl, &["completions", "zsh", "--program", "overlayd"]);
    assert!(zsh.starts_with("#compdef overlayd") && zsh.contains("--etcd-endpoints"), "{zsh}");
    let man = run(ctl, &["man"]);
    assert!(man.contains(".TH overlayctl 1") && man.contains("encryption"), "{man}");
    let man = run(ctl, &["man", "--program", "overlayd"]);
    assert!(man.contains(".TH overlayd 1") && man.contains("etcd\\-endpoints"), "{man}");
    let bad = Command::new(ctl).args(["completions", "cmd.exe"]).output().unwrap();
    assert!(!bad.status.success() && bad.stdout.is_empty());
}

/// Every metric the Grafana dashboard (deploy/grafana/overlayd.json) queries is one the
/// daemon exports: the dashboard cannot silently go blank after a rename.
#[test]
fn the_dashboard_queries_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/overlayd.json"))
            .expect("the dashboard is JSON");
    let exported = overlayd::metrics::Metrics::default()
        .render(&overlayd::metrics::Gauges::default(), &serde_json::Value::Null);
    let mut names: Vec<String> = Vec::new();
    for l in exported.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split(' ');
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        names.push(name.into());
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        }
    }
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("overlayd_") {
                    assert!(
                        names.iter().any(|n| n == word),
                        "the dashboard queries {word}, which overlayd does not export"
                    );
                    queried += 1;
                }
            }
        }
    }
    assert!(queried >= 25, "{queried}");
}

/// `cmd` run with no `OVERLAYD_*` or `FLANNELD_*` from the caller's environment.
fn clean(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("OVERLAYD_") || k.starts_with("FLANNELD_") {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

/// Without `--etcd-endpoints`, `--kube-subnet-mgr` or `--store embedded`, neither binary
/// falls back to the embedded store: they say what to give and create nothing.
#[test]
fn no_store_named_is_an_error_that_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store_file = dir.path().join("store.db");
    let daemon = |extra: &[&str]| {
        let out = clean(env!("CARGO_BIN_EXE_overlayd"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--store-file")
            .arg(&store_file)
            .arg("--socket")
            .arg(dir.path().join("overlayd.sock"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let none = daemon(&[]);
    assert!(none.contains("--store embedded") && none.contains("--etcd-endpoints"), "{none}");
    let both = daemon(&["--store", "embedded", "--etcd-endpoints", "http://127.0.0.1:1"]);
    assert!(both.contains("contradict"), "{both}");
    let kube = daemon(&["--kube-subnet-mgr", "--store", "embedded"]);
    assert!(kube.contains("--kube-subnet-mgr uses the Kubernetes API"), "{kube}");
    assert!(!state.exists() && !store_file.exists(), "a refused start created files");

    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#).unwrap();
    let out = clean(env!("CARGO_BIN_EXE_overlayctl"))
        .arg("--socket")
        .arg(dir.path().join("overlayd.sock"))
        .arg("--store-file")
        .arg(&store_file)
        .args(["network", "set"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--store embedded"), "{err}");
    assert!(!store_file.exists(), "overlayctl wrote a store nobody named");
}

/// flanneld's `FLANNELD_<FLAG>` variables reach the daemon when `OVERLAYD_<FLAG>` is unset,
/// and ours win when both are set (seen in the error naming the interface asked for).
#[test]
fn flanneld_environment_is_read_by_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let out = clean(env!("CARGO_BIN_EXE_overlayd"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let flannel = run(&[("OVERLAYD_STORE", "embedded"), ("FLANNELD_IFACE", "fcni-none0")]);
    assert!(flannel.contains("--iface fcni-none0"), "{flannel}");
    let both = run(&[
        ("OVERLAYD_STORE", "embedded"),
        ("FLANNELD_IFACE", "fcni-none0"),
        ("OVERLAYD_IFACE", "fcni-ours0"),
    ]);
    assert!(both.contains("--iface fcni-ours0") && !both.contains("fcni-none0"), "{both}");
    let regex = run(&[("OVERLAYD_STORE", "embedded"), ("FLANNELD_IFACE_REGEX", "^fcni-none[0-9]$")]);
    assert!(regex.contains("--iface-regex ^fcni-none[0-9]$"), "{regex}");
    // flanneld's --etcd-endpoints under its own name: etcd, so no --store needed.
    let etcd = run(&[("FLANNELD_ETCD_ENDPOINTS", "http://127.0.0.1:1"), ("FLANNELD_IFACE", "fcni-none0")]);
    assert!(!etcd.contains("no store given") && etcd.contains("fcni-none0"), "{etcd}");
    assert!(!dir.path().join("state").exists());
}

/// `--log-format json`: every line the daemon writes is a JSON object with the level, the
/// message and the event's fields. An underlay interface that does not exist makes the
/// daemon log an error and stop before it touches anything (no root needed).
#[test]
fn json_log_lines_parse() {
    let daemon = env!("CARGO_BIN_EXE_overlayd");
    let out = clean(daemon)
        .args(["--log-format", "json", "--iface", "no-such-link0", "--etcd-endpoints", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let error =
        lines.iter().find(|l| l["level"] == "ERROR").unwrap_or_else(|| panic!("no error logged: {text}"));
    assert_eq!(error["message"], "cannot determine the underlay", "{error}");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("no-such-link0")), "{error}");
    assert!(error["timestamp"].is_string() && error["target"].is_string(), "{error}");

    // The default stays text; an unknown format is refused before anything runs.
    let out = clean(daemon).args(["--store", "embedded", "--iface", "no-such-link0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("cannot determine the underlay")
            && serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap_or("")).is_err()
    );
    let bad = Command::new(daemon).args(["--log-format", "xml"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--log-format"));
}
