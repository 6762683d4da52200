//! Charts of the decline: distinct IPs (top panel) and distinct
//! organisations (bottom panel) per step over a span, globally with its
//! 95 % interval as a band and for the largest countries (or the ones
//! asked) as lines, optionally indexed to 100 at the first step. Round
//! ticks with thousands separators, axis labels, a title naming the
//! namespace, the A and B windows shaded and the cut-off marked.
//!
//! [`fetch`] asks a [`Source`]; [`svg`] draws plain SVG (no scripts, no
//! external fonts); [`json`] gives the same numbers.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::text::thousands;
use super::{ReportError, Source};
use crate::error::Error;
use crate::query::{GroupBy, Metric, Scope};
use crate::sketch::Estimate;
use crate::time::{Day, DayWindow};

/// What a chart shows.
#[derive(Clone, Debug)]
pub struct ChartSpec {
    pub namespace: String,
    pub span: DayWindow,
    /// `day`, `week`, `month` or `Nd`.
    pub step: String,
    /// Country lines; empty: the `top` largest by distinct IPs over the span.
    pub countries: Vec<[u8; 2]>,
    pub top: usize,
    /// Every line divided by its first value, times 100.
    pub index: bool,
    pub cutoff: Option<Day>,
    pub a: Option<DayWindow>,
    pub b: Option<DayWindow>,
}

/// One line: a label and its points.
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub points: Vec<(DayWindow, Estimate)>,
}

/// One metric: the global line first, then the countries.
#[derive(Clone, Debug)]
pub struct Panel {
    pub metric: Metric,
    pub lines: Vec<Line>,
}

/// Everything drawn.
#[derive(Clone, Debug)]
pub struct ChartData {
    pub spec: ChartSpec,
    pub panels: Vec<Panel>,
}

/// Asks `source` for the series of the chart.
pub async fn fetch<S: Source>(source: &S, spec: &ChartSpec) -> Result<ChartData, ReportError> {
    if spec.span.is_empty() {
        return Err(Error::invalid("to", "the chart's span is empty").into());
    }
    let ns = spec.namespace.as_str();
    let countries: Vec<[u8; 2]> = if spec.countries.is_empty() {
        source
            .group(ns, Metric::Ips, GroupBy::Country, &Scope::Global, spec.span)
            .await?
            .into_iter()
            .filter(|r| r.group != "ZZ")
            .filter_map(|r| <[u8; 2]>::try_from(r.group.as_bytes()).ok())
            .take(spec.top)
            .collect()
    } else {
        spec.countries.clone()
    };
    let mut panels = Vec::new();
    for metric in [Metric::Ips, Metric::Orgs] {
        let mut lines = vec![Line {
            label: "global".into(),
            points: source
                .series(ns, metric, &Scope::Global, spec.span, &spec.step)
                .await?,
        }];
        for cc in &countries {
            lines.push(Line {
                label: String::from_utf8_lossy(cc).into_owned(),
                points: source
                    .series(ns, metric, &Scope::Country(*cc), spec.span, &spec.step)
                    .await?,
            });
        }
        if spec.index {
            for line in &mut lines {
                index_to_100(&mut line.points);
            }
        }
        panels.push(Panel { metric, lines });
    }
    Ok(ChartData {
        spec: spec.clone(),
        panels,
    })
}

/// Divides every point by the first non-zero value, times 100.
fn index_to_100(points: &mut [(DayWindow, Estimate)]) {
    let Some(base) = points.iter().map(|p| p.1.value).find(|v| *v > 0.0) else {
        return;
    };
    for (_, e) in points {
        e.value = 100.0 * e.value / base;
        e.lower = 100.0 * e.lower / base;
        e.upper = 100.0 * e.upper / base;
    }
}

/// A round step (1, 2 or 5 × 10^k) giving about `n` ticks up to `max`.
pub fn tick_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / n;
    let magnitude = 10f64.powf(raw.log10().floor());
    let unit = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * magnitude >= raw)
        .unwrap_or(10.0);
    (unit * magnitude).max(1.0)
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Ips => "distinct IPs",
        Metric::Orgs => "distinct organisations",
    }
}

fn step_name(step: &str) -> String {
    match step {
        "day" | "week" | "month" => format!("per {step}"),
        other => format!("per {other}"),
    }
}

const COLOURS: [&str; 8] = [
    "#d94801", "#238b45", "#6a51a3", "#e6ab02", "#0570b0", "#ce1256", "#8c6d31", "#525252",
];
const GLOBAL: &str = "#08519c";

/// The chart as SVG.
pub fn svg(data: &ChartData) -> String {
    let spec = &data.spec;
    let (width, panel_h, left, right, top) = (960.0, 300.0, 90.0, 150.0, 70.0);
    let gap = 70.0;
    let height = top + 2.0 * panel_h + gap + 60.0;
    let plot_w = width - left - right;
    let (from, to) = (f64::from(spec.span.from.0), f64::from(spec.span.to.0));
    let x = |day: f64| left + plot_w * (day - from) / (to - from).max(1.0);
    let mid = |w: &DayWindow| (f64::from(w.from.0) + f64::from(w.to.0)) / 2.0;
    let mut s = String::new();
    let title = format!(
        "namespace {}: {} and {} {}{}",
        spec.namespace,
        metric_name(Metric::Ips),
        metric_name(Metric::Orgs),
        step_name(&spec.step),
        if spec.index {
            ", indexed (first step = 100)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<title>{}</title>
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="17" text-anchor="middle" font-weight="bold">{}</text>
<text x="{}" y="44" text-anchor="middle" fill="#444">scope: global and {}; {} to {} (exclusive)</text>"##,
        escape(&title),
        width / 2.0,
        escape(&title),
        width / 2.0,
        if spec.countries.is_empty() {
            format!("the {} largest countries", spec.top)
        } else {
            spec.countries
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        },
        spec.span.from,
        spec.span.to
    );
    for (p, panel) in data.panels.iter().enumerate() {
        let y0 = top + p as f64 * (panel_h + gap);
        let plot_h = panel_h - 30.0;
        let max = panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter())
            .map(|(_, e)| e.upper.max(e.value))
            .fold(0.0f64, f64::max);
        let step = tick_step(max, 5.0);
        let top_value = (max / step).ceil().max(1.0) * step;
        let y = |v: f64| y0 + plot_h * (1.0 - v / top_value);
        let _ = writeln!(
            s,
            r#"<g class="panel" data-metric="{}">"#,
            metric_name(panel.metric)
        );
        // A and B windows, then the cut-off.
        for (name, w) in [("A", spec.a), ("B", spec.b)] {
            let Some(w) = w.map(|w| w.intersect(&spec.span)).filter(|w| !w.is_empty()) else {
                continue;
            };
            let (x1, x2) = (x(f64::from(w.from.0)), x(f64::from(w.to.0)));
            let _ = writeln!(
                s,
                r##"<rect x="{x1:.1}" y="{y0:.1}" width="{:.1}" height="{plot_h:.1}" fill="#bdbdbd" opacity="0.3"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555" font-weight="bold">window {name}</text>"##,
                x2 - x1,
                (x1 + x2) / 2.0,
                y0 + plot_h - 8.0
            );
        }
        if let Some(cut) = spec.cutoff.filter(|c| spec.span.contains(*c)) {
            let cx = x(f64::from(cut.0));
            let _ = writeln!(
                s,
                r##"<line x1="{cx:.1}" y1="{y0:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#cb181d" stroke-width="2" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" fill="#cb181d">cut-off {cut}</text>"##,
                y0 + plot_h,
                cx + 4.0,
                y0 + 28.0
            );
        }
        // Grid and y ticks.
        let mut v = 0.0;
        while v <= top_value + step / 2.0 {
            let label = if spec.index {
                format!("{v:.0}")
            } else {
                thousands(v)
            };
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                y(v),
                left + plot_w,
                y(v),
                left - 6.0,
                y(v) + 4.0
            );
            v += step;
        }
        // x ticks at month starts.
        let mut m = spec.span.from;
        if !m.to_string().ends_with("-01") {
            m = m.first_of_next_month();
        }
        while m < spec.span.to {
            let mx = x(f64::from(m.0));
            let _ = writeln!(
                s,
                r##"<line x1="{mx:.1}" y1="{:.1}" x2="{mx:.1}" y2="{:.1}" stroke="#333"/><text x="{mx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y0 + plot_h,
                y0 + plot_h + 5.0,
                y0 + plot_h + 18.0,
                &m.to_string()[..7]
            );
            m = m.first_of_next_month();
        }
        // Axes and labels.
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y0:.1}" x2="{left}" y2="{:.1}" stroke="#333"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>
<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>
<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">UTC day ({})</text>"##,
            y0 + plot_h,
            y0 + plot_h,
            left + plot_w,
            y0 + plot_h,
            y0 + plot_h / 2.0,
            if spec.index {
                format!("{} (first = 100)", metric_name(panel.metric))
            } else {
                metric_name(panel.metric).to_owned()
            },
            left + plot_w / 2.0,
            y0 + plot_h + 34.0,
            step_name(&spec.step)
        );
        // The global interval band, then the lines.
        if let Some(global) = panel.lines.first() {
            if !global.points.is_empty() {
                let upper: Vec<String> = global
                    .points
                    .iter()
                    .map(|(w, e)| format!("{:.1},{:.1}", x(mid(w)), y(e.upper)))
                    .collect();
                let lower: Vec<String> = global
                    .points
                    .iter()
                    .rev()
                    .map(|(w, e)| format!("{:.1},{:.1}", x(mid(w)), y(e.lower)))
                    .collect();
                let _ = writeln!(
                    s,
                    r##"<polygon class="band" points="{} {}" fill="#6baed6" opacity="0.45" stroke="#6baed6"/>"##,
                    upper.join(" "),
                    lower.join(" ")
                );
            }
        }
        for (i, line) in panel.lines.iter().enumerate() {
            let colour = if i == 0 {
                GLOBAL
            } else {
                COLOURS[(i - 1) % COLOURS.len()]
            };
            let pts: Vec<String> = line
                .points
                .iter()
                .map(|(w, e)| format!("{:.1},{:.1}", x(mid(w)), y(e.value)))
                .collect();
            let _ = writeln!(
                s,
                r##"<polyline class="line" data-label="{}" points="{}" fill="none" stroke="{colour}" stroke-width="{}"/>"##,
                escape(&line.label),
                pts.join(" "),
                if i == 0 { 2.5 } else { 1.6 }
            );
            // Legend.
            let ly = y0 + 12.0 + 18.0 * i as f64;
            let lx = left + plot_w + 16.0;
            let last = line.points.last().map(|(_, e)| e.value).unwrap_or(0.0);
            let _ = writeln!(
                s,
                r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} (last {})</text>"##,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                escape(&line.label),
                if spec.index {
                    format!("{last:.0}")
                } else {
                    thousands(last)
                }
            );
        }
        let ly = y0 + 12.0 + 18.0 * panel.lines.len() as f64;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{:.1}" width="18" height="10" fill="#6baed6" opacity="0.45"/><text x="{:.1}" y="{:.1}">global 95 % interval</text>"##,
            ly - 5.0,
            lx + 24.0,
            ly + 4.0
        );
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

/// The chart's numbers as JSON: per panel (`ips`, `orgs`) the lines with
/// their points.
pub fn json(data: &ChartData) -> Value {
    let spec = &data.spec;
    let panels: Vec<Value> = data
        .panels
        .iter()
        .map(|p| {
            json!({
                "metric": match p.metric { Metric::Ips => "ips", Metric::Orgs => "orgs" },
                "lines": p.lines.iter().map(|l| json!({
                    "label": l.label,
                    "points": l.points.iter().map(|(w, e)| {
                        let mut v = super::json::estimate(e);
                        v["from"] = json!(w.from.to_string());
                        v["to"] = json!(w.to.to_string());
                        v
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "namespace": spec.namespace,
        "from": spec.span.from.to_string(),
        "to": spec.span.to.to_string(),
        "step": spec.step,
        "indexed": spec.index,
        "cutoff": spec.cutoff.map(|d| d.to_string()),
        "panels": panels,
    })
}

/// Text safe inside SVG/XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(18_395.0 * 4.0, 5.0), 20_000.0);
        assert_eq!(tick_step(7_003_720.0, 5.0), 2_000_000.0);
        assert_eq!(tick_step(100.0, 5.0), 20.0);
        assert_eq!(tick_step(3.0, 5.0), 1.0);
        assert_eq!(tick_step(0.0, 5.0), 1.0);
    }

    #[test]
    fn the_svg_marks_windows_cutoff_band_and_legend() {
        let day = |s: &str| Day::parse(s).unwrap();
        let span = DayWindow::new(day("2025-04-01"), day("2025-06-01")).unwrap();
        let e = |v: f64| Estimate {
            value: v,
            lower: v * 0.98,
            upper: v * 1.02,
            confidence: 0.95,
            exact: false,
        };
        let points = vec![
            (
                DayWindow::new(day("2025-04-01"), day("2025-05-01")).unwrap(),
                e(36_789.0),
            ),
            (
                DayWindow::new(day("2025-05-01"), day("2025-06-01")).unwrap(),
                e(18_395.0),
            ),
        ];
        let data = ChartData {
            spec: ChartSpec {
                namespace: "demo".into(),
                span,
                step: "month".into(),
                countries: vec![*b"DE"],
                top: 4,
                index: false,
                cutoff: Some(day("2025-05-10")),
                a: Some(points[0].0),
                b: Some(points[1].0),
            },
            panels: vec![Panel {
                metric: Metric::Ips,
                lines: vec![Line {
                    label: "global".into(),
                    points,
                }],
            }],
        };
        let svg = svg(&data);
        for needle in [
            "namespace demo",
            ">10,000<",
            ">40,000<",
            "cut-off 2025-05-10",
            "window A",
            "window B",
            "global 95 % interval",
            "class=\"band\"",
            ">2025-05<",
            "distinct IPs",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        assert!(!svg.contains(">36789<"));
    }
}
