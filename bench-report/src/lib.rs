//! Turns the benchmarks' results (JSON lines written with `--json-out`) into a report
//! directory: `report.md` (machine, tables, commands) and SVG plots. Kept out of the product
//! crates so that none of them depends on a plotting library.

pub mod plots;
pub mod report;
pub mod results;

use std::path::{Path, PathBuf};

pub use report::Context;
pub use results::Results;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("results line {line}: {reason}")]
    Record { line: usize, reason: String },
    #[error("drawing a plot: {0}")]
    Plot(String),
}

/// The plots, by file name, and what draws each.
type Plot = fn(&Results, &Path) -> Result<bool, Error>;
pub const PLOTS: [(&str, &str, Plot); 7] = [
    ("throughput.svg", "Datapath throughput", plots::throughput),
    ("cpu_per_gb.svg", "CPU per GB", plots::cpu_per_gb),
    ("convergence_cdf.svg", "Convergence CDF", plots::convergence_cdf),
    ("loss_timeline.svg", "Loss across encryption switches and restarts", plots::loss_timeline),
    ("requests_per_node.svg", "Store requests per node against cluster size", plots::requests_per_node),
    ("plugin_cycle.svg", "Plugin cycle", plots::plugin_cycle),
    ("cold_start.svg", "Cold start", plots::cold_start),
];

/// Parses `results` and writes `report.md` and the plots that have data into `out`; returns
/// the files written. A results file that does not parse writes nothing.
pub fn generate(results: &str, out: &Path, ctx: &Context) -> Result<Vec<PathBuf>, Error> {
    let r = Results::parse(results)?;
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
    let mut written = Vec::new();
    let mut drawn = Vec::new();
    for (file, title, draw) in PLOTS {
        let path = out.join(file);
        if draw(&r, &path)? {
            written.push(path);
            drawn.push((file, title));
        }
    }
    let md = report::markdown(&r, ctx, &drawn);
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|source| Error::Io { path: path.clone(), source })?;
    written.push(path);
    Ok(written)
}
