//! `cnictl` drives the reference Go plugins from Debian (`/usr/lib/cni`) through ADD,
//! CHECK and DEL of a bridge + host-local list, as root, inside test namespaces: one plays
//! the host (where the bridge goes), one the container.

use std::path::Path;
use std::process::Output;

use base64::Engine;
use serde_json::Value;
use test_netns::{TestNs, require_root};

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn cnictl(host: &TestNs, env: &[(&str, &str)], args: &[&str]) -> Output {
    host.command(env!("CARGO_BIN_EXE_cnictl"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CNI_CONTAINERID")
        .output()
        .expect("cnictl runs")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cnictl_drives_reference_bridge_and_host_local() {
    require_root!();
    assert!(
        Path::new(REFERENCE_DIR).join("bridge").exists(),
        "the reference plugins are missing: apt-get install containernetworking-plugins"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (conf_dir, cache_dir, data_dir) =
        (tmp.path().join("net.d"), tmp.path().join("cache"), tmp.path().join("ipam"));
    std::fs::create_dir_all(&conf_dir).unwrap();

    let host = TestNs::new("refhost");
    let pod = TestNs::new("refpod");
    let net = format!("interop{}", std::process::id());
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [{
            "type": "bridge",
            "bridge": "refbr0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "subnet": "10.199.7.0/24",
                "dataDir": data_dir,
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    });
    let list_bytes = serde_json::to_vec_pretty(&list).unwrap();
    std::fs::write(conf_dir.join("10-interop.conflist"), &list_bytes).unwrap();

    let env = [
        ("NETCONFPATH", conf_dir.to_str().unwrap()),
        ("CNI_PATH", REFERENCE_DIR),
        ("CNI_CACHE_DIR", cache_dir.to_str().unwrap()),
        ("CNI_IFNAME", "eth0"),
    ];
    let pod_path = pod.path();
    let pod_path = pod_path.to_str().unwrap();

    // ADD: the result is the reference bridge's, in the list's version.
    let out = ok(&cnictl(&host, &env, &["add", &net, pod_path]), "cnictl add");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    let address = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.199.7.") && address.ends_with("/24"), "{address}");
    assert_eq!(result["ips"][0]["gateway"], "10.199.7.1");
    assert_eq!(result["interfaces"][0]["name"], "refbr0");
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    assert_eq!(result["interfaces"][2]["sandbox"], pod_path);

    // The datapath is real: the pod has the address and reaches its gateway on the bridge.
    let ip = address.split('/').next().unwrap();
    assert!(pod.exec(&["ip", "-o", "addr", "show", "eth0"]).contains(ip));
    assert!(pod.try_exec(&["ping", "-c", "1", "-W", "2", "10.199.7.1"]), "pod cannot reach the gateway");

    // The result cache is libcni's: one file per attachment, cniCacheV1, the list verbatim.
    let digest = {
        use sha2::Digest;
        let d = sha2::Sha512::digest(pod_path.as_bytes());
        d[..10].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let container_id = format!("cnitool-{digest}");
    let cache_file = cache_dir.join("results").join(format!("{net}-{container_id}-eth0"));
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache_file).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], container_id.as_str());
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["networkName"], net.as_str());
    assert_eq!(cached["netns"], pod_path);
    let config =
        base64::engine::general_purpose::STANDARD.decode(cached["config"].as_str().unwrap()).unwrap();
    assert_eq!(config, list_bytes);
    assert_eq!(cached["result"]["ips"][0]["address"], address.as_str());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // CHECK: the reference plugins verify the attachment against our cached result.
    ok(&cnictl(&host, &env, &["check", &net, pod_path]), "cnictl check");

    // CHECK fails once the attachment is broken behind the runtime's back.
    pod.exec(&["ip", "addr", "flush", "dev", "eth0"]);
    let broken = cnictl(&host, &env, &["check", &net, pod_path]);
    assert!(!broken.status.success(), "CHECK passed on a pod without its address");

    // DEL: interface gone, IP released, cache entry removed; a second DEL succeeds too.
    ok(&cnictl(&host, &env, &["del", &net, pod_path]), "cnictl del");
    assert!(!pod.try_exec(&["ip", "link", "show", "eth0"]), "eth0 outlived DEL");
    let leases: Vec<String> = std::fs::read_dir(data_dir.join(&net))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    assert!(leases.is_empty(), "leases left after DEL: {leases:?}");
    assert!(!cache_file.exists());
    ok(&cnictl(&host, &env, &["del", &net, pod_path]), "second cnictl del");
}

#[test]
fn cnictl_reports_reference_plugin_errors() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let host = TestNs::new("referr");
    let pod = TestNs::new("referrpod");
    let list = r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"bridge",
        "ipam":{"type":"host-local","subnet":"10.199.8.0/31"}}]}"#;
    std::fs::write(tmp.path().join("broken.conflist"), list).unwrap();
    let env = [
        ("NETCONFPATH", tmp.path().to_str().unwrap()),
        ("CNI_PATH", REFERENCE_DIR),
        ("CNI_CACHE_DIR", tmp.path().to_str().unwrap()),
    ];
    let out = cnictl(&host, &env, &["add", "broken", pod.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The reference plugin's own error object reached us (its message and code).
    assert!(stderr.contains("too small to allocate from"), "{stderr}");
    assert!(!tmp.path().join("results").exists(), "a failed ADD must not be cached");
}
