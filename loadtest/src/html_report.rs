//! The flash-sale report as one self-contained HTML file: summary and
//! invariant tables, outcome bars, and per-second throughput and latency
//! charts drawn as inline SVG ([`crate::svg_chart`]). No script, stylesheet,
//! font or image is fetched, so it opens the same offline, in CI artefacts
//! and in a mail attachment. The page is a `maud` template: every text and
//! attribute value is HTML-escaped by the engine, and only the charts' SVG,
//! which `plotters` escapes itself, goes in as markup.
//!
//! Element ids are stable for tests and links: `summary`, `invariants`,
//! `chart-outcomes`, and per run `chart-throughput-<mode>` and
//! `chart-latency-<mode>`; with several runs also `chart-decided-compare`
//! and `chart-latency-compare`. A sweep's report has `sweep` (its table),
//! `chart-sweep` (decided against offered) and `invariants`. A chart's id is
//! on the `<figure>` that holds its `<svg>`.

use std::path::Path;

use anyhow::{Context, Result};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use plotters::style::RGBColor;

use crate::{
    flash_sale::{FlashSaleReport, Mode},
    sale_sweep::{self, SweepReport},
    svg_chart::{self, BarRun, LineChart, Scale, Series, Unit},
    timeline::SecondStats,
};

const STYLE: &str = "body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:800px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}\
td.pass{color:#1a7f37}td.fail{color:#fff;background:#cf222e;font-weight:bold}\
p.note{color:#555;font-size:13px}figure.chart{margin:12px 0}figure.chart svg{display:block;max-width:100%;height:auto}\
#sweep{font-size:12px}#sweep th,#sweep td{padding:3px 6px}";

const PIPELINE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const BASELINE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const OFFERED: RGBColor = RGBColor(0x99, 0x99, 0x99);
const DECIDED: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const THROTTLED: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// A run's slug for element ids: its mode, made unique by position when two
/// runs share one.
fn slugs(runs: &[FlashSaleReport]) -> Vec<String> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            let shared = runs.iter().filter(|o| o.mode == r.mode).count() > 1;
            if shared {
                format!("{}-{}", r.mode.as_str(), i + 1)
            } else {
                r.mode.as_str().to_owned()
            }
        })
        .collect()
}

/// Each run's colour: blue for the pipeline, red for the baseline, and a
/// palette when several runs share a mode.
fn colors(runs: &[FlashSaleReport]) -> Vec<RGBColor> {
    const PALETTE: [RGBColor; 6] = [
        PIPELINE,
        BASELINE,
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    runs.iter()
        .enumerate()
        .map(|(i, r)| match r.mode {
            _ if runs.iter().filter(|o| o.mode == r.mode).count() > 1 => PALETTE[i % PALETTE.len()],
            Mode::Pipeline => PIPELINE,
            Mode::SqlForUpdate => BASELINE,
        })
        .collect()
}

fn seconds<F>(report: &FlashSaleReport, value: F) -> Vec<(f64, Option<f64>)>
where
    F: Fn(&SecondStats) -> Option<f64>,
{
    report
        .timeline
        .iter()
        .map(|s| (f64::from(s.second), value(s)))
        .collect()
}

fn series(name: impl Into<String>, color: RGBColor, dashed: bool, points: Vec<(f64, Option<f64>)>) -> Series {
    Series {
        name: name.into(),
        color,
        dashed,
        points,
    }
}

/// A chart in its `<figure>`, or why it could not be drawn.
fn figure(id: &str, svg: Result<String>) -> Markup {
    html! {
        figure.chart id=(id) {
            @match svg {
                Ok(svg) => (PreEscaped(svg)),
                Err(e) => p.note { "chart not drawn: " (format!("{e:#}")) },
            }
        }
    }
}

fn throughput_chart(report: &FlashSaleReport, slug: &str) -> Markup {
    let mut lines = vec![
        series("offered/s", OFFERED, true, seconds(report, |s| Some(s.offered as f64))),
        series(
            "accepted/s",
            PIPELINE,
            false,
            seconds(report, |s| Some(s.accepted as f64)),
        ),
        series("decided/s", DECIDED, false, seconds(report, |s| Some(s.decided as f64))),
    ];
    if report.timeline.iter().any(|s| s.throttled_429 > 0) {
        lines.push(series(
            "429/s",
            THROTTLED,
            false,
            seconds(report, |s| Some(s.throttled_429 as f64)),
        ));
    }
    if report.timeline.iter().any(|s| s.errors > 0) {
        lines.push(series(
            "errors/s",
            BASELINE,
            false,
            seconds(report, |s| Some(s.errors as f64)),
        ));
    }
    let chart = LineChart {
        title: format!("{}: throughput per second", report.mode.as_str()),
        x_label: "seconds since the load started".into(),
        y_label: "claims per second".into(),
        scale: Scale::Linear,
        unit: Unit::Count,
        series: lines,
    };
    figure(&format!("chart-throughput-{slug}"), svg_chart::line_chart(&chart))
}

fn latency_chart(report: &FlashSaleReport, slug: &str) -> Markup {
    let mut lines = vec![
        series(
            "accept p50",
            RGBColor(0x6b, 0xae, 0xd6),
            false,
            seconds(report, |s| s.accept_p50_ms),
        ),
        series(
            "accept p99",
            RGBColor(0x08, 0x51, 0x9c),
            false,
            seconds(report, |s| s.accept_p99_ms),
        ),
    ];
    if report.mode != Mode::SqlForUpdate {
        lines.extend([
            series(
                "decided p50",
                RGBColor(0x74, 0xc4, 0x76),
                false,
                seconds(report, |s| s.decided_from_send_p50_ms),
            ),
            series(
                "decided p99",
                RGBColor(0x00, 0x6d, 0x2c),
                false,
                seconds(report, |s| s.decided_from_send_p99_ms),
            ),
        ]);
    }
    let chart = LineChart {
        title: format!("{}: latency by second sent", report.mode.as_str()),
        x_label: "second the request was scheduled".into(),
        y_label: "latency (log scale)".into(),
        scale: Scale::Log,
        unit: Unit::Millis,
        series: lines,
    };
    figure(&format!("chart-latency-{slug}"), svg_chart::line_chart(&chart))
}

fn compare_charts(runs: &[FlashSaleReport], slugs: &[String]) -> Markup {
    let mut decided = Vec::new();
    let mut latency = Vec::new();
    for ((run, slug), color) in runs.iter().zip(slugs).zip(colors(runs)) {
        decided.push(series(
            format!("{slug} decided/s"),
            color,
            false,
            seconds(run, |s| Some(s.decided as f64)),
        ));
        latency.push(series(
            format!("{slug} p99"),
            color,
            false,
            seconds(run, |s| s.decided_from_send_p99_ms),
        ));
        latency.push(series(
            format!("{slug} p50"),
            color,
            true,
            seconds(run, |s| s.decided_from_send_p50_ms),
        ));
    }
    let decided = LineChart {
        title: "Claims decided per second".into(),
        x_label: "seconds since the load started".into(),
        y_label: "decisions per second".into(),
        scale: Scale::Linear,
        unit: Unit::Count,
        series: decided,
    };
    let latency = LineChart {
        title: "From send to decision, by second sent".into(),
        x_label: "second the request was scheduled".into(),
        y_label: "latency (log scale)".into(),
        scale: Scale::Log,
        unit: Unit::Millis,
        series: latency,
    };
    html! {
        (figure("chart-decided-compare", svg_chart::line_chart(&decided)))
        (figure("chart-latency-compare", svg_chart::line_chart(&latency)))
    }
}

fn ms(v: f64) -> String {
    svg_chart::format_ms(v)
}

fn summary_table(runs: &[FlashSaleReport], slugs: &[String]) -> Markup {
    type Row = (&'static str, fn(&FlashSaleReport) -> String);
    let rows: [Row; 24] = [
        ("coupons × units", |r| {
            format!("{} × {}", r.coupons, r.stock_per_coupon)
        }),
        ("distinct users", |r| r.users.to_string()),
        ("offered", |r| {
            format!("{} ({}/s for {} s)", r.offered, r.rate, r.duration_s)
        }),
        ("requests sent (retries)", |r| {
            format!("{} ({})", r.requests_sent, r.retries)
        }),
        ("accepted (200/202)", |r| r.accepted.to_string()),
        ("arrivals refused", |r| r.arrivals_refused.to_string()),
        ("granted", |r| r.granted.to_string()),
        ("rejected", |r| r.rejected.to_string()),
        ("throttled (429)", |r| {
            if r.rate_limited_429 > 0 {
                format!(
                    "{} ({} a key's or user's rate limit)",
                    r.throttled_429, r.rate_limited_429
                )
            } else {
                r.throttled_429.to_string()
            }
        }),
        ("other 4xx", |r| r.errors_4xx.to_string()),
        ("5xx", |r| r.errors_5xx.to_string()),
        ("transport errors", |r| r.transport_errors.to_string()),
        ("dropped by the client", |r| r.dropped.to_string()),
        ("dropped by the client's throttle", |r| r.throttled_locally.to_string()),
        ("claims decided/s", |r| format!("{:.0}", r.claims_per_sec)),
        ("final answers/s (at the door or decided)", |r| {
            format!("{:.0}", r.answered_or_decided_per_sec())
        }),
        ("accept p50 / p99", |r| {
            format!("{} / {}", ms(r.accept_p50_ms), ms(r.accept_p99_ms))
        }),
        ("decide p50 / p99", |r| {
            format!("{} / {}", ms(r.decide_p50_ms), ms(r.decide_p99_ms))
        }),
        ("send → decided p50 / p99", |r| {
            format!("{} / {}", ms(r.decide_from_send_p50_ms), ms(r.decide_from_send_p99_ms))
        }),
        ("first attempt → decided p50 / p99", |r| {
            format!(
                "{} / {}",
                ms(r.decide_from_first_attempt_p50_ms),
                ms(r.decide_from_first_attempt_p99_ms)
            )
        }),
        ("grants to the earliest arrivals", |r| {
            format!("{:.1}%", 100.0 * r.grants_to_earliest_share)
        }),
        ("load generator CPU", |r| {
            format!("{:.2} cores ({:.0}%)", r.generator_cores, 100.0 * r.generator_cpu_share)
        }),
        ("undecided", |r| r.undecided.to_string()),
        ("all invariants hold", |r| {
            if r.invariants_hold() { "yes" } else { "NO" }.to_owned()
        }),
    ];
    html! {
        table #summary {
            thead { tr { th { "metric" } @for slug in slugs { th { (slug) } } } }
            tbody {
                @for (name, value) in rows {
                    tr { td { (name) } @for run in runs { td { (value(run)) } } }
                }
            }
        }
    }
}

fn invariant_table(runs: &[FlashSaleReport], slugs: &[String]) -> Markup {
    type Row = (&'static str, &'static str, fn(&FlashSaleReport) -> i64);
    let rows: [Row; 5] = [
        ("oversold", "units granted beyond a coupon's stock", |r| r.oversold),
        ("double_claims", "users granted one coupon twice", |r| r.double_claims),
        (
            "fence_regressions",
            "decisions whose fence is below an earlier one's in commit order",
            |r| r.fence_regressions,
        ),
        (
            "remaining_mismatches",
            "coupons whose stock is not total minus grants",
            |r| r.remaining_mismatches,
        ),
        ("undecided", "accepted claims still pending at the end", |r| {
            i64::try_from(r.undecided).unwrap_or(i64::MAX)
        }),
    ];
    html! {
        table #invariants {
            thead { tr { th { "invariant (must be 0)" } @for slug in slugs { th { (slug) } } } }
            tbody {
                @for (name, meaning, value) in rows {
                    tr data-invariant=(name) {
                        td { code { (name) } ": " (meaning) }
                        @for run in runs {
                            @let v = value(run);
                            @if v == 0 {
                                td.pass { (v) " ✓" }
                            } @else {
                                td.fail { (v) " ✗" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn outcome_chart(runs: &[FlashSaleReport], slugs: &[String]) -> Markup {
    let categories = [
        "granted",
        "rejected",
        "429",
        "other 4xx",
        "5xx",
        "transport",
        "dropped",
        "undecided",
    ];
    let bars: Vec<BarRun> = runs
        .iter()
        .zip(slugs)
        .zip(colors(runs))
        .map(|((r, slug), color)| BarRun {
            name: slug.clone(),
            color,
            values: vec![
                r.granted,
                r.rejected,
                r.throttled_429,
                r.errors_4xx,
                r.errors_5xx,
                r.transport_errors,
                r.dropped,
                r.undecided,
            ],
        })
        .collect();
    figure(
        "chart-outcomes",
        svg_chart::bar_chart("Outcomes of the offered claims", &categories, &bars),
    )
}

/// A whole report page: doctype, head with the style, `<h1>`, a note on how
/// to read it, then `body`.
fn page(title: &str, note: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                p.note { (note) }
                (body)
            }
        }
    }
    .into_string()
        + "\n"
}

/// The report for `runs` (one run, or several side by side).
pub fn render(title: &str, runs: &[FlashSaleReport]) -> String {
    let slugs = slugs(runs);
    let body = html! {
        section {
            h2 { "Summary" }
            (summary_table(runs, &slugs))
        }
        section {
            h2 { "Invariants" }
            (invariant_table(runs, &slugs))
            p.note { "Audited in Postgres after every accepted claim was decided or the wait timed out." }
        }
        section {
            h2 { "Outcomes" }
            (outcome_chart(runs, &slugs))
        }
        @if runs.len() > 1 {
            section {
                h2 { "Side by side" }
                (compare_charts(runs, &slugs))
                p.note { "Solid: p99, dashed: p50." }
            }
        }
        @for (run, slug) in runs.iter().zip(&slugs) {
            section id=(format!("run-{slug}")) {
                h2 { (slug) }
                (throughput_chart(run, slug))
                (latency_chart(run, slug))
                @if run.mode == Mode::SqlForUpdate {
                    p.note { "Decided inside the request: decide latency is the accept latency." }
                }
            }
        }
    };
    page(
        title,
        "Open loop: requests leave on schedule whatever the service does, and every latency counts from the \
         scheduled send time. Accept: the HTTP answer. Decide: the pipeline's is the server's, from acceptance to \
         the worker's commit; sql-for-update decides inside the request, so its decide latency is its accept \
         latency. Send → decided: from the scheduled send to the decision's commit, the same clock for every mode.",
        body,
    )
}

/// Renders `runs` into the file at `path`.
pub fn write(path: &Path, title: &str, runs: &[FlashSaleReport]) -> Result<()> {
    write_html(path, &render(title, runs))
}

fn sweep_table(sweep: &SweepReport) -> Markup {
    html! {
        table #sweep {
            thead { tr { @for column in sale_sweep::COLUMNS { th { (column) } } } }
            tbody {
                @for row in sweep.rows() {
                    tr { @for cell in row { td { (cell) } } }
                }
            }
        }
    }
}

/// The report of a sweep: its table, the decided-against-offered chart and
/// every run's invariants.
pub fn render_sweep(title: &str, sweep: &SweepReport) -> String {
    let runs = sweep.runs();
    let slugs: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}/s", r.mode.as_str(), r.rate))
        .collect();
    let body = html! {
        section {
            h2 { "Decided against offered" }
            (figure("chart-sweep", sweep.chart_svg()))
        }
        section {
            h2 { "Per rate" }
            (sweep_table(sweep))
        }
        section {
            h2 { "Invariants" }
            (invariant_table(&runs, &slugs))
        }
    };
    page(
        title,
        "Each rate is a whole comparison: the pipeline, then the baseline, each offered the same open-loop load. \
         Decided/s: decisions over the span from the first acceptance to the last decision. Decide p99: from the \
         scheduled send to the decision's commit. 429 share: of all HTTP requests sent. Generator CPU share: the \
         load generator's own CPU time over the sending phase, as a share of the machine.",
        body,
    )
}

/// Renders a sweep into the file at `path`.
pub fn write_sweep(path: &Path, title: &str, sweep: &SweepReport) -> Result<()> {
    write_html(path, &render_sweep(title, sweep))
}

fn write_html(path: &Path, html: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::SecondStats;

    fn run(mode: Mode) -> FlashSaleReport {
        FlashSaleReport {
            mode,
            offered: 10,
            accepted: 10,
            granted: 3,
            rejected: 7,
            timeline: vec![SecondStats {
                second: 0,
                offered: 10,
                accepted: 10,
                decided: 10,
                accept_p50_ms: Some(2.0),
                accept_p99_ms: Some(9.0),
                decided_from_send_p50_ms: Some(20.0),
                decided_from_send_p99_ms: Some(90.0),
                ..SecondStats::default()
            }],
            ..FlashSaleReport::default()
        }
    }

    #[test]
    fn one_run_has_its_charts_and_no_comparison() {
        let html = render("t", &[run(Mode::SqlForUpdate)]);
        for id in [
            "summary",
            "invariants",
            "chart-outcomes",
            "chart-throughput-sql-for-update",
            "chart-latency-sql-for-update",
        ] {
            assert!(html.contains(&format!(r#"id="{id}""#)), "{id}");
        }
        assert!(!html.contains("chart-decided-compare"));
    }

    #[test]
    fn runs_side_by_side_and_failures_stand_out() {
        let mut bad = run(Mode::SqlForUpdate);
        bad.oversold = 2;
        let html = render("t", &[run(Mode::Pipeline), bad]);
        assert!(html.contains(r#"id="chart-decided-compare""#));
        assert!(html.contains(r#"id="chart-latency-pipeline""#));
        assert!(html.contains(r#"<td class="fail">2 ✗</td>"#));
        // Self-contained: nothing to fetch.
        for needle in ["<script", "<link", "src=", "href=", "url(", "@import"] {
            assert!(!html.contains(needle), "{needle}");
        }
    }

    #[test]
    fn a_sweep_has_its_table_chart_and_every_runs_invariants() {
        use crate::sale_compare::CompareReport;

        let point = |rate: f64| {
            let (mut pipeline, mut baseline) = (run(Mode::Pipeline), run(Mode::SqlForUpdate));
            (pipeline.rate, baseline.rate) = (rate, rate);
            (pipeline.claims_per_sec, baseline.claims_per_sec) = (rate * 0.9, rate * 0.3);
            CompareReport {
                pipeline,
                sql_for_update: baseline,
            }
        };
        let sweep = SweepReport {
            points: vec![point(2_000.0), point(5_000.0)],
        };
        let html = render_sweep("t", &sweep);
        for id in ["sweep", "chart-sweep", "invariants"] {
            assert!(html.contains(&format!(r#"id="{id}""#)), "{id}");
        }
        assert!(html.contains("<svg"));
        assert!(html.contains("<th>sql-for-update 5000/s</th>"));
        assert_eq!(html.matches(r#"<td class="pass">0 ✓</td>"#).count(), 5 * 4);
        assert_eq!(html.matches("<tr><td>").count(), 2, "one table row per rate");
    }

    #[test]
    fn text_is_escaped_by_the_template() {
        let html = render(r#"<script>alert("x")</script> & co"#, &[run(Mode::Pipeline)]);
        assert!(!html.contains("<script"), "{html:.400}");
        assert!(html.contains("<title>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co</title>"));
        assert!(html.starts_with("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"));
    }

    #[test]
    fn duplicate_modes_get_distinct_ids() {
        let html = render("t", &[run(Mode::Pipeline), run(Mode::Pipeline)]);
        assert!(html.contains(r#"id="chart-throughput-pipeline-1""#));
        assert!(html.contains(r#"id="chart-throughput-pipeline-2""#));
    }
}
