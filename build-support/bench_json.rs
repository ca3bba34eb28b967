//! Machine-readable benchmark results for `bench-report`, shared by the benchmarks of every
//! crate (each includes this file with `#[path]`): `--json-out FILE` on the benchmark's
//! command line (or `$BENCH_JSON`) appends one JSON object per result, with `bench` and
//! `kind` set. Without either, nothing is written.

use std::io::Write;

/// Appends `fields` (a JSON object) with `bench` and `kind` added.
pub fn emit(bench: &str, kind: &str, fields: serde_json::Value) {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.iter().position(|a| a == "--json-out").and_then(|i| args.get(i + 1)).cloned();
    let Some(path) = flag.or_else(|| std::env::var("BENCH_JSON").ok()) else { return };
    let mut line = serde_json::json!({ "bench": bench, "kind": kind });
    if let (Some(o), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
        o.extend(f);
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(e) = written {
        eprintln!("{bench}: could not append to {path}: {e}");
    }
}
