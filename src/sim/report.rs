//! The self-contained HTML report of `spillway simulate --report FILE`: inline
//! SVG charts drawn with plotters (no scripts, no network), plus the tables
//! (overall, per namespace, per workload, with the ideal row) and the
//! pending-time distribution (CDF on a log time axis).

use super::Comparison;
use plotters::prelude::*;

/// Why a report could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the report failed: {0}")]
pub struct ReportError(String);

fn err<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError(format!("{e:?}"))
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x44, 0x77, 0xaa),
    RGBColor(0xee, 0x66, 0x77),
    RGBColor(0x22, 0x88, 0x33),
    RGBColor(0xcc, 0xbb, 0x44),
    RGBColor(0x66, 0xcc, 0xee),
    RGBColor(0xaa, 0x33, 0x77),
];

const SIZE: (u32, u32) = (960, 320);

/// One line chart: a series per strategy over simulated hours.
fn line_chart(
    cmp: &Comparison,
    title: &str,
    y_desc: &str,
    value: impl Fn(&super::Sample) -> f64,
) -> Result<String, ReportError> {
    let hours = (cmp.horizon_s as f64 / 3600.0).max(1.0 / 60.0);
    let ymax = cmp
        .results
        .iter()
        .flat_map(|r| r.series.iter().map(&value))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..hours, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("simulated hour")
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, r) in cmp.results.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = r
                .series
                .iter()
                .map(|s| (s.t_s as f64 / 3600.0, value(s)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(r.strategy.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Stacked bars: VM and ACI cost per strategy.
fn cost_chart(cmp: &Comparison) -> Result<String, ReportError> {
    let n = cmp.results.len().max(1);
    let ymax = cmp
        .results
        .iter()
        .map(|r| r.cost_usd())
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.15;
    let names: Vec<&str> = cmp.results.iter().map(|r| r.strategy.name()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Cost per strategy (USD): VM below, ACI on top",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 {
                    names.get(i).map_or_else(String::new, |s| s.to_string())
                } else {
                    String::new()
                }
            })
            .y_desc("USD")
            .draw()
            .map_err(err)?;
        let vm = RGBColor(0x44, 0x77, 0xaa);
        let aci = RGBColor(0xee, 0x88, 0x33);
        for (i, r) in cmp.results.iter().enumerate() {
            let x0 = i as f64 + 0.2;
            let x1 = i as f64 + 0.8;
            chart
                .draw_series([
                    Rectangle::new([(x0, 0.0), (x1, r.vm_cost_usd)], vm.filled()),
                    Rectangle::new([(x0, r.vm_cost_usd), (x1, r.cost_usd())], aci.filled()),
                ])
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("${:.2}", r.cost_usd()),
                    (i as f64 + 0.35, r.cost_usd() + ymax * 0.07),
                    ("sans-serif", 14),
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// At most this many points per CDF line: enough for a smooth curve, small
/// enough to keep the page light with 100k pods.
const CDF_POINTS: usize = 400;

/// The CDF of sorted pending times (ms) as (seconds, fraction of started pods),
/// thinned to at most [`CDF_POINTS`] points; times below `floor_s` are drawn
/// at `floor_s` (a log axis has no zero).
fn cdf_points(sorted_ms: &[u64], floor_s: f64) -> Vec<(f64, f64)> {
    let n = sorted_ms.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(CDF_POINTS).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .chain(std::iter::once(n - 1))
        .map(|i| {
            (
                (sorted_ms[i] as f64 / 1000.0).max(floor_s),
                (i + 1) as f64 / n as f64,
            )
        })
        .collect();
    points.dedup();
    points
}

/// The pending-time distribution: one CDF per strategy and the ideal, time on a log axis.
fn cdf_chart(cmp: &Comparison) -> Result<String, ReportError> {
    let series: Vec<(&str, &[u64])> = cmp
        .results
        .iter()
        .map(|r| (r.strategy.name(), r.pending_ms.as_slice()))
        .chain(std::iter::once((
            "ideal",
            cmp.ideal.total.pending_ms.as_slice(),
        )))
        .collect();
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let min_s = all.clone().min().map_or(1.0, |ms| ms as f64 / 1000.0);
    let max_s = all.max().map_or(10.0, |ms| ms as f64 / 1000.0);
    let lo = (min_s * 0.8).max(0.1);
    let hi = (max_s * 1.25).max(lo * 10.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Pending time distribution (share of pods running within t)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds from submission to running (log scale)")
            .x_labels(20)
            .y_desc("share of pods")
            .x_label_formatter(&|x| {
                if *x >= 10.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.1}")
                }
            })
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, (name, pending)) in series.iter().enumerate() {
            let is_ideal = i == cmp.results.len();
            let color = if is_ideal {
                BLACK
            } else {
                PALETTE[i % PALETTE.len()]
            };
            let width = if is_ideal { 1 } else { 2 };
            chart
                .draw_series(LineSeries::new(
                    cdf_points(pending, lo),
                    color.stroke_width(width),
                ))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole report page.
pub fn html(cmp: &Comparison) -> Result<String, ReportError> {
    let pending = line_chart(cmp, "Pending pods", "pods", |s| s.pending as f64)?;
    let nodes = line_chart(cmp, "VM nodes (ready + provisioning)", "nodes", |s| {
        s.vm_nodes as f64
    })?;
    let burst = line_chart(cmp, "Cores on ACI (burst)", "vCPU", |s| s.burst_cores)?;
    let cost = cost_chart(cmp)?;
    let cdf = cdf_chart(cmp)?;
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>spillway simulate: {title}</title>\
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}figure{{margin:1.5em 0}}</style></head>\n<body>\n\
<h1>spillway simulate</h1>\n<p>Scenario <b>{title}</b>, seed {seed}, {pods} pods, {hours:.1} simulated hours. \
Pending time is submission → container running. The <b>ideal</b> row is a lower bound: \
every pod starts after only its container start latency and is billed at VM prices for what it uses; \
the tables say how far each strategy is from it, per namespace and per workload.</p>\n<pre>{table}</pre>\n\
<figure>{cdf}</figure>\n<figure>{pending}</figure>\n<figure>{nodes}</figure>\n<figure>{burst}</figure>\n<figure>{cost}</figure>\n\
</body></html>\n",
        title = escape(&cmp.scenario),
        seed = cmp.seed,
        pods = cmp.pods,
        hours = cmp.horizon_s as f64 / 3600.0,
        table = escape(&cmp.table()),
    ))
}
