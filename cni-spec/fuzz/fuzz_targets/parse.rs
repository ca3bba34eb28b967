//! Every parser a plugin or runtime feeds untrusted bytes to: none may panic, and whatever
//! parses must serialize and parse again to the same value.
#![no_main]

use cni_spec::version::VersionInfo;
use cni_spec::{CniArgs, Environment, NetConf, NetConfList, SuccessResult, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = NetConfList::parse(data) {
        let again = NetConfList::parse(&serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(again.plugins, list.plugins);
        let _ = list.version();
    }
    if let Ok(conf) = NetConf::parse(data) {
        let _ = conf.prev_result();
        let again = NetConf::parse(&serde_json::to_vec(&conf).unwrap()).unwrap();
        assert_eq!(again, conf);
    }
    let _ = NetConfList::from_conf(data);
    for v in Version::ALL {
        if let Ok(r) = SuccessResult::from_slice(data, v) {
            for out in Version::ALL {
                if let Ok(json) = r.to_value(out) {
                    SuccessResult::from_value(json, out).expect("our own output parses");
                }
            }
        }
    }
    let _ = VersionInfo::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = CniArgs::parse(s);
        // The environment, as KEY=VALUE lines.
        let vars: Vec<(&str, &str)> = s.lines().filter_map(|l| l.split_once('=')).collect();
        let _ = Environment::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()));
    }
});
