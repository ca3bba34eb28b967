//! `bench-report --results FILE --out DIR`: report.md and SVG plots from the benchmarks'
//! JSON-lines results (see scripts/bench.sh).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Writes report.md and SVG plots from the benchmarks' JSON-lines results")]
struct Args {
    /// The results: one JSON object per line, as the benches write with --json-out.
    #[arg(long)]
    results: PathBuf,
    /// The report directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// A file listing the commands that produced the results, one per line.
    #[arg(long)]
    commands: Option<PathBuf>,
    /// A file of notes for the report (times, load, benchmarks skipped), one per line.
    #[arg(long)]
    notes: Option<PathBuf>,
    /// quick or full, for the record.
    #[arg(long, default_value = "")]
    mode: String,
}

fn lines(p: &Option<PathBuf>) -> Result<Vec<String>, String> {
    match p {
        None => Ok(Vec::new()),
        Some(p) => std::fs::read_to_string(p)
            .map(|t| t.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
            .map_err(|e| format!("{}: {e}", p.display())),
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let run = || -> Result<Vec<PathBuf>, String> {
        let text =
            std::fs::read_to_string(&a.results).map_err(|e| format!("{}: {e}", a.results.display()))?;
        let ctx = bench_report::Context {
            mode: a.mode.clone(),
            commands: lines(&a.commands)?,
            notes: lines(&a.notes)?,
        };
        bench_report::generate(&text, &a.out, &ctx).map_err(|e| e.to_string())
    };
    match run() {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
