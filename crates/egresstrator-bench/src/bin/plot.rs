//! `egresstrator-plot`: the SVG plots of BENCHMARKS.md, drawn from the benchmark's JSON
//! (`make plots`).
//!
//! ```text
//! egresstrator-plot --bench docs/bench/bench.json [--fleet docs/bench/fleet.json] --out docs/bench/
//! ```
//!
//! writes, into `--out`:
//! - `event-to-enforced-cdf.svg`: the CDFs of `exposure_window_samples_ms`,
//!   `event_to_enforced_samples_ms`, `helper_container_samples_ms`,
//!   `dfw_ms.burst_timeout_0.samples_ms` and `dfw_ms.burst_timeout_500.samples_ms`;
//! - `kv-convergence-vs-containers.svg`: `kv_by_containers[].{containers,p50_ms,max_ms}`;
//! - `fleet-convergence-vs-agents.svg`: the fleet JSON's `by_agents[].{agents,p50_ms,max_ms}`.
//!
//! The JSON is read as a `serde_json::Value`: any field may be missing or null. A CDF series
//! whose field is absent is left out and named under the plot and on stderr; a plot with no
//! data at all is not written (an existing file of that name is left as it was) and stderr
//! says which field was missing. The exit code is non-zero only when an input cannot be read
//! or is not JSON, or an output cannot be written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// SVG plots for BENCHMARKS.md from egresstrator-bench's JSON.
#[derive(Parser, Debug)]
#[command(name = "egresstrator-plot", version)]
struct Args {
    /// The benchmark's JSON (`egresstrator-bench --json`).
    #[arg(long, value_name = "PATH")]
    bench: PathBuf,
    /// The fleet benchmark's JSON (its `by_agents`); without it the fleet plot is skipped.
    #[arg(long, value_name = "PATH")]
    fleet: Option<PathBuf>,
    /// Directory the SVG files are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

const CDF_FILE: &str = "event-to-enforced-cdf.svg";
const KV_FILE: &str = "kv-convergence-vs-containers.svg";
const FLEET_FILE: &str = "fleet-convergence-vs-agents.svg";

const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";

/// One CDF line: its legend label, where its samples are in the bench JSON, its colour.
struct CdfSpec {
    label: &'static str,
    path: &'static [&'static str],
    color: RGBColor,
}

/// The CDF plot's lines, in legend order (Okabe-Ito colours: told apart by colour-blind
/// readers too).
const CDF_SERIES: [CdfSpec; 5] = [
    CdfSpec {
        label: "egresstrator (StartedAt → enforced)",
        path: &["exposure_window_samples_ms"],
        color: RGBColor(0, 114, 178),
    },
    CdfSpec {
        label: "egresstrator (start event → enforced)",
        path: &["event_to_enforced_samples_ms"],
        color: RGBColor(86, 180, 233),
    },
    CdfSpec {
        label: "0.2 helper container",
        path: &["helper_container_samples_ms"],
        color: RGBColor(213, 94, 0),
    },
    CdfSpec {
        label: "dfw, --burst-timeout 0",
        path: &["dfw_ms", "burst_timeout_0", "samples_ms"],
        color: RGBColor(0, 158, 115),
    },
    CdfSpec {
        label: "dfw, default 500 ms",
        path: &["dfw_ms", "burst_timeout_500", "samples_ms"],
        color: RGBColor(204, 121, 167),
    },
];

const P50_COLOR: RGBColor = RGBColor(0, 114, 178);
const MAX_COLOR: RGBColor = RGBColor(213, 94, 0);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresstrator-plot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let bench = read_json(&args.bench)?;
    let fleet = args.fleet.as_deref().map(read_json).transpose()?;
    let outcome = plot_all(&bench, fleet.as_ref(), &args.out)?;
    for m in &outcome.messages {
        eprintln!("egresstrator-plot: {m}");
    }
    for p in &outcome.written {
        eprintln!("egresstrator-plot: wrote {}", p.display());
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// What [`plot_all`] did: the files written, and what was left out and why (for stderr).
#[derive(Debug, Default)]
struct Outcome {
    written: Vec<PathBuf>,
    messages: Vec<String>,
}

/// Draws every plot whose data is there into `out`. Errors only on a write error.
fn plot_all(bench: &Value, fleet: Option<&Value>, out: &Path) -> Result<Outcome> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut o = Outcome::default();
    let write = |o: &mut Outcome, name: &str, svg: String| -> Result<()> {
        let path = out.join(name);
        fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        o.written.push(path);
        Ok(())
    };

    // 1. The CDF.
    let mut lines = Vec::new();
    let mut absent = Vec::new();
    for spec in &CDF_SERIES {
        match samples_at(bench, spec.path) {
            Ok(s) => {
                if s.dropped > 0 {
                    o.messages.push(format!(
                        "{}: {} value(s) of `{}` are not numbers, left out",
                        CDF_FILE,
                        s.dropped,
                        spec.path.join(".")
                    ));
                }
                lines.push(CdfLine {
                    label: spec.label.to_string(),
                    points: cdf(&s.values),
                    color: spec.color,
                });
            }
            Err(why) => absent.push(format!("{} ({why})", spec.label)),
        }
    }
    for a in &absent {
        o.messages.push(format!("{CDF_FILE}: no line for {a}"));
    }
    if lines.is_empty() {
        o.messages.push(format!(
            "{CDF_FILE} not written: none of its series is in the bench JSON"
        ));
    } else {
        let svg = render_cdf(&lines, &subtitle(bench, None), &absent)?;
        write(&mut o, CDF_FILE, svg)?;
    }

    // 2. KV convergence vs running containers.
    match xy_points(bench, "kv_by_containers", "containers") {
        Ok(p) => {
            for s in &p.skipped {
                o.messages.push(format!("{KV_FILE}: {s}"));
            }
            let plot = XyPlot {
                title: "KV change → every container re-enforced, vs running containers",
                x_desc: "running enabled containers naming the changed ACL",
                y_desc: "KV PUT → all re-enforced (ms)",
                p50_label: "p50 (the median KV write)",
                max_label: "max (the slowest KV write)",
            };
            let sub = subtitle(bench, kv_writes(bench).as_deref());
            let svg = render_xy(&plot, &p, &sub)?;
            write(&mut o, KV_FILE, svg)?;
        }
        Err(why) => o.messages.push(format!("{KV_FILE} not written: {why}")),
    }

    // 3. Fleet convergence vs agents.
    match fleet {
        None => o
            .messages
            .push(format!("{FLEET_FILE} not written: no --fleet JSON given")),
        Some(fleet) => match xy_points(fleet, "by_agents", "agents") {
            Ok(p) => {
                for s in &p.skipped {
                    o.messages.push(format!("{FLEET_FILE}: {s}"));
                }
                let plot = XyPlot {
                    title: "Fleet: KV change → held by every agent, vs number of agents",
                    x_desc: "agents (simulated hosts)",
                    y_desc: "KV PUT → the last agent holds the new value (ms)",
                    p50_label: "p50 (the median KV change)",
                    max_label: "max (the slowest KV change)",
                };
                let sub = subtitle(fleet, fleet_changes(fleet).as_deref());
                let svg = render_xy(&plot, &p, &sub)?;
                write(&mut o, FLEET_FILE, svg)?;
            }
            Err(why) => o
                .messages
                .push(format!("{FLEET_FILE} not written: fleet JSON: {why}")),
        },
    }
    Ok(o)
}

// --- Reading the JSON -----------------------------------------------------------------------

/// The value at `path`, or why there is none: "`a.b` is missing" / "`a.b` is null".
fn lookup<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        let name = path[..=i].join(".");
        match cur.get(key) {
            None => return Err(format!("`{name}` is missing")),
            Some(Value::Null) => return Err(format!("`{name}` is null")),
            Some(next) => cur = next,
        }
    }
    Ok(cur)
}

/// A series' samples (ms), and how many of its array's elements were not finite numbers.
#[derive(Debug, PartialEq)]
struct Samples {
    values: Vec<f64>,
    dropped: usize,
}

/// The array of numbers at `path`. Err (why it is absent, naming the field) when the field is
/// missing, null, not an array, empty, or holds no number.
fn samples_at(v: &Value, path: &[&str]) -> Result<Samples, String> {
    let name = path.join(".");
    let arr = lookup(v, path)?
        .as_array()
        .ok_or_else(|| format!("`{name}` is not an array"))?;
    if arr.is_empty() {
        return Err(format!("`{name}` is empty"));
    }
    let values: Vec<f64> = arr
        .iter()
        .filter_map(Value::as_f64)
        .filter(|x| x.is_finite())
        .collect();
    if values.is_empty() {
        return Err(format!("`{name}` holds no number"));
    }
    Ok(Samples {
        dropped: arr.len() - values.len(),
        values,
    })
}

/// The empirical CDF of `samples`: the finite ones sorted ascending, the i-th (1-based) of n
/// at y = i/n.
fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut xs: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    xs.into_iter()
        .enumerate()
        .map(|(i, x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// The CDF as a staircase to draw: from (x1, 0) up to (x1, y1), across to (x2, y1), up to
/// (x2, y2), ...
fn step_points(cdf: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(cdf.len() * 2);
    let mut prev_y = 0.0;
    for &(x, y) in cdf {
        out.push((x, prev_y));
        out.push((x, y));
        prev_y = y;
    }
    out
}

/// The two lines of an "ms vs N" plot, sorted by x.
#[derive(Debug, Default, PartialEq)]
struct XyPoints {
    /// The x field's name ("containers", "agents").
    x_key: String,
    p50: Vec<(f64, f64)>,
    max: Vec<(f64, f64)>,
    /// Entries or values left out, and why.
    skipped: Vec<String>,
}

/// From `v[array] = [{x_key: N, "p50_ms": f64, "max_ms": f64}, ...]`. An entry without a
/// numeric `x_key` is skipped, and so is a null or missing `p50_ms`/`max_ms` (from its line
/// only); each skip is named in `skipped`. Err when the array is missing, null, not an array,
/// empty or has no usable point.
fn xy_points(v: &Value, array: &str, x_key: &str) -> Result<XyPoints, String> {
    let arr = lookup(v, &[array])?
        .as_array()
        .ok_or_else(|| format!("`{array}` is not an array"))?;
    if arr.is_empty() {
        return Err(format!("`{array}` is empty"));
    }
    let mut p = XyPoints {
        x_key: x_key.to_string(),
        ..XyPoints::default()
    };
    for (i, e) in arr.iter().enumerate() {
        let Some(x) = e
            .get(x_key)
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite())
        else {
            p.skipped
                .push(format!("`{array}[{i}]` has no numeric `{x_key}`: skipped"));
            continue;
        };
        for (key, line) in [("p50_ms", &mut p.p50), ("max_ms", &mut p.max)] {
            match e.get(key).and_then(Value::as_f64).filter(|y| y.is_finite()) {
                Some(y) => line.push((x, y)),
                None => p.skipped.push(format!(
                    "`{array}[{i}].{key}` is missing or null ({x_key} = {}): no point",
                    fmt_num(x)
                )),
            }
        }
    }
    if p.p50.is_empty() && p.max.is_empty() {
        return Err(format!(
            "`{array}` has no entry with `{x_key}` and `p50_ms` or `max_ms`"
        ));
    }
    p.p50.sort_by(|a, b| a.0.total_cmp(&b.0));
    p.max.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(p)
}

/// "each point: N KV writes" from `counts.kv_repeats`, when present.
fn kv_writes(bench: &Value) -> Option<String> {
    let n = lookup(bench, &["counts", "kv_repeats"]).ok()?.as_u64()?;
    Some(format!("each point: p50 and max of {n} KV writes"))
}

/// "each point: p50 and max over N KV changes" from `by_agents[].changes` (N per point when
/// they differ), when every entry has it.
fn fleet_changes(fleet: &Value) -> Option<String> {
    let mut rows: Vec<(f64, u64)> = lookup(fleet, &["by_agents"])
        .ok()?
        .as_array()?
        .iter()
        .map(|e| Some((e.get("agents")?.as_f64()?, e.get("changes")?.as_u64()?)))
        .collect::<Option<_>>()?;
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = rows.first()?.1;
    if rows.iter().all(|r| r.1 == first) {
        return Some(format!("each point: p50 and max over {first} KV changes"));
    }
    let each: Vec<String> = rows
        .iter()
        .map(|(a, n)| format!("{n} at {} agents", fmt_num(*a)))
        .collect();
    Some(format!(
        "each point: p50 and max over its KV changes ({})",
        each.join(", ")
    ))
}

/// The lines under the title: the machine and the command, when the JSON has them, then
/// `extra`.
fn subtitle(v: &Value, extra: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Ok(m) = lookup(v, &["machine"]) {
        let mut parts = Vec::new();
        let s = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let f = |k: &str| m.get(k).and_then(Value::as_f64);
        // The bench's `machine` and the fleet benchmark's name some fields differently.
        if let Some(cpu) = s("cpu").or_else(|| s("cpu_model")) {
            parts.push(cpu.to_string());
        }
        if let Some(c) = f("cores").or_else(|| f("cpus")).filter(|c| *c > 0.0) {
            parts.push(format!("{} cores", fmt_num(c)));
        }
        let mem_gib = f("mem_gib").or_else(|| f("mem_total_mb").map(|mb| mb / 1024.0));
        if let Some(g) = mem_gib.filter(|g| *g > 0.0) {
            parts.push(format!("{} GiB", fmt_num((g * 10.0).round() / 10.0)));
        }
        if let Some(o) = s("os") {
            parts.push(o.to_string());
        }
        if let Some(k) = s("kernel") {
            parts.push(format!("kernel {k}"));
        }
        if let Some(d) = s("docker_version") {
            parts.push(format!("Docker {d}"));
        }
        if let Some(c) = s("consul") {
            parts.push(format!("Consul {c}"));
        }
        if let (Some(a), Some(b)) = (f("load_before"), f("load_after")) {
            parts.push(format!("load {} → {}", fmt_num(a), fmt_num(b)));
        }
        if !parts.is_empty() {
            lines.push(format!("machine: {}", parts.join(", ")));
        }
    }
    let command = match lookup(v, &["command"]) {
        Ok(Value::Array(a)) => {
            let words: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            (!words.is_empty()).then(|| words.join(" "))
        }
        Ok(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    if let Some(c) = command {
        let quick = v.get("quick").and_then(Value::as_bool) == Some(true);
        lines.push(format!(
            "command: {c}{}",
            if quick {
                " (quick: smaller counts)"
            } else {
                ""
            }
        ));
    }
    if let Some(e) = extra {
        lines.push(e.to_string());
    }
    lines.into_iter().map(|l| truncate(&l, 150)).collect()
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

/// A number for a label: 3 significant digits or so, no trailing zeros.
fn fmt_num(x: f64) -> String {
    let s = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

// --- Drawing --------------------------------------------------------------------------------

struct CdfLine {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// Title and subtitle above, notes below: returns the area left for the chart.
fn frame<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    title: &str,
    subtitle: &[String],
    notes: &[String],
) -> Result<DrawingArea<SVGBackend<'a>, Shift>> {
    root.fill(&WHITE)?;
    let header_h = 38 + 18 * subtitle.len() as i32;
    let (header, rest) = root.split_vertically(header_h);
    header.draw(&Text::new(
        title.to_string(),
        (14, 10),
        (FONT, 20).into_font().style(FontStyle::Bold),
    ))?;
    for (i, line) in subtitle.iter().enumerate() {
        header.draw(&Text::new(
            line.clone(),
            (14, 38 + 18 * i as i32),
            (FONT, 13).into_font().color(&RGBColor(80, 80, 80)),
        ))?;
    }
    if notes.is_empty() {
        return Ok(rest);
    }
    let rest_h = rest.dim_in_pixel().1 as i32;
    let footer_h = 8 + 17 * notes.len() as i32;
    let (chart, footer) = rest.split_vertically(rest_h - footer_h);
    for (i, line) in notes.iter().enumerate() {
        footer.draw(&Text::new(
            truncate(line, 150),
            (14, 2 + 17 * i as i32),
            (FONT, 13).into_font().color(&RGBColor(150, 40, 40)),
        ))?;
    }
    Ok(chart)
}

/// Decade-aligned log-axis bounds holding every positive x of `lines`.
fn log_bounds(lines: &[CdfLine]) -> (f64, f64) {
    let pos = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .filter(|x| *x > 0.0);
    let (lo, hi) = pos.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.1, 1.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let mut hi = 10f64.powf(hi.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

fn render_cdf(lines: &[CdfLine], subtitle: &[String], absent: &[String]) -> Result<String> {
    let (lo, hi) = log_bounds(lines);
    let mut notes = Vec::new();
    for l in lines {
        let clamped = l.points.iter().filter(|p| p.0 <= 0.0).count();
        if clamped > 0 {
            notes.push(format!(
                "{}: {clamped} of {} samples ≤ 0 ms, drawn at the left edge ({} ms)",
                l.label,
                l.points.len(),
                fmt_num(lo)
            ));
        }
    }
    for a in absent {
        notes.push(format!("absent from the JSON, not drawn: {a}"));
    }
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        let area = frame(
            &root,
            "Container start → egress policy in force: CDF",
            subtitle,
            &notes,
        )?;
        let mut chart = ChartBuilder::on(&area)
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("time to enforced (ms, log scale)")
            .y_desc("fraction of starts enforced within x")
            .x_label_formatter(&|x| fmt_num(*x))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .axis_desc_style((FONT, 15))
            .label_style((FONT, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()?;
        for l in lines {
            let pts = step_points(&l.points)
                .into_iter()
                .map(|(x, y)| (x.max(lo), y));
            let color = l.color;
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(format!("{} (n = {})", l.label, l.points.len()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
        root.present()?;
    }
    Ok(buf)
}

/// What an "ms vs N" plot says.
struct XyPlot {
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    /// The legend's labels of the two lines.
    p50_label: &'static str,
    max_label: &'static str,
}

fn render_xy(plot: &XyPlot, p: &XyPoints, subtitle: &[String]) -> Result<String> {
    let all = || p.p50.iter().chain(p.max.iter());
    let x_max = all().map(|q| q.0).fold(0f64, f64::max);
    let x_min = all().map(|q| q.0).fold(f64::INFINITY, f64::min).min(0.0);
    let y_max = all().map(|q| q.1).fold(0f64, f64::max);
    let x_hi = if x_max > x_min { x_max * 1.06 } else { 1.0 };
    let y_hi = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        let area = frame(&root, plot.title, subtitle, &[])?;
        let mut chart = ChartBuilder::on(&area)
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_hi, 0f64..y_hi)?;
        chart
            .configure_mesh()
            .x_desc(plot.x_desc)
            .y_desc(plot.y_desc)
            .x_label_formatter(&|x| fmt_num(*x))
            .y_label_formatter(&|y| fmt_num(*y))
            .axis_desc_style((FONT, 15))
            .label_style((FONT, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()?;
        let lines = [
            (plot.max_label, &p.max, MAX_COLOR),
            (plot.p50_label, &p.p50, P50_COLOR),
        ];
        for (label, line, color) in lines {
            if line.is_empty() {
                continue;
            }
            chart
                .draw_series(
                    LineSeries::new(line.iter().copied(), color.stroke_width(2)).point_size(4),
                )?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                });
            // Each point's value, just above it.
            let style = (FONT, 12)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(line.iter().map(|&(x, y)| {
                EmptyElement::at((x, y)) + Text::new(fmt_num(y), (0, -7), style.clone())
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
        root.present()?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cdf_sorts_and_steps_by_one_over_n() {
        let c = cdf(&[3.0, 1.0, 2.0, 2.0]);
        assert_eq!(c, vec![(1.0, 0.25), (2.0, 0.5), (2.0, 0.75), (3.0, 1.0)]);
        assert!(cdf(&[]).is_empty());
        // Non-finite values are not samples.
        assert_eq!(cdf(&[f64::NAN, 5.0, f64::INFINITY]), vec![(5.0, 1.0)]);
        // Negative values sort first.
        assert_eq!(cdf(&[0.5, -1.0]), vec![(-1.0, 0.5), (0.5, 1.0)]);
    }

    #[test]
    fn step_points_climb_from_zero() {
        let s = step_points(&[(1.0, 0.5), (4.0, 1.0)]);
        assert_eq!(s, vec![(1.0, 0.0), (1.0, 0.5), (4.0, 0.5), (4.0, 1.0)]);
        assert!(step_points(&[]).is_empty());
    }

    #[test]
    fn samples_at_reads_nested_arrays_and_names_what_is_missing() {
        let v = json!({
            "exposure_window_samples_ms": [2.5, 1.0],
            "helper_container_samples_ms": [],
            "event_to_enforced_samples_ms": null,
            "dfw_ms": {
                "burst_timeout_0": {"p50": 9.0, "samples_ms": [10.0, null, "x", 12.0]},
                "burst_timeout_500": null
            },
            "odd": 3
        });
        assert_eq!(
            samples_at(&v, &["exposure_window_samples_ms"]),
            Ok(Samples {
                values: vec![2.5, 1.0],
                dropped: 0
            })
        );
        assert_eq!(
            samples_at(&v, &["dfw_ms", "burst_timeout_0", "samples_ms"]),
            Ok(Samples {
                values: vec![10.0, 12.0],
                dropped: 2
            })
        );
        assert_eq!(
            samples_at(&v, &["helper_container_samples_ms"]),
            Err("`helper_container_samples_ms` is empty".into())
        );
        assert_eq!(
            samples_at(&v, &["event_to_enforced_samples_ms"]),
            Err("`event_to_enforced_samples_ms` is null".into())
        );
        assert_eq!(
            samples_at(&v, &["dfw_ms", "burst_timeout_500", "samples_ms"]),
            Err("`dfw_ms.burst_timeout_500` is null".into())
        );
        assert_eq!(
            samples_at(&json!({}), &["dfw_ms", "burst_timeout_0", "samples_ms"]),
            Err("`dfw_ms` is missing".into())
        );
        assert_eq!(
            samples_at(&v, &["odd"]),
            Err("`odd` is not an array".into())
        );
        assert_eq!(
            samples_at(&json!({"a": [null]}), &["a"]),
            Err("`a` holds no number".into())
        );
        // A bench JSON that is not an object has no field at all.
        assert_eq!(
            samples_at(&json!([1, 2]), &["a"]),
            Err("`a` is missing".into())
        );
    }

    #[test]
    fn xy_points_skip_null_values_and_bad_entries() {
        let v = json!({"kv_by_containers": [
            {"containers": 50, "p50_ms": 300.0, "max_ms": null, "writes": 5},
            {"containers": 10, "p50_ms": 100.0, "max_ms": 150.0},
            {"p50_ms": 1.0},
            {"containers": 100, "max_ms": 700.0}
        ]});
        let p = xy_points(&v, "kv_by_containers", "containers").unwrap();
        assert_eq!(p.p50, vec![(10.0, 100.0), (50.0, 300.0)]);
        assert_eq!(p.max, vec![(10.0, 150.0), (100.0, 700.0)]);
        assert_eq!(p.skipped.len(), 3, "{:?}", p.skipped);
        assert!(p.skipped.iter().any(|s| s.contains("[2]")));
        assert!(p
            .skipped
            .iter()
            .any(|s| s.contains("[0].max_ms") && s.contains("containers = 50")));
        assert!(p.skipped.iter().any(|s| s.contains("[3].p50_ms")));

        assert_eq!(
            xy_points(&json!({}), "by_agents", "agents"),
            Err("`by_agents` is missing".into())
        );
        assert_eq!(
            xy_points(&json!({"by_agents": null}), "by_agents", "agents"),
            Err("`by_agents` is null".into())
        );
        assert_eq!(
            xy_points(&json!({"by_agents": []}), "by_agents", "agents"),
            Err("`by_agents` is empty".into())
        );
        assert!(xy_points(
            &json!({"by_agents": [{"agents": 1, "p50_ms": null}]}),
            "by_agents",
            "agents"
        )
        .is_err());
    }

    #[test]
    fn subtitle_names_machine_and_command_when_present() {
        let v = json!({
            "quick": true,
            "command": ["egresstrator-bench", "--json"],
            "machine": {"cores": 2, "cpu": "Some CPU", "mem_gib": 23.4,
                        "kernel": "6.1.0", "docker_version": "28.2.2",
                        "load_before": 0.5, "load_after": null}
        });
        let s = subtitle(&v, Some("extra"));
        assert_eq!(
            s,
            vec![
                "machine: Some CPU, 2 cores, 23.4 GiB, kernel 6.1.0, Docker 28.2.2".to_string(),
                "command: egresstrator-bench --json (quick: smaller counts)".to_string(),
                "extra".to_string(),
            ]
        );
        assert!(subtitle(&json!({}), None).is_empty());
        // The fleet benchmark's names for the same things.
        let fleet = json!({"machine": {"cpus": 2, "cpu_model": "Other CPU", "kernel": "6.1.0",
                                       "os": "Debian GNU/Linux 12 (bookworm)",
                                       "mem_total_mb": 24576, "consul": "1.20.1"}});
        assert_eq!(
            subtitle(&fleet, None),
            vec![
                "machine: Other CPU, 2 cores, 24 GiB, Debian GNU/Linux 12 (bookworm), \
                 kernel 6.1.0, Consul 1.20.1"
                    .to_string()
            ]
        );
    }

    #[test]
    fn fleet_changes_per_point() {
        let same =
            json!({"by_agents": [{"agents": 10, "changes": 5}, {"agents": 2, "changes": 5}]});
        assert_eq!(
            fleet_changes(&same).as_deref(),
            Some("each point: p50 and max over 5 KV changes")
        );
        let differ =
            json!({"by_agents": [{"agents": 100, "changes": 20}, {"agents": 10, "changes": 5}]});
        assert_eq!(
            fleet_changes(&differ).as_deref(),
            Some("each point: p50 and max over its KV changes (5 at 10 agents, 20 at 100 agents)")
        );
        assert_eq!(fleet_changes(&json!({"by_agents": [{"agents": 1}]})), None);
        assert_eq!(fleet_changes(&json!({})), None);
    }

    #[test]
    fn fmt_num_trims() {
        assert_eq!(fmt_num(1000.0), "1000");
        assert_eq!(fmt_num(692.4), "692");
        assert_eq!(fmt_num(3.5), "3.5");
        assert_eq!(fmt_num(2.0), "2");
        assert_eq!(fmt_num(0.05), "0.05");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "egresstrator-plot-{tag}-{}-{nanos}",
            std::process::id()
        ))
    }

    /// Checks an SVG document's outline; returns its text.
    fn read_svg(path: &Path) -> String {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
        assert!(text.trim_end().ends_with("</svg>"));
        assert_eq!(
            text.matches("<text").count(),
            text.matches("</text>").count()
        );
        text
    }

    #[test]
    fn renders_all_three_plots_from_hand_written_json() {
        let bench = json!({
            "quick": false,
            "command": ["egresstrator-bench", "--json"],
            "machine": {"cores": 2, "cpu": "Test CPU", "mem_gib": 24.0,
                        "kernel": "6.1.0-test", "docker_version": "28.2.2"},
            "counts": {"kv_repeats": 5},
            "exposure_window_samples_ms": [4.1, 3.9, 5.2, 4.4, 12.0],
            "event_to_enforced_samples_ms": [3.6, 3.5, 4.2, 3.7, 8.4],
            "helper_container_samples_ms": [135.0, 140.0, 128.0, 167.0],
            "dfw_ms": {
                "burst_timeout_0": {"p50": 40.0, "n": 3, "rebuilds": 3,
                                    "samples_ms": [38.0, 40.0, 55.0]},
                "burst_timeout_500": {"p50": 520.0, "samples_ms": [510.0, 520.0, 600.0]}
            },
            "kv_by_containers": [
                {"containers": 10, "p50_ms": 91.0, "max_ms": 130.0, "writes": 5},
                {"containers": 50, "p50_ms": 257.0, "max_ms": 333.0, "writes": 5},
                {"containers": 100, "p50_ms": 518.0, "max_ms": 692.0, "writes": 5}
            ]
        });
        let fleet = json!({
            "machine": {"cpus": 2, "cpu_model": "Test CPU", "consul": "1.20.1"},
            "by_agents": [
                {"agents": 10, "p50_ms": 120.0, "max_ms": 180.0, "changes": 5},
                {"agents": 100, "p50_ms": 240.0, "max_ms": 410.0, "changes": 5},
                {"agents": 500, "p50_ms": 870.0, "max_ms": 1490.0, "changes": 20}
            ]
        });
        let dir = temp_dir("all");
        let o = plot_all(&bench, Some(&fleet), &dir).unwrap();
        assert!(o.messages.is_empty(), "{:?}", o.messages);
        assert_eq!(o.written.len(), 3);

        let cdf = read_svg(&dir.join(CDF_FILE));
        for label in [
            "egresstrator (StartedAt → enforced) (n = 5)",
            "egresstrator (start event → enforced) (n = 5)",
            "0.2 helper container (n = 4)",
            "dfw, --burst-timeout 0 (n = 3)",
            "dfw, default 500 ms (n = 3)",
            "time to enforced (ms, log scale)",
            "fraction of starts enforced within x",
            "machine: Test CPU, 2 cores, 24 GiB, kernel 6.1.0-test, Docker 28.2.2",
            "command: egresstrator-bench --json",
        ] {
            assert!(cdf.contains(label), "CDF lacks {label:?}");
        }
        assert!(!cdf.contains("absent"));

        let kv = read_svg(&dir.join(KV_FILE));
        for label in [
            "p50 (the median KV write)",
            "max (the slowest KV write)",
            "running enabled containers",
            "(ms)",
            "each point: p50 and max of 5 KV writes",
            ">\n692\n<",
            ">\n518\n<",
        ] {
            assert!(kv.contains(label), "KV plot lacks {label:?}");
        }

        let fl = read_svg(&dir.join(FLEET_FILE));
        for label in [
            "p50 (the median KV change)",
            "max (the slowest KV change)",
            "agents (simulated hosts)",
            "the last agent holds the new value (ms)",
            "machine: Test CPU, 2 cores, Consul 1.20.1",
            "5 at 10 agents, 5 at 100 agents, 20 at 500 agents",
            ">\n1490\n<",
            ">\n870\n<",
        ] {
            assert!(fl.contains(label), "fleet plot lacks {label:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_fields_skip_lines_and_plots_with_messages() {
        let bench = json!({
            "exposure_window_samples_ms": [-0.2, 1.0, 2.0],
            "event_to_enforced_samples_ms": [],
            "dfw_ms": {"burst_timeout_0": {"p50": 1.0}},
            "kv_by_containers": null
        });
        let dir = temp_dir("absent");
        let o = plot_all(&bench, None, &dir).unwrap();
        assert_eq!(o.written, vec![dir.join(CDF_FILE)]);
        let all = o.messages.join("\n");
        for m in [
            "`event_to_enforced_samples_ms` is empty",
            "`helper_container_samples_ms` is missing",
            "`dfw_ms.burst_timeout_0.samples_ms` is missing",
            "`dfw_ms.burst_timeout_500` is missing",
            "kv-convergence-vs-containers.svg not written: `kv_by_containers` is null",
            "fleet-convergence-vs-agents.svg not written: no --fleet JSON given",
        ] {
            assert!(all.contains(m), "no {m:?} in {all}");
        }
        let cdf = read_svg(&dir.join(CDF_FILE));
        assert!(cdf.contains("egresstrator (StartedAt → enforced) (n = 3)"));
        assert!(cdf.contains("absent from the JSON, not drawn: 0.2 helper container"));
        assert!(cdf.contains("1 of 3 samples ≤ 0 ms, drawn at the left edge"));

        // Nothing to draw at all: no file, no error.
        let o = plot_all(&json!({}), Some(&json!({"by_agents": []})), &dir).unwrap();
        assert!(o.written.is_empty());
        assert!(o
            .messages
            .iter()
            .any(|m| m.contains("fleet JSON: `by_agents` is empty")));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_json_is_an_error() {
        let dir = temp_dir("invalid");
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.json");
        fs::write(&p, "{not json").unwrap();
        assert!(read_json(&p).is_err());
        assert!(read_json(&dir.join("missing.json")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
