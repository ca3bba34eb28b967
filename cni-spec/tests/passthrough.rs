//! Unknown keys reach the plugin exactly: found by the fuzz target (a large float in a
//! plugin option changed its last digit on the way through).

use cni_spec::NetConf;

#[test]
fn numbers_in_unknown_keys_survive_a_round_trip() {
    let input = br#"{"type":"bridge","opt":{"n":88888888000000000000000000000000001426452631974780000,"f":0.1,"i":-7}}"#;
    let conf = NetConf::parse(input).unwrap();
    let again = NetConf::parse(&serde_json::to_vec(&conf).unwrap()).unwrap();
    assert_eq!(again, conf);
    assert_eq!(conf.extra["opt"]["f"], 0.1);
    assert_eq!(conf.extra["opt"]["i"], -7);
}
