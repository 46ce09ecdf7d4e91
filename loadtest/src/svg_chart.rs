//! Line and bar charts drawn as inline SVG, so a report is one file that
//! opens anywhere with nothing fetched and no script run. Pure: data in,
//! markup out.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 44.0;

/// How values on the y axis are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// From zero.
    Linear,
    /// Decades; for latencies that span milliseconds to seconds.
    Log,
}

/// What the y values are, for tick labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Plain counts (per second).
    Count,
    /// Milliseconds.
    Millis,
}

/// One line: a value (or a gap) per x.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// A CSS colour.
    pub color: &'static str,
    /// Drawn dashed (a reference line, such as the offered load).
    pub dashed: bool,
    /// `(x, y)`; `None` leaves a gap.
    pub points: Vec<(f64, Option<f64>)>,
}

/// A line chart over seconds.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// The `id` of the `<svg>` element.
    pub id: String,
    /// Drawn above the plot.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// Linear or logarithmic.
    pub scale: Scale,
    /// For the tick labels.
    pub unit: Unit,
    /// The lines.
    pub series: Vec<Series>,
}

/// Escapes text for XML and HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round step (1, 2 or 5 times a power of ten) giving about `target`
/// intervals up to `max`.
pub fn nice_step(max: f64, target: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(f64::MIN_POSITIVE)
}

/// A tick label: `1.5k`, `250`, `0.5`.
pub fn format_count(v: f64) -> String {
    if v.abs() >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v.abs() >= 1_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

/// A latency label: `0.5 ms`, `20 ms`, `1.5 s`.
pub fn format_ms(ms: f64) -> String {
    if ms >= 1_000.0 {
        format!("{} s", trim(ms / 1_000.0))
    } else {
        format!("{} ms", trim(ms))
    }
}

fn trim(v: f64) -> String {
    let s = if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn label(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Count => format_count(v),
        Unit::Millis => format_ms(v),
    }
}

/// Maps data values to plot coordinates.
struct YAxis {
    scale: Scale,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn fit(scale: Scale, values: impl Iterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        match scale {
            Scale::Linear => {
                let max = values.iter().copied().fold(0.0, f64::max);
                let step = nice_step(max, 5.0);
                let hi = ((max / step).ceil() * step).max(step);
                let ticks = (0..=((hi / step).round() as usize)).map(|i| i as f64 * step).collect();
                Self {
                    scale,
                    lo: 0.0,
                    hi,
                    ticks,
                }
            }
            Scale::Log => {
                let positive = values.iter().copied().filter(|v| *v > 0.0);
                let min = positive.clone().fold(f64::INFINITY, f64::min);
                let max = positive.fold(0.0, f64::max);
                let (lo_exp, mut hi_exp) = if min.is_finite() {
                    (min.log10().floor(), max.log10().ceil())
                } else {
                    (0.0, 1.0)
                };
                if hi_exp <= lo_exp {
                    hi_exp = lo_exp + 1.0;
                }
                let decades = (hi_exp - lo_exp) as i32;
                let mut ticks = Vec::new();
                for e in (lo_exp as i32)..=(hi_exp as i32) {
                    let base = 10f64.powi(e);
                    ticks.push(base);
                    if decades <= 3 && e < hi_exp as i32 {
                        ticks.extend([2.0 * base, 5.0 * base]);
                    }
                }
                Self {
                    scale,
                    lo: 10f64.powf(lo_exp),
                    hi: 10f64.powf(hi_exp),
                    ticks,
                }
            }
        }
    }

    /// The y coordinate of `v`, or `None` where the scale cannot show it.
    fn y(&self, v: f64) -> Option<f64> {
        let plot = HEIGHT - TOP - BOTTOM;
        let fraction = match self.scale {
            Scale::Linear => v / self.hi,
            Scale::Log if v > 0.0 => (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10()),
            Scale::Log => return None,
        };
        fraction
            .is_finite()
            .then(|| HEIGHT - BOTTOM - fraction.clamp(0.0, 1.0) * plot)
    }
}

fn legend(out: &mut String, entries: &[(&str, &str, bool)]) {
    let mut x = LEFT;
    for (name, color, dashed) in entries {
        let dash = if *dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = write!(
            out,
            r#"<g class="legend-entry"><line x1="{x:.1}" y1="36" x2="{:.1}" y2="36" stroke="{color}" stroke-width="3"{dash}/><text x="{:.1}" y="40" font-size="12">{}</text></g>"#,
            x + 18.0,
            x + 23.0,
            escape(name)
        );
        x += 40.0 + 7.0 * name.chars().count() as f64;
    }
}

/// Draws `chart` as an `<svg>` element.
pub fn line_chart(chart: &LineChart) -> String {
    let xs = chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let max_x = xs.fold(0.0, f64::max).max(1.0);
    let x_step = nice_step(max_x, 10.0).max(1.0);
    let x_hi = (max_x / x_step).ceil() * x_step;
    let y = YAxis::fit(
        chart.scale,
        chart.series.iter().flat_map(|s| s.points.iter().filter_map(|p| p.1)),
    );
    let x = |v: f64| LEFT + v / x_hi * (WIDTH - LEFT - RIGHT);

    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg id="{}" class="chart line-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif">"#,
        escape(&chart.id)
    );
    let _ = write!(
        out,
        r#"<title>{}</title><text x="{LEFT}" y="18" font-size="15" font-weight="bold">{}</text>"#,
        escape(&chart.title),
        escape(&chart.title)
    );
    // Grid and y ticks.
    for tick in &y.ticks {
        if let Some(ty) = y.y(*tick) {
            let _ = write!(
                out,
                r##"<line class="grid" x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                ty + 4.0,
                escape(&label(chart.unit, *tick))
            );
        }
    }
    // X ticks.
    let mut tick = 0.0;
    while tick <= x_hi + 1e-9 {
        let tx = x(tick);
        let _ = write!(
            out,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#888"/><text x="{tx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 5.0,
            HEIGHT - BOTTOM + 18.0,
            format_count(tick)
        );
        tick += x_step;
    }
    // Axes and their labels.
    let _ = write!(
        out,
        r##"<line class="axis" x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444"/><line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#444"/>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 6.0,
        escape(&chart.x_label),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(&chart.y_label)
    );
    let entries: Vec<(&str, &str, bool)> = chart
        .series
        .iter()
        .map(|s| (s.name.as_str(), s.color, s.dashed))
        .collect();
    legend(&mut out, &entries);

    let mut drawn = 0;
    for series in &chart.series {
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<g class="series" data-series="{}"><title>{}</title>"#,
            escape(&series.name),
            escape(&series.name)
        );
        // Consecutive points form one polyline; a gap starts another.
        let mut segment: Vec<(f64, f64)> = Vec::new();
        let flush = |segment: &mut Vec<(f64, f64)>, out: &mut String| {
            if segment.len() > 1 {
                let points: Vec<String> = segment.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
                let _ = write!(
                    out,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                    series.color,
                    points.join(" ")
                );
            }
            segment.clear();
        };
        for (px, py) in &series.points {
            match py.and_then(|v| y.y(v).map(|sy| (v, sy))) {
                Some((v, sy)) => {
                    let sx = x(*px);
                    segment.push((sx, sy));
                    let _ = write!(
                        out,
                        r#"<circle cx="{sx:.1}" cy="{sy:.1}" r="2.5" fill="{}"><title>{} at {}s: {}</title></circle>"#,
                        series.color,
                        escape(&series.name),
                        format_count(*px),
                        escape(&label(chart.unit, v))
                    );
                    drawn += 1;
                }
                None => flush(&mut segment, &mut out),
            }
        }
        flush(&mut segment, &mut out);
        out.push_str("</g>");
    }
    if drawn == 0 {
        let _ = write!(
            out,
            r##"<text class="no-data" x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" fill="#888">no data</text>"##,
            (LEFT + WIDTH - RIGHT) / 2.0,
            (TOP + HEIGHT - BOTTOM) / 2.0
        );
    }
    out.push_str("</svg>");
    out
}

/// One group of the bar chart: a value per run.
#[derive(Debug, Clone)]
pub struct BarRun {
    /// The legend entry.
    pub name: String,
    /// A CSS colour.
    pub color: &'static str,
    /// One value per category.
    pub values: Vec<u64>,
}

/// Horizontal grouped bars: one row per category, one bar per run.
pub fn bar_chart(id: &str, title: &str, categories: &[&str], runs: &[BarRun]) -> String {
    const BAR: f64 = 14.0;
    const GAP: f64 = 10.0;
    const LABELS: f64 = 110.0;
    let group = BAR * runs.len().max(1) as f64 + GAP;
    let height = TOP + group * categories.len() as f64 + 30.0;
    let max = runs.iter().flat_map(|r| r.values.iter().copied()).max().unwrap_or(0) as f64;
    let step = nice_step(max, 6.0);
    let hi = ((max / step).ceil() * step).max(step);
    let plot = WIDTH - LABELS - RIGHT - 50.0;
    let x = |v: f64| LABELS + v / hi * plot;

    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg id="{}" class="chart bar-chart" role="img" viewBox="0 0 {WIDTH} {height:.0}" width="{WIDTH}" height="{height:.0}" font-family="DejaVu Sans, Arial, sans-serif"><title>{}</title><text x="{LEFT}" y="18" font-size="15" font-weight="bold">{}</text>"#,
        escape(id),
        escape(title),
        escape(title)
    );
    let entries: Vec<(&str, &str, bool)> = runs.iter().map(|r| (r.name.as_str(), r.color, false)).collect();
    legend(&mut out, &entries);
    let bottom = TOP + group * categories.len() as f64;
    let mut tick = 0.0;
    while tick <= hi + 1e-9 {
        let tx = x(tick);
        let _ = write!(
            out,
            r##"<line class="grid" x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{bottom:.1}" stroke="#e3e3e3"/><text x="{tx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            format_count(tick)
        );
        tick += step;
    }
    for (c, category) in categories.iter().enumerate() {
        let gy = TOP + c as f64 * group + GAP / 2.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            LABELS - 8.0,
            gy + group / 2.0 - GAP / 2.0 + 4.0,
            escape(category)
        );
        for (r, run) in runs.iter().enumerate() {
            let value = run.values.get(c).copied().unwrap_or(0);
            let by = gy + r as f64 * BAR;
            let width = (x(value as f64) - LABELS).max(if value > 0 { 1.0 } else { 0.0 });
            let _ = write!(
                out,
                r#"<rect class="bar" data-category="{}" data-run="{}" x="{LABELS}" y="{by:.1}" width="{width:.1}" height="{:.1}" fill="{}"><title>{}: {} {}</title></rect><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                escape(category),
                escape(&run.name),
                BAR - 2.0,
                run.color,
                escape(&run.name),
                escape(category),
                value,
                LABELS + width + 4.0,
                by + BAR - 4.0,
                value
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(1000.0, 5.0), 200.0);
        assert_eq!(nice_step(2300.0, 5.0), 500.0);
        assert_eq!(nice_step(7.0, 10.0), 1.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nice_step(f64::NAN, 5.0), 1.0);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(format_count(1500.0), "1.5k");
        assert_eq!(format_count(2000.0), "2k");
        assert_eq!(format_count(250.0), "250");
        assert_eq!(format_ms(0.5), "0.5 ms");
        assert_eq!(format_ms(20.0), "20 ms");
        assert_eq!(format_ms(1500.0), "1.5 s");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    fn chart(points: Vec<(f64, Option<f64>)>, scale: Scale) -> String {
        line_chart(&LineChart {
            id: "c".into(),
            title: "t <1>".into(),
            x_label: "s".into(),
            y_label: "ms".into(),
            scale,
            unit: Unit::Millis,
            series: vec![Series {
                name: "p99".into(),
                color: "#000",
                dashed: false,
                points,
            }],
        })
    }

    #[test]
    fn gaps_split_the_line() {
        let svg = chart(
            vec![
                (0.0, Some(1.0)),
                (1.0, Some(2.0)),
                (2.0, None),
                (3.0, Some(3.0)),
                (4.0, Some(900.0)),
            ],
            Scale::Log,
        );
        assert!(svg.starts_with(r#"<svg id="c""#));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("t &lt;1&gt;"));
        // Decades from 1 ms to 1 s.
        assert!(svg.contains(">1 ms<") && svg.contains(">1 s<"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        assert!(chart(vec![(0.0, None)], Scale::Linear).contains("no data"));
        assert!(chart(vec![], Scale::Log).contains("no data"));
    }

    #[test]
    fn bars_one_per_run_and_category() {
        let runs = [
            BarRun {
                name: "a".into(),
                color: "#111",
                values: vec![5, 0],
            },
            BarRun {
                name: "b".into(),
                color: "#222",
                values: vec![7, 1],
            },
        ];
        let svg = bar_chart("bars", "Outcomes", &["granted", "429"], &runs);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 4);
        assert!(svg.contains(r#"data-category="429" data-run="b""#));
    }
}
