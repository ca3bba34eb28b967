//! The report generator run as scripts/bench.sh runs it, on a fixture results file holding
//! one record of every kind the benches write (and one of a kind it does not know).

use std::path::Path;
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.jsonl");

fn generate(results: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bench-report"))
        .arg("--results")
        .arg(results)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn svg(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{name} is not an SVG document");
    text
}

#[test]
fn every_plot_and_the_report_are_written_with_their_series() {
    let tmp = tempfile::tempdir().unwrap();
    let commands = tmp.path().join("commands.txt");
    std::fs::write(&commands, "cargo bench -p test-netns --bench datapath -- --smoke\n").unwrap();
    let out = tmp.path().join("report");
    let o =
        generate(Path::new(FIXTURE), &out, &["--mode", "quick", "--commands", commands.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let t = svg(&out, "throughput.svg");
    for s in ["1 stream", "4 streams", "underlay", "host-gw", "overlay", "wireguard-go", "encrypted"] {
        assert!(t.contains(s), "throughput.svg lacks {s}");
    }
    // Five cases, two bars each (medians of the two repetitions: 15.2 × 1.03 for underlay, 1 stream).
    assert!(t.matches("<rect").count() >= 10);
    assert!(t.contains(">\n15.7\n</text>"), "the underlay bar's label");
    let c = svg(&out, "cpu_per_gb.svg");
    assert!(c.contains("CPU seconds per GB") && c.contains("wireguard-go"));
    let cdf = svg(&out, "convergence_cdf.svg");
    for s in ["embedded: all nodes", "embedded: each node", "etcd: all nodes", "etcd: each node"] {
        assert!(cdf.contains(s), "convergence_cdf.svg lacks {s}");
    }
    assert!(cdf.matches("<polyline").count() >= 4, "one line per series");
    let loss = svg(&out, "loss_timeline.svg");
    for s in [
        "15 of 2000 lost",
        "every 10 ms",
        "enable",
        "rotate",
        "disable",
        "restart (SIGTERM)",
        "restart (SIGKILL)",
    ] {
        assert!(loss.contains(s), "loss_timeline.svg lacks {s}");
    }
    let req = svg(&out, "requests_per_node.svg");
    assert!(
        req.contains("overlayd") && req.contains("flannel&apos;s algorithm") && req.contains("Steady state")
    );
    let p = svg(&out, "plugin_cycle.svg");
    assert!(
        p.contains("host-local (ADD+DEL pair)") && p.contains("reference plugins") && p.contains("/bin/true")
    );
    assert!(svg(&out, "cold_start.svg").contains("ip -batch + bridge -batch"));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in [
        "Mode: **quick**",
        "## Machine",
        "| cores |",
        "| kernel |",
        "![Datapath throughput](throughput.svg)",
        "![Convergence CDF](convergence_cdf.svg)",
        "| overlay | 11.2 | 18.1 |",
        "| restart (SIGKILL) |",
        "| 200 | one per node | 6.00 | 210 |",
        "| host-local (ADD+DEL pair) | 2.72 | 5.54 |",
        "| kube | 100 | 5 |",
        "| IPv4 | plain | ipv6 |",
        "1 records of kinds this report does not know",
        "cargo bench -p test-netns --bench datapath -- --smoke",
    ] {
        assert!(md.contains(s), "report.md lacks {s:?}:\n{md}");
    }
}

#[test]
fn a_bad_line_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results.jsonl");
    let good = std::fs::read_to_string(FIXTURE).unwrap();
    let mut lines: Vec<&str> = good.lines().take(2).collect();
    lines.push(r#"{"bench":"datapath","kind":"throughput","case":"overlay"}"#);
    std::fs::write(&results, lines.join("\n")).unwrap();
    let out = tmp.path().join("report");
    let o = generate(&results, &out, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("results line 3") && err.contains("streams"), "{err}");
    assert!(!out.exists(), "a report directory was made from bad results");

    std::fs::write(&results, "not json\n").unwrap();
    let o = generate(&results, &out, &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("results line 1"));
    assert!(!out.exists());
}

#[test]
fn results_without_plot_data_give_a_report_and_no_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results.jsonl");
    std::fs::write(&results, "\n").unwrap();
    let out = tmp.path().join("report");
    let o = generate(&results, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["report.md"]);
}
