//! The report's charts, drawn as SVG by `plotters`' SVG backend: per-second
//! lines on a linear or logarithmic axis, and grouped horizontal bars. The
//! backend writes text as `<text>` elements and escapes it, so no font file
//! is read, a chart draws the same on a machine without fonts, and a report
//! is one file that opens anywhere with nothing fetched and no script run.
//! Pure: data in, markup out.

use anyhow::{Context, Result};
use plotters::{
    coord::{
        Shift,
        ranged1d::{AsRangedCoord, ValueFormatter},
    },
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// Every chart's fonts: the browser picks the first it has.
pub const FONT: &str = "DejaVu Sans, Arial, sans-serif";

const WIDTH: u32 = 760;
/// The line charts' axes, ticks and plot, under the title and legend.
const PLOT_HEIGHT: u32 = 280;
const TITLE_HEIGHT: u32 = 30;
const LEGEND_ROW: u32 = 20;
/// Series of at most this many points get a dot on each: a second alone
/// between two gaps shows, and a short run reads point by point.
const MARKED_POINTS: usize = 120;
const GRID: RGBColor = RGBColor(0xe3, 0xe3, 0xe3);
const AXIS: RGBColor = RGBColor(0x44, 0x44, 0x44);
const MUTED: RGBColor = RGBColor(0x88, 0x88, 0x88);

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
    /// The line's colour.
    pub color: RGBColor,
    /// Drawn dashed (a reference line, such as the offered load).
    pub dashed: bool,
    /// `(x, y)`; `None` leaves a gap.
    pub points: Vec<(f64, Option<f64>)>,
}

/// A line chart over seconds.
#[derive(Debug, Clone)]
pub struct LineChart {
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

/// One group of the bar chart: a value per run.
#[derive(Debug, Clone)]
pub struct BarRun {
    /// The legend entry.
    pub name: String,
    /// The bars' colour.
    pub color: RGBColor,
    /// One value per category.
    pub values: Vec<u64>,
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

/// A text style `size` pixels high as plotters measures it: its SVG
/// backend writes `font-size` as `size / 1.24`.
fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn title_font() -> TextStyle<'static> {
    (FONT, 19)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Top))
}

/// The y axis a chart's values need.
#[derive(Debug, Clone, PartialEq)]
enum YAxis {
    /// From zero to a round number at or above the largest value.
    Linear { hi: f64 },
    /// Whole decades around the values, ticked at 1, 2 and 5 of each when
    /// there are few.
    Log { lo: f64, hi: f64, ticks: Vec<f64> },
}

impl YAxis {
    fn fit(scale: Scale, values: impl Iterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        match scale {
            Scale::Linear => {
                let max = values.iter().copied().fold(0.0, f64::max);
                let step = nice_step(max, 5.0);
                Self::Linear {
                    hi: ((max / step).ceil() * step).max(step),
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
                let decades = hi_exp - lo_exp;
                let mut ticks = Vec::new();
                let mut exp = lo_exp;
                while exp <= hi_exp {
                    let base = 10f64.powf(exp);
                    ticks.push(base);
                    if decades <= 3.0 && exp < hi_exp {
                        ticks.extend([2.0 * base, 5.0 * base]);
                    }
                    exp += 1.0;
                }
                Self::Log {
                    lo: 10f64.powf(lo_exp),
                    hi: 10f64.powf(hi_exp),
                    ticks,
                }
            }
        }
    }
}

/// The runs of consecutive points of `series` that `scale` can show: a gap
/// (`None`, or a value a log axis cannot place) ends one.
fn segments(series: &Series, scale: Scale) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for &(x, y) in &series.points {
        match y.filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0)) {
            Some(v) => current.push((x, v)),
            None if current.is_empty() => {}
            None => out.push(std::mem::take(&mut current)),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// One legend entry: a sample of the line (or a bar) and its name.
struct LegendEntry<'a> {
    name: &'a str,
    color: RGBColor,
    dashed: bool,
    thick: bool,
}

/// The x offset of each entry and the row it goes on, wrapped to the width.
fn legend_layout(entries: &[LegendEntry<'_>]) -> (Vec<(i32, u32)>, u32) {
    const START: i32 = 70;
    let right = WIDTH as i32 - 20;
    let (mut x, mut row) = (START, 0);
    let mut places = Vec::with_capacity(entries.len());
    for entry in entries {
        // The legend's font averages about 7 pixels a character.
        let chars = i32::try_from(entry.name.chars().count()).unwrap_or(i32::MAX);
        let width = chars.saturating_mul(7).saturating_add(28 + 18);
        if x > START && x + width > right {
            (x, row) = (START, row + 1);
        }
        places.push((x, row));
        x += width;
    }
    let rows = if entries.is_empty() { 0 } else { row + 1 };
    (places, rows)
}

fn draw_legend(area: &DrawingArea<SVGBackend<'_>, Shift>, entries: &[LegendEntry<'_>]) -> Result<()> {
    let (places, _) = legend_layout(entries);
    for (entry, (x, row)) in entries.iter().zip(places) {
        let y = i32::try_from(row * LEGEND_ROW + LEGEND_ROW / 2).unwrap_or(0);
        let style = entry.color.stroke_width(if entry.thick { 8 } else { 3 });
        if entry.dashed {
            area.draw(&PathElement::new([(x, y), (x + 8, y)], style))?;
            area.draw(&PathElement::new([(x + 13, y), (x + 22, y)], style))?;
        } else {
            area.draw(&PathElement::new([(x, y), (x + 22, y)], style))?;
        }
        area.draw(&Text::new(
            entry.name.to_owned(),
            (x + 28, y),
            font(15).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// Draws `chart` as an `<svg>` element.
pub fn line_chart(chart: &LineChart) -> Result<String> {
    draw_line_chart(chart).with_context(|| format!("drawing the chart {:?}", chart.title))
}

fn draw_line_chart(chart: &LineChart) -> Result<String> {
    let lines: Vec<Vec<Vec<(f64, f64)>>> = chart.series.iter().map(|s| segments(s, chart.scale)).collect();
    let x_max = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max)
        .max(1.0);
    let y = YAxis::fit(chart.scale, lines.iter().flatten().flatten().map(|p| p.1));
    let entries: Vec<LegendEntry<'_>> = chart
        .series
        .iter()
        .map(|s| LegendEntry {
            name: &s.name,
            color: s.color,
            dashed: s.dashed,
            thick: false,
        })
        .collect();
    let (_, legend_rows) = legend_layout(&entries);
    let legend_height = legend_rows * LEGEND_ROW + 4;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, TITLE_HEIGHT + legend_height + PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, rest) = root.split_vertically(TITLE_HEIGHT);
        title.draw(&Text::new(chart.title.clone(), (70, 8), title_font()))?;
        let (legend, plot) = rest.split_vertically(legend_height);
        draw_legend(&legend, &entries)?;
        match y {
            YAxis::Linear { hi } => draw_lines(&plot, chart, x_max, 0.0..hi, &lines)?,
            YAxis::Log { lo, hi, ticks } => {
                draw_lines(&plot, chart, x_max, (lo..hi).log_scale().with_key_points(ticks), &lines)?
            }
        }
        root.present()?;
    }
    Ok(svg)
}

fn draw_lines<Y>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &LineChart,
    x_max: f64,
    y: Y,
    lines: &[Vec<Vec<(f64, f64)>>],
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut plot = ChartBuilder::on(area)
        .margin_left(8)
        .margin_right(24)
        .margin_top(6)
        .margin_bottom(4)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, y)?;
    let x_label = |v: &f64| format_count(*v);
    let y_label = |v: &f64| label(chart.unit, *v);
    // No more ticks than whole seconds: a tick between two seconds would
    // label no point.
    let x_ticks = (x_max as usize).saturating_add(1).clamp(2, 12);
    plot.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_labels(x_ticks)
        .y_labels(8)
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_style(AXIS)
        .label_style(font(14))
        .axis_desc_style(font(15))
        .draw()?;
    let mut drawn = 0;
    for (series, segments) in chart.series.iter().zip(lines) {
        let style = series.color.stroke_width(2);
        let marked = series.points.len() <= MARKED_POINTS;
        for segment in segments {
            if segment.len() > 1 {
                if series.dashed {
                    plot.draw_series(DashedLineSeries::new(segment.iter().copied(), 6, 4, style))?;
                } else {
                    plot.draw_series(LineSeries::new(segment.iter().copied(), style))?;
                }
            }
            if marked || segment.len() == 1 {
                plot.draw_series(segment.iter().map(|&p| Circle::new(p, 3, series.color.filled())))?;
            }
            drawn += segment.len();
        }
    }
    if drawn == 0 {
        let (w, h) = plot.plotting_area().dim_in_pixel();
        let (x0, y0) = plot.plotting_area().get_base_pixel();
        let (ax, ay) = area.get_base_pixel();
        area.draw(&Text::new(
            "no data",
            (x0 - ax + w as i32 / 2, y0 - ay + h as i32 / 2),
            font(17).color(&MUTED).pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// Horizontal grouped bars: one row per category, one bar per run, each
/// labelled with its value.
pub fn bar_chart(title: &str, categories: &[&str], runs: &[BarRun]) -> Result<String> {
    draw_bar_chart(title, categories, runs).with_context(|| format!("drawing the chart {title:?}"))
}

fn draw_bar_chart(title: &str, categories: &[&str], runs: &[BarRun]) -> Result<String> {
    const BAR: u32 = 14;
    const GAP: u32 = 10;
    let groups = u32::try_from(categories.len().max(1)).unwrap_or(u32::MAX);
    let group = BAR
        .saturating_mul(u32::try_from(runs.len().max(1)).unwrap_or(u32::MAX))
        .saturating_add(GAP);
    let max = runs.iter().flat_map(|r| r.values.iter().copied()).max().unwrap_or(0) as f64;
    let step = nice_step(max, 6.0);
    // A round number at or past the longest bar; its value label goes in
    // the right margin.
    let hi = ((max / step).ceil() * step).max(step);
    let entries: Vec<LegendEntry<'_>> = runs
        .iter()
        .map(|r| LegendEntry {
            name: &r.name,
            color: r.color,
            dashed: false,
            thick: true,
        })
        .collect();
    let (_, legend_rows) = legend_layout(&entries);
    let legend_height = legend_rows * LEGEND_ROW + 4;
    let plot_height = group.saturating_mul(groups).saturating_add(40);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, TITLE_HEIGHT + legend_height + plot_height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title_area, rest) = root.split_vertically(TITLE_HEIGHT);
        title_area.draw(&Text::new(title.to_owned(), (70, 8), title_font()))?;
        let (legend, area) = rest.split_vertically(legend_height);
        draw_legend(&legend, &entries)?;
        let n = f64::from(groups);
        let mut plot = ChartBuilder::on(&area)
            .margin_right(56)
            .margin_bottom(4)
            .x_label_area_size(32)
            .y_label_area_size(118)
            .build_cartesian_2d(0.0..hi, 0.0..n)?;
        let x_label = |v: &f64| format_count(*v);
        plot.configure_mesh()
            .x_label_formatter(&x_label)
            .x_labels(8)
            .y_labels(0)
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .axis_style(AXIS)
            .label_style(font(14))
            .draw()?;
        // Plot units per pixel on the y axis: bars are sized in pixels.
        let unit = n / f64::from(group.saturating_mul(groups));
        for (c, category) in categories.iter().enumerate() {
            // The first category at the top.
            let top = n - c as f64;
            plot.draw_series(std::iter::once(
                EmptyElement::at((0.0, top - 0.5))
                    + Text::new(
                        category.to_string(),
                        (-8, 0),
                        font(15).pos(Pos::new(HPos::Right, VPos::Center)),
                    ),
            ))?;
            for (r, run) in runs.iter().enumerate() {
                let value = run.values.get(c).copied().unwrap_or(0);
                let y1 = top - f64::from(GAP / 2 + BAR * u32::try_from(r).unwrap_or(0)) * unit;
                let y0 = y1 - f64::from(BAR - 2) * unit;
                plot.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (value as f64, y1)],
                    run.color.filled(),
                )))?;
                plot.draw_series(std::iter::once(
                    EmptyElement::at((value as f64, (y0 + y1) / 2.0))
                        + Text::new(
                            value.to_string(),
                            (4, 0),
                            font(14).pos(Pos::new(HPos::Left, VPos::Center)),
                        ),
                ))?;
            }
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The text of every `<text>` element, trimmed.
    pub(crate) fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| {
                let start = element.find('>')? + 1;
                let end = element.find("</text>")?;
                Some(element[start..end].trim())
            })
            .collect()
    }

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
    fn log_axes_span_whole_decades() {
        let axis = YAxis::fit(Scale::Log, [3.0, 900.0].into_iter());
        let YAxis::Log { lo, hi, ticks } = axis else {
            panic!("{axis:?}")
        };
        assert_eq!((lo, hi), (1.0, 1000.0));
        assert_eq!(ticks, [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(
            YAxis::fit(Scale::Linear, [1900.0].into_iter()),
            YAxis::Linear { hi: 2000.0 }
        );
    }

    fn chart(points: Vec<(f64, Option<f64>)>, scale: Scale) -> String {
        line_chart(&LineChart {
            title: "t <1>".into(),
            x_label: "seconds".into(),
            y_label: "latency".into(),
            scale,
            unit: Unit::Millis,
            series: vec![Series {
                name: "p99".into(),
                color: RGBColor(0x12, 0x34, 0x56),
                dashed: false,
                points,
            }],
        })
        .unwrap()
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
        assert!(svg.starts_with("<svg"), "{svg:.200}");
        // Two lines (the legend's sample is drawn thicker).
        let line = r##"<polyline fill="none" opacity="1" stroke="#123456" stroke-width="2""##;
        assert_eq!(svg.matches(line).count(), 2, "{svg}");
        assert_eq!(svg.matches(r##"<circle"##).count(), 4);
        let texts = texts(&svg);
        // Escaped by the backend.
        assert!(texts.contains(&"t &lt;1&gt;"), "{texts:?}");
        for text in ["p99", "seconds", "latency", "1 ms", "100 ms", "1 s"] {
            assert!(texts.contains(&text), "no {text:?} in {texts:?}");
        }
        assert!(!texts.contains(&"no data"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        assert!(texts(&chart(vec![(0.0, None)], Scale::Linear)).contains(&"no data"));
        assert!(texts(&chart(vec![], Scale::Log)).contains(&"no data"));
    }

    #[test]
    fn a_dashed_line_and_many_points() {
        let svg = line_chart(&LineChart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            scale: Scale::Linear,
            unit: Unit::Count,
            series: vec![Series {
                name: "offered/s".into(),
                color: RGBColor(0x99, 0x99, 0x99),
                dashed: true,
                points: (0..600).map(|s| (f64::from(s), Some(2000.0))).collect(),
            }],
        })
        .unwrap();
        // Dashes, no dot per point, and round ticks.
        assert!(svg.matches("<polyline").count() > 10, "{svg:.400}");
        assert_eq!(svg.matches("<circle").count(), 0);
        let texts = texts(&svg);
        for text in ["0", "500", "1k", "1.5k", "2k"] {
            assert!(texts.contains(&text), "no {text:?} in {texts:?}");
        }
    }

    #[test]
    fn bars_one_per_run_and_category() {
        let runs = [
            BarRun {
                name: "a".into(),
                color: RGBColor(0x11, 0x11, 0x11),
                values: vec![5, 0],
            },
            BarRun {
                name: "b".into(),
                color: RGBColor(0x22, 0x22, 0x22),
                values: vec![7, 1],
            },
        ];
        let svg = bar_chart("Outcomes", &["granted", "429"], &runs).unwrap();
        let bars = |color: &str| -> Vec<f64> {
            svg.split("<rect")
                .skip(1)
                .filter(|r| r.contains(&format!(r#"fill="{color}""#)))
                .map(|r| {
                    let at = r.find(r#"width=""#).unwrap() + 7;
                    r[at..at + r[at..].find('"').unwrap()].parse().unwrap()
                })
                .collect()
        };
        let (a, b) = (bars("#111111"), bars("#222222"));
        assert_eq!((a.len(), b.len()), (2, 2), "{svg}");
        assert!(a[0] > 0.0 && a[1] == 0.0 && b[0] > a[0] && b[1] > 0.0, "{a:?} {b:?}");
        let texts = texts(&svg);
        for text in ["Outcomes", "granted", "429", "a", "b", "5", "0", "7", "1"] {
            assert!(texts.contains(&text), "no {text:?} in {texts:?}");
        }
    }
}
