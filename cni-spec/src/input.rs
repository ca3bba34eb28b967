//! A plugin's input, read in one place with every fault in its class.
//!
//! [`crate::plugin::run`] uses this module for every plugin of this project, so each
//! plugin (and any future one) answers the same input the same way:
//!
//! | fault | code |
//! |---|---|
//! | `CNI_COMMAND` unset, empty or unknown; any other `CNI_*` variable missing or invalid (container ID, netns, interface name, `CNI_ARGS`, `CNI_PATH` for GC) | 4, naming the variable |
//! | stdin cannot be read (closed, a directory, an I/O error) | 5 |
//! | stdin does not decode: empty or whitespace only, malformed or truncated JSON, trailing data, a key repeated in one object, nesting deeper than 128, more than 64 MiB | 6 |
//! | a config that decodes but is not an object, has no `cniVersion` (missing, `null` or `""`), or a field of the wrong type or with a bad value | 7, naming the field |
//! | a `cniVersion` this library or plugin does not support; a command the config's version does not have | 1 |
//!
//! ```
//! use cni_spec::input;
//! assert_eq!(input::read_stdin(&b"{}"[..]).unwrap(), b"{}");
//! assert_eq!(input::decode(b"").unwrap_err().code, 6);
//! assert_eq!(input::decode(br#"{"a":1,"a":2}"#).unwrap_err().code, 6);
//! let e = input::from_slice::<cni_spec::Route>(br#"["0.0.0.0/0"]"#).unwrap_err();
//! assert_eq!(e.code, 7);
//! ```

use std::io::Read;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Code, Error};
use crate::json;

/// The most stdin a plugin reads: no config comes near it.
pub const MAX_STDIN: u64 = 64 << 20;

/// Reads all of stdin (or any reader): an I/O error is code 5, more than [`MAX_STDIN`]
/// bytes code 6.
///
/// ```
/// let e = cni_spec::input::read_stdin(std::fs::File::open("/").unwrap()).unwrap_err();
/// assert_eq!(e.code, 5);
/// ```
pub fn read_stdin(reader: impl Read) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    reader
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading the network config from stdin", &e))?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(Error::new(
            Code::DecodingFailure,
            format!("failed to decode the config: more than {MAX_STDIN} bytes on stdin"),
        ));
    }
    Ok(buf)
}

/// Whether the process was started with its stdin closed. The Rust runtime then opens
/// `/dev/null` read-write on descriptor 0 before `main`, so an empty read would pass for an
/// empty config (code 6) when the truth is that there was no stdin to read (code 5). A
/// runtime that means "no input" hands over `/dev/null` read-only.
///
/// ```
/// // The test harness gives doc tests a real stdin.
/// let _ = cni_spec::input::stdin_was_closed();
/// ```
pub fn stdin_was_closed() -> bool {
    let Ok(target) = std::fs::read_link("/proc/self/fd/0") else { return true };
    if target != std::path::Path::new("/dev/null") {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/fdinfo/0") else { return false };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & 0o3 == 0o2)
}

/// An environment variable as a plugin reads it: unset is `None`; a value that is not
/// UTF-8 is kept with its bad bytes replaced, so that the variable's own validation
/// refuses it (code 4) rather than it passing for unset.
///
/// ```
/// assert_eq!(cni_spec::input::env_var("CNI_SURELY_NOT_SET_ANYWHERE"), None);
/// ```
pub fn env_var(key: &str) -> Option<String> {
    std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
}

/// Decodes JSON bytes: every fault (see the table above) is code 6.
///
/// ```
/// assert_eq!(cni_spec::input::decode(b"{\"cniVersion\":").unwrap_err().code, 6);
/// assert!(cni_spec::input::decode(b" {\"a\":[1,2]}\n").is_ok());
/// ```
pub fn decode(bytes: &[u8]) -> Result<Value, Error> {
    json::decode(bytes)
}

/// Reads a typed value from decoded JSON: a wrong type or value is code 7 naming the
/// field by its path. Structs are read from objects only, and their `null` members count
/// as absent.
///
/// ```
/// let r: cni_spec::Route = cni_spec::input::from_value(serde_json::json!({"dst": "10.0.0.0/8", "gw": null})).unwrap();
/// assert_eq!(r.gw, None);
/// let e = cni_spec::input::from_value::<cni_spec::Route>(serde_json::json!({"dst": "10.0.0.0/8\n"})).unwrap_err();
/// assert!(e.msg.starts_with("invalid network config: dst:"), "{e}");
/// ```
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    json::from_value(value)
}

/// [`decode`], then [`from_value`].
///
/// ```
/// let e = cni_spec::input::from_slice::<cni_spec::Dns>(b"[]").unwrap_err();
/// assert_eq!(e.code, 7);
/// ```
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    json::from_slice(bytes)
}

/// [`from_value`] for a value found at `field` in a bigger config: errors name the full
/// path (`ipam.routes[0].dst`).
///
/// ```
/// let e = cni_spec::input::from_value_at::<cni_spec::Route>(serde_json::json!([["0.0.0.0/0"]][0]), "ipam.routes[0]").unwrap_err();
/// assert!(e.msg.starts_with("invalid network config: ipam.routes[0]: invalid type"), "{e}");
/// ```
pub fn from_value_at<T: DeserializeOwned>(value: Value, field: &str) -> Result<T, Error> {
    from_value(value).map_err(|e| nested_at(e, field))
}

/// A code-7 error about a value, restated for the value found at `field`: `path: why`
/// becomes `field.path: why`, a bare `why` becomes `field: why`. Other codes are kept.
pub(crate) fn nested_at(mut e: Error, field: &str) -> Error {
    const PREFIX: &str = "invalid network config: ";
    if e.code == Code::InvalidConfig as u32
        && let Some(rest) = e.msg.strip_prefix(PREFIX)
    {
        // "path: why" when the fault is inside the value, "why" when it is the value.
        let inner_path = rest.split_once(": ").map(|(p, _)| p).filter(|p| !p.contains(' '));
        e.msg = match inner_path {
            Some(_) => format!("{PREFIX}{field}.{rest}"),
            None => format!("{PREFIX}{field}: {rest}"),
        };
    }
    e
}

/// Refuses a key of `obj` that differs from a known one only in case (`"Bridge"`,
/// `"rangestart"`): Go's decoder matches keys without regard to case, so the Go plugins
/// honour such a key, while a case-sensitive reader would silently ignore it and do
/// something else. Code 7 naming the key (under `path`, `""` for the top level) and how it
/// is spelled.
///
/// ```
/// let obj = serde_json::json!({"Bridge": "br0", "other": 1});
/// let e = cni_spec::input::refuse_case_variants(obj.as_object().unwrap(), &["bridge"], "").unwrap_err();
/// assert_eq!(e.msg, "invalid network config: Bridge: keys are case-sensitive: write \"bridge\"");
/// ```
pub fn refuse_case_variants(
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
    path: &str,
) -> Result<(), Error> {
    for key in obj.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            let field = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            return Err(Error::invalid_config(&field, format!("keys are case-sensitive: write {k:?}")));
        }
    }
    Ok(())
}
