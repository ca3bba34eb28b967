//! The SVG plots. Each takes the parsed results and writes one file; a plot with no data is
//! not written (the report says which were left out).

use std::path::Path;

use plotters::prelude::*;

use crate::Error;
use crate::results::{Results, median};

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(140, 140, 140);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const PALETTE: [RGBColor; 5] = [BLUE, ORANGE, GREEN, PURPLE, RED];
const FONT: &str = "sans-serif";

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

/// The series' legend, in one style for every plot.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
    font_size: u32,
) -> Result<(), Error> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, font_size))
        .draw()
        .map_err(plot_err)
}

/// One series of a bar chart: its name, colour and one value per category (NaN: none).
pub struct Bars<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

/// Horizontal grouped bars, one group per category, first category on top, each bar
/// labelled with its value.
pub fn hbars(
    path: &Path,
    title: &str,
    x_desc: &str,
    categories: &[String],
    series: &[Bars],
) -> Result<(), Error> {
    let n = categories.len();
    let k = series.len().max(1);
    let max =
        series.iter().flat_map(|s| s.values.iter()).copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    let max = if max > 0.0 { max * 1.18 } else { 1.0 };
    let height = (110 + n * (k * 22 + 14)).max(260) as u32;
    let label_w = categories.iter().map(|c| c.len()).max().unwrap_or(4) as u32 * 8 + 20;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    // The legend goes to the right of the plot, where no bar can be under it.
    let (plot, legend) = root.split_horizontally(790);
    for (i, s) in series.iter().enumerate() {
        let y = 50 + 24 * i as i32;
        legend.draw(&Rectangle::new([(4, y - 7), (18, y + 7)], s.color.filled())).map_err(plot_err)?;
        legend.draw(&Text::new(s.name, (24, y - 8), (FONT, 14))).map_err(plot_err)?;
    }
    // Categories on an integer axis (1000 units each): plotters labels integer key points.
    const U: f64 = 1000.0;
    let centers: Vec<i32> = (0..n as i32).map(|i| i * 1000 + 500).collect();
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0.0..max, (0..n as i32 * 1000).with_key_points(centers))
        .map_err(plot_err)?;
    let names: Vec<String> = categories.iter().rev().cloned().collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .y_label_formatter(&|y| names.get((*y / 1000) as usize).cloned().unwrap_or_default())
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(plot_err)?;
    let slot = 0.8 / k as f64;
    for (si, s) in series.iter().enumerate() {
        let color = s.color;
        let bars: Vec<(f64, i32, i32)> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| {
                let j = (n - 1 - i) as f64;
                let (lo, hi) = (j + 0.9 - slot * (si + 1) as f64, j + 0.9 - slot * si as f64);
                (*v, (lo * U) as i32, (hi * U) as i32)
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(v, lo, hi)| Rectangle::new([(0.0, lo), (v, hi)], color.filled())))
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().map(|&(v, lo, hi)| {
                EmptyElement::at((v, (lo + hi) / 2))
                    + Text::new(short(v), (4, -7), (FONT, 13).into_font().color(&BLACK))
            }))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

/// A value with about three significant digits.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Datapath throughput, 1 and 4 TCP streams, per case.
pub fn throughput(r: &Results, path: &Path) -> Result<bool, Error> {
    let cases = r.cases();
    if cases.is_empty() {
        return Ok(false);
    }
    let s = |streams, name, color| Bars {
        name,
        color,
        values: cases.iter().map(|c| r.datapath(c, streams, |t| t.gbps)).collect(),
    };
    hbars(
        path,
        "Pod-to-pod TCP throughput (iperf3, median)",
        "Gbit/s",
        &cases,
        &[s(1, "1 stream", BLUE), s(4, "4 streams", GREEN)],
    )?;
    Ok(true)
}

/// Machine CPU seconds per GB received, per datapath case.
pub fn cpu_per_gb(r: &Results, path: &Path) -> Result<bool, Error> {
    let cases = r.cases();
    if cases.is_empty() {
        return Ok(false);
    }
    let s = |streams, name, color| Bars {
        name,
        color,
        values: cases.iter().map(|c| r.datapath(c, streams, |t| t.cpu_s_per_gb)).collect(),
    };
    hbars(
        path,
        "CPU per GB received (all CPUs of the machine, lower is better)",
        "CPU seconds per GB",
        &cases,
        &[s(1, "1 stream", BLUE), s(4, "4 streams", GREEN)],
    )?;
    Ok(true)
}

/// Step points of an empirical CDF over `total` samples (missing ones keep it below 1).
fn cdf(values: &[Option<f64>]) -> Vec<(f64, f64)> {
    let total = values.len().max(1) as f64;
    let mut v: Vec<f64> = values.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let mut pts = Vec::with_capacity(v.len() * 2 + 1);
    if let Some(first) = v.first() {
        pts.push((*first, 0.0));
    }
    for (i, x) in v.iter().enumerate() {
        pts.push((*x, i as f64 / total));
        pts.push((*x, (i + 1) as f64 / total));
    }
    pts
}

/// Convergence: CDF of lease → route, for the last node and for every node, per variant.
pub fn convergence_cdf(r: &Results, path: &Path) -> Result<bool, Error> {
    if r.convergence.is_empty() {
        return Ok(false);
    }
    let max = r
        .convergence
        .iter()
        .flat_map(|c| c.all_nodes_ms.iter().chain(&c.per_node_ms).flatten())
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let max = if max > 0.0 { max * 1.05 } else { 1.0 };
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let nodes = r.convergence.iter().map(|c| c.nodes).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Convergence: lease written → route in the kernel ({nodes} nodes)"), (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max, 0.0..1.02)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds after the write")
        .y_desc("fraction of leases / (lease, node) pairs")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(plot_err)?;
    for (i, c) in r.convergence.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(cdf(&c.all_nodes_ms), color.stroke_width(3)))
            .map_err(plot_err)?
            .label(format!("{}: all nodes", c.variant))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        let light = color.mix(0.45);
        chart
            .draw_series(LineSeries::new(cdf(&c.per_node_ms), light.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("{}: each node", c.variant))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight, 14)?;
    root.present().map_err(plot_err)?;
    Ok(true)
}

/// Packet loss over time across encryption switches and daemon restarts, lost packets per
/// 100 ms with the steps marked.
pub fn loss_timeline(r: &Results, path: &Path) -> Result<bool, Error> {
    let Some(l) = r.loss.first() else { return Ok(false) };
    const BIN: f64 = 0.1;
    let bins = (l.duration_s / BIN).ceil().max(1.0) as usize;
    let mut counts = vec![0u32; bins];
    for t in &l.lost_at_s {
        let b = ((t / BIN).floor().max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let per_bin = (l.pps * BIN).round();
    let ymax = (counts.iter().copied().max().unwrap_or(0) as f64).max(1.0) * 1.6;
    let lost = l.sent.saturating_sub(l.received);
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Packet loss, ping pod to pod every {:.0} ms ({}): {lost} of {} lost",
                1000.0 / l.pps.max(1e-9),
                l.engine,
                l.sent
            ),
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..l.duration_s, 0.0..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(format!("lost per 100 ms (at most {per_bin:.0})"))
        // Whole packets: at most one label per integer.
        .y_labels((ymax.floor() as usize + 1).min(11))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| {
            let x = i as f64 * BIN;
            Rectangle::new([(x, 0.0), (x + BIN, *c as f64)], RED.filled())
        }))
        .map_err(plot_err)?
        .label("lost packets")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], RED.filled()));
    for (i, e) in l.events.iter().enumerate() {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(e.t, 0.0), (e.t, ymax)],
                BLUE.stroke_width(1),
            )))
            .map_err(plot_err)?;
        // Staggered so that steps close together stay readable.
        let y = ymax * (0.95 - 0.08 * (i % 3) as f64);
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((e.t, y))
                    + Text::new(e.what.clone(), (4, 0), (FONT, 13).into_font().color(&BLUE)),
            ))
            .map_err(plot_err)?;
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight, 14)?;
    root.present().map_err(plot_err)?;
    Ok(true)
}

/// One panel's pair of values (overlayd, flannel's algorithm) from a row.
type Pick = fn(&crate::results::RequestsPerNode) -> (f64, f64);

/// Store requests per node against cluster size: at start and per hour in steady state,
/// overlayd against flannel's algorithm counted on the same runs.
pub fn requests_per_node(r: &Results, path: &Path) -> Result<bool, Error> {
    if r.requests.is_empty() {
        return Ok(false);
    }
    let mut rows: Vec<_> = r.requests.iter().collect();
    rows.sort_by_key(|x| x.nodes);
    let (lo, hi) = (rows[0].nodes as f64, rows[rows.len() - 1].nodes as f64);
    let xr = (lo / 1.5).max(1.0)..(hi * 1.5).max(lo * 2.0);
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(500);
    let panels: [(_, &str, &str, Pick); 2] = [
        (left, "At start (list, lease, watch)", "requests per node", |x| (x.ours_start, x.flannel_start)),
        (right, "Steady state (24 h lease TTL)", "requests per node per hour", |x| {
            (x.ours_steady_per_h, x.flannel_steady_per_h)
        }),
    ];
    for (area, title, y_desc, get) in panels {
        let vals: Vec<(f64, f64, f64)> = rows
            .iter()
            .map(|x| {
                let (a, b) = get(x);
                (x.nodes as f64, a.max(1e-3), b.max(1e-3))
            })
            .collect();
        let ymin = vals.iter().map(|v| v.1.min(v.2)).fold(f64::INFINITY, f64::min) / 2.0;
        let ymax = vals.iter().map(|v| v.1.max(v.2)).fold(0.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(
                xr.clone().log_scale().with_key_points(vals.iter().map(|v| v.0).collect()),
                (ymin..ymax).log_scale(),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("nodes in the cluster")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| short(*y))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        for (name, color, pick) in [
            ("overlayd", BLUE, (|v: &(f64, f64, f64)| v.1) as fn(&(f64, f64, f64)) -> f64),
            ("flannel's algorithm", ORANGE, |v| v.2),
        ] {
            let pts: Vec<(f64, f64)> = vals.iter().map(|v| (v.0, pick(v))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(plot_err)?;
            chart
                .draw_series(pts.iter().map(|p| {
                    EmptyElement::at(*p)
                        + Text::new(short(p.1), (6, -16), (FONT, 13).into_font().color(&color))
                }))
                .map_err(plot_err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, 13)?;
    }
    root.present().map_err(plot_err)?;
    Ok(true)
}

/// Plugin ADD+DEL cycle: ours, the reference plugins, and the cost of starting a process.
pub fn plugin_cycle(r: &Results, path: &Path) -> Result<bool, Error> {
    if r.plugin.is_empty() {
        return Ok(false);
    }
    let cats: Vec<String> = r.plugin.iter().map(|p| format!("{} ({})", p.plugin, p.variant)).collect();
    let col = |f: fn(&crate::results::PluginCycle) -> f64| r.plugin.iter().map(f).collect::<Vec<_>>();
    let mut series = vec![
        Bars { name: "ours", color: BLUE, values: col(|p| p.ours_ms) },
        Bars { name: "reference plugins", color: ORANGE, values: col(|p| p.reference_ms) },
    ];
    if r.plugin.iter().any(|p| p.floor_ms.is_some()) {
        series.push(Bars {
            name: "floor (bridge: its kernel work done with ip; host-local: starting /bin/true)",
            color: GREY,
            values: col(|p| p.floor_ms.unwrap_or(f64::NAN)),
        });
    }
    hbars(path, "CNI plugin cycle, median wall time (lower is better)", "milliseconds", &cats, &series)?;
    Ok(true)
}

/// Cold start: one daemon to every route, neighbour and FDB entry of N leases, against
/// `ip -batch` + `bridge -batch` programming the same entries.
pub fn cold_start(r: &Results, path: &Path) -> Result<bool, Error> {
    if r.cold_start.is_empty() {
        return Ok(false);
    }
    let cats: Vec<String> = r.cold_start.iter().map(|c| format!("{} leases", c.leases)).collect();
    hbars(
        path,
        "Cold start: daemon spawn → every kernel entry (median, lower is better)",
        "seconds",
        &cats,
        &[
            Bars {
                name: "overlayd (process start included)",
                color: BLUE,
                values: r.cold_start.iter().map(|c| median(c.spawn_to_all_s.iter().copied())).collect(),
            },
            Bars {
                name: "ip -batch + bridge -batch",
                color: GREY,
                values: r.cold_start.iter().map(|c| median(c.ip_batch_s.iter().copied())).collect(),
            },
        ],
    )?;
    Ok(true)
}
