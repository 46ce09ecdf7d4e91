//! The flash-sale report as one self-contained HTML file: summary and
//! invariant tables, outcome bars, and per-second throughput and latency
//! charts drawn as inline SVG ([`crate::svg_chart`]). No script, stylesheet,
//! font or image is fetched, so it opens the same offline, in CI artefacts
//! and in a mail attachment.
//!
//! Element ids are stable for tests and links: `summary`, `invariants`,
//! `chart-outcomes`, and per run `chart-throughput-<mode>` and
//! `chart-latency-<mode>`; with several runs also `chart-decided-compare`
//! and `chart-latency-compare`. A sweep's report has `sweep` (its table),
//! `chart-sweep` (decided against offered) and `invariants`.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};

use crate::{
    flash_sale::{FlashSaleReport, Mode},
    sale_sweep::{self, SweepReport},
    svg_chart::{self, BarRun, LineChart, Scale, Series, Unit, escape},
};

const STYLE: &str = "body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:800px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}\
td.pass{color:#1a7f37}td.fail{color:#fff;background:#cf222e;font-weight:bold}\
p.note{color:#555;font-size:13px}svg.chart{display:block;margin:12px 0}figure{margin:12px 0}\
#sweep{font-size:12px}#sweep th,#sweep td{padding:3px 6px}";

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
fn colors(runs: &[FlashSaleReport]) -> Vec<&'static str> {
    const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
    runs.iter()
        .enumerate()
        .map(|(i, r)| match r.mode {
            _ if runs.iter().filter(|o| o.mode == r.mode).count() > 1 => PALETTE[i % PALETTE.len()],
            Mode::Pipeline => "#1f77b4",
            Mode::SqlForUpdate => "#d62728",
        })
        .collect()
}

fn seconds<F>(report: &FlashSaleReport, value: F) -> Vec<(f64, Option<f64>)>
where
    F: Fn(&crate::timeline::SecondStats) -> Option<f64>,
{
    report
        .timeline
        .iter()
        .map(|s| (f64::from(s.second), value(s)))
        .collect()
}

fn throughput_chart(report: &FlashSaleReport, slug: &str) -> String {
    let mut series = vec![
        Series {
            name: "offered/s".into(),
            color: "#999999",
            dashed: true,
            points: seconds(report, |s| Some(s.offered as f64)),
        },
        Series {
            name: "accepted/s".into(),
            color: "#1f77b4",
            dashed: false,
            points: seconds(report, |s| Some(s.accepted as f64)),
        },
        Series {
            name: "decided/s".into(),
            color: "#2ca02c",
            dashed: false,
            points: seconds(report, |s| Some(s.decided as f64)),
        },
    ];
    if report.timeline.iter().any(|s| s.throttled_429 > 0) {
        series.push(Series {
            name: "429/s".into(),
            color: "#ff7f0e",
            dashed: false,
            points: seconds(report, |s| Some(s.throttled_429 as f64)),
        });
    }
    if report.timeline.iter().any(|s| s.errors > 0) {
        series.push(Series {
            name: "errors/s".into(),
            color: "#d62728",
            dashed: false,
            points: seconds(report, |s| Some(s.errors as f64)),
        });
    }
    svg_chart::line_chart(&LineChart {
        id: format!("chart-throughput-{slug}"),
        title: format!("{}: throughput per second", report.mode.as_str()),
        x_label: "seconds since the load started".into(),
        y_label: "claims per second".into(),
        scale: Scale::Linear,
        unit: Unit::Count,
        series,
    })
}

fn latency_chart(report: &FlashSaleReport, slug: &str) -> String {
    let mut series = vec![
        Series {
            name: "accept p50".into(),
            color: "#6baed6",
            dashed: false,
            points: seconds(report, |s| s.accept_p50_ms),
        },
        Series {
            name: "accept p99".into(),
            color: "#08519c",
            dashed: false,
            points: seconds(report, |s| s.accept_p99_ms),
        },
    ];
    if report.mode != Mode::SqlForUpdate {
        series.extend([
            Series {
                name: "decided p50".into(),
                color: "#74c476",
                dashed: false,
                points: seconds(report, |s| s.decided_from_send_p50_ms),
            },
            Series {
                name: "decided p99".into(),
                color: "#006d2c",
                dashed: false,
                points: seconds(report, |s| s.decided_from_send_p99_ms),
            },
        ]);
    }
    svg_chart::line_chart(&LineChart {
        id: format!("chart-latency-{slug}"),
        title: format!("{}: latency by second sent", report.mode.as_str()),
        x_label: "second the request was scheduled".into(),
        y_label: "latency (log scale)".into(),
        scale: Scale::Log,
        unit: Unit::Millis,
        series,
    })
}

fn compare_charts(runs: &[FlashSaleReport], slugs: &[String]) -> String {
    let mut decided = Vec::new();
    let mut latency = Vec::new();
    for ((run, slug), color) in runs.iter().zip(slugs).zip(colors(runs)) {
        decided.push(Series {
            name: format!("{slug} decided/s"),
            color,
            dashed: false,
            points: seconds(run, |s| Some(s.decided as f64)),
        });
        latency.push(Series {
            name: format!("{slug} p99"),
            color,
            dashed: false,
            points: seconds(run, |s| s.decided_from_send_p99_ms),
        });
        latency.push(Series {
            name: format!("{slug} p50"),
            color,
            dashed: true,
            points: seconds(run, |s| s.decided_from_send_p50_ms),
        });
    }
    let mut out = svg_chart::line_chart(&LineChart {
        id: "chart-decided-compare".into(),
        title: "Claims decided per second".into(),
        x_label: "seconds since the load started".into(),
        y_label: "decisions per second".into(),
        scale: Scale::Linear,
        unit: Unit::Count,
        series: decided,
    });
    out.push_str(&svg_chart::line_chart(&LineChart {
        id: "chart-latency-compare".into(),
        title: "From send to decision, by second sent".into(),
        x_label: "second the request was scheduled".into(),
        y_label: "latency (log scale)".into(),
        scale: Scale::Log,
        unit: Unit::Millis,
        series: latency,
    }));
    out
}

fn ms(v: f64) -> String {
    svg_chart::format_ms(v)
}

fn summary_table(runs: &[FlashSaleReport], slugs: &[String]) -> String {
    type Row = (&'static str, fn(&FlashSaleReport) -> String);
    let rows: [Row; 22] = [
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
        ("claims decided/s", |r| format!("{:.0}", r.claims_per_sec)),
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
    let mut out = String::from(r#"<table id="summary"><thead><tr><th>metric</th>"#);
    for slug in slugs {
        let _ = write!(out, "<th>{}</th>", escape(slug));
    }
    out.push_str("</tr></thead><tbody>");
    for (name, value) in rows {
        let _ = write!(out, "<tr><td>{}</td>", escape(name));
        for run in runs {
            let _ = write!(out, "<td>{}</td>", escape(&value(run)));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

fn invariant_table(runs: &[FlashSaleReport], slugs: &[String]) -> String {
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
    let mut out = String::from(r#"<table id="invariants"><thead><tr><th>invariant (must be 0)</th>"#);
    for slug in slugs {
        let _ = write!(out, "<th>{}</th>", escape(slug));
    }
    out.push_str("</tr></thead><tbody>");
    for (name, meaning, value) in rows {
        let _ = write!(
            out,
            r#"<tr data-invariant="{name}"><td><code>{name}</code>: {}</td>"#,
            escape(meaning)
        );
        for run in runs {
            let v = value(run);
            let (class, mark) = if v == 0 { ("pass", "✓") } else { ("fail", "✗") };
            let _ = write!(out, r#"<td class="{class}">{v} {mark}</td>"#);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

fn outcome_chart(runs: &[FlashSaleReport], slugs: &[String]) -> String {
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
    svg_chart::bar_chart("chart-outcomes", "Outcomes of the offered claims", &categories, &bars)
}

/// A report page up to its title: doctype, head with the style, `<h1>`.
fn page_start(title: &str) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>"#,
        escape(title),
        escape(title)
    );
    out
}

/// The report for `runs` (one run, or several side by side).
pub fn render(title: &str, runs: &[FlashSaleReport]) -> String {
    let slugs = slugs(runs);
    let mut out = page_start(title);
    out.push_str(
        r#"<p class="note">Open loop: requests leave on schedule whatever the service does, and every latency counts from the scheduled send time. Accept: the HTTP answer. Decide: the pipeline's is the server's, from acceptance to the worker's commit; sql-for-update decides inside the request, so its decide latency is its accept latency. Send → decided: from the scheduled send to the decision's commit, the same clock for every mode.</p>"#,
    );
    let _ = write!(
        out,
        "<section><h2>Summary</h2>{}</section>",
        summary_table(runs, &slugs)
    );
    let _ = write!(
        out,
        "<section><h2>Invariants</h2>{}<p class=\"note\">Audited in Postgres after every accepted claim was decided or the wait timed out.</p></section>",
        invariant_table(runs, &slugs)
    );
    let _ = write!(
        out,
        "<section><h2>Outcomes</h2>{}</section>",
        outcome_chart(runs, &slugs)
    );
    if runs.len() > 1 {
        let _ = write!(
            out,
            "<section><h2>Side by side</h2>{}<p class=\"note\">Solid: p99, dashed: p50.</p></section>",
            compare_charts(runs, &slugs)
        );
    }
    for (run, slug) in runs.iter().zip(&slugs) {
        let _ = write!(
            out,
            r#"<section id="run-{}"><h2>{}</h2>{}{}"#,
            escape(slug),
            escape(slug),
            throughput_chart(run, slug),
            latency_chart(run, slug)
        );
        if run.mode == Mode::SqlForUpdate {
            out.push_str(r#"<p class="note">Decided inside the request: decide latency is the accept latency.</p>"#);
        }
        out.push_str("</section>");
    }
    out.push_str("</body></html>\n");
    out
}

/// Renders `runs` into the file at `path`.
pub fn write(path: &Path, title: &str, runs: &[FlashSaleReport]) -> Result<()> {
    write_html(path, &render(title, runs))
}

fn sweep_table(sweep: &SweepReport) -> String {
    let mut out = String::from(r#"<table id="sweep"><thead><tr>"#);
    for column in sale_sweep::COLUMNS {
        let _ = write!(out, "<th>{}</th>", escape(column));
    }
    out.push_str("</tr></thead><tbody>");
    for row in sweep.rows() {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// The report of a sweep: its table, the decided-against-offered chart and
/// every run's invariants.
pub fn render_sweep(title: &str, sweep: &SweepReport) -> String {
    let runs = sweep.runs();
    let slugs: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}/s", r.mode.as_str(), r.rate))
        .collect();
    let chart = match sweep.chart_svg() {
        Ok(svg) => svg,
        Err(e) => format!(r#"<p class="note">{}</p>"#, escape(&format!("{e:#}"))),
    };
    let mut out = page_start(title);
    out.push_str(
        r#"<p class="note">Each rate is a whole comparison: the pipeline, then the baseline, each offered the same open-loop load. Decided/s: decisions over the span from the first acceptance to the last decision. Decide p99: from the scheduled send to the decision's commit. 429 share: of all HTTP requests sent. Generator CPU share: the load generator's own CPU time over the sending phase, as a share of the machine.</p>"#,
    );
    let _ = write!(
        out,
        r#"<section><h2>Decided against offered</h2><figure id="chart-sweep">{chart}</figure></section>"#
    );
    let _ = write!(out, "<section><h2>Per rate</h2>{}</section>", sweep_table(sweep));
    let _ = write!(
        out,
        "<section><h2>Invariants</h2>{}</section>",
        invariant_table(&runs, &slugs)
    );
    out.push_str("</body></html>\n");
    out
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
    fn duplicate_modes_get_distinct_ids() {
        let html = render("t", &[run(Mode::Pipeline), run(Mode::Pipeline)]);
        assert!(html.contains(r#"id="chart-throughput-pipeline-1""#));
        assert!(html.contains(r#"id="chart-throughput-pipeline-2""#));
    }
}
