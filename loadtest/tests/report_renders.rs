//! The HTML report in a real browser: headless Chromium loads the file, its
//! rendered DOM must hold every section and chart, and each chart must draw
//! what the runs measured: a line per series with a point per second, in
//! the order the values go, with its legend entry, axis names and tick
//! labels; a bar per outcome and run, as long as its count. Chromium also
//! paints the page to a PNG.
//! Chromium comes from `scripts/ensure-chromium`; without it these tests
//! fail, they are never skipped.
//!
//! One report is rendered from recorded runs (every chart, both modes, side
//! by side); another from a real small flash sale through `sql-baseline`
//! started in this process against the stack's Postgres.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio_util::sync::CancellationToken;
use turnstile_loadtest::{
    credentials::KeyArgs,
    flash_sale::{self, FlashSaleArgs, FlashSaleReport, Mode, SaleParams, ThrottleArgs},
    html_report,
    timeline::SecondStats,
};
use turnstile_testkit::browser;

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned())
}

/// A directory of this test's own under the system temp dir.
fn scratch_dir(test: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("turnstile-{test}-{nanos:x}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The DOM Chromium built from the report file `html`.
async fn rendered_dom(html: &Path) -> String {
    browser::render(&format!("file://{}", html.display()), Duration::from_secs(2))
        .await
        .dom
}

/// A PNG of the report file `html` as Chromium paints it, at 860 pixels
/// wide: the page is laid out and drawn, not only parsed.
async fn screenshot(html: &Path) -> Vec<u8> {
    browser::screenshot(&format!("file://{}", html.display()), 860, 4000).await
}

/// The markup of the chart with `id`: a `<figure>` that holds one `<svg>`.
fn chart_by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element with id {id} in the rendered DOM"));
    let start = dom[..at].rfind('<').unwrap();
    assert!(dom[start..].starts_with("<figure"), "#{id} is not a <figure>");
    let end = at + dom[at..].find("</figure>").unwrap();
    let figure = &dom[start..end];
    assert_eq!(
        figure.matches("<svg").count(),
        1,
        "#{id} holds one <svg>: {figure:.300}"
    );
    assert!(figure.contains("</svg>"), "#{id}: the <svg> is not closed");
    figure
}

/// The text of every `<text>` element, trimmed.
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|element| {
            let start = element.find('>')? + 1;
            let end = element.find("</text>")?;
            Some(element[start..end].trim())
        })
        .collect()
}

fn attribute<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let at = element.find(&format!(r#" {name}=""#))? + name.len() + 3;
    Some(&element[at..at + element[at..].find('"')?])
}

/// The points of every data line drawn in `color` (`#RRGGBB`): polylines two
/// pixels wide (the legend's samples are wider), in drawing order.
fn lines(svg: &str, color: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .filter_map(|element| {
            let element = &element[..element.find('>')?];
            (attribute(element, "stroke")? == color && attribute(element, "stroke-width")? == "2").then(|| {
                attribute(element, "points")
                    .unwrap()
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
        })
        .collect()
}

/// The one unbroken line drawn in `color`.
fn line(svg: &str, color: &str) -> Vec<(f64, f64)> {
    let mut lines = lines(svg, color);
    assert_eq!(lines.len(), 1, "one line in {color}: {lines:?}");
    lines.remove(0)
}

/// The widths of the bars filled with `color`, in drawing order.
fn bars(svg: &str, color: &str) -> Vec<f64> {
    svg.split("<rect")
        .skip(1)
        .filter_map(|element| {
            let element = &element[..element.find('>')?];
            (attribute(element, "fill")? == color).then(|| attribute(element, "width").unwrap().parse().unwrap())
        })
        .collect()
}

/// The chart with `id`, with something drawn in it and every one of `texts`
/// written in it (legend entries, axis names, tick labels).
fn assert_drawn<'a>(dom: &'a str, id: &str, expected: &[&str]) -> &'a str {
    let svg = chart_by_id(dom, id);
    let written = texts(svg);
    assert!(!written.contains(&"no data"), "#{id} says no data");
    for text in expected {
        assert!(written.contains(text), "#{id} has no text {text:?}: {written:?}");
    }
    assert!(
        svg.contains("<polyline") || svg.contains("<rect"),
        "#{id} draws nothing"
    );
    svg
}

/// The pixel height of the y axis tick labelled `label` (y tick labels are
/// the texts anchored at their end, left of the axis).
fn y_tick(svg: &str, label: &str) -> f64 {
    svg.split("<text")
        .skip(1)
        .find_map(|element| {
            let (attributes, rest) = element.split_once('>')?;
            (attribute(attributes, "text-anchor")? == "end" && rest.split("</text>").next()?.trim() == label)
                .then(|| attribute(attributes, "y").unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no y tick {label:?}"))
}

/// The value a pixel height stands for on a linear y axis, read from the
/// positions of two of its ticks.
fn linear_value(svg: &str, y: f64, (low, low_value): (&str, f64), (high, high_value): (&str, f64)) -> f64 {
    let (y_low, y_high) = (y_tick(svg, low), y_tick(svg, high));
    low_value + (y_low - y) / (y_low - y_high) * (high_value - low_value)
}

/// The same on a logarithmic axis.
fn log_value(svg: &str, y: f64, low: (&str, f64), high: (&str, f64)) -> f64 {
    10f64.powf(linear_value(svg, y, (low.0, low.1.log10()), (high.0, high.1.log10())))
}

fn assert_near(value: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (value - expected).abs() <= tolerance * expected.abs().max(1.0),
        "{what}: drawn at {value:.1}, expected {expected}"
    );
}

fn is_rising(line: &[(f64, f64)]) -> bool {
    // Pixel y grows downwards.
    line.windows(2).all(|w| w[1].1 < w[0].1)
}

fn is_flat(line: &[(f64, f64)]) -> bool {
    line.windows(2).all(|w| w[1].1 == w[0].1)
}

/// Left to right, one point per second.
fn one_point_per_second(line: &[(f64, f64)], seconds: usize) -> bool {
    line.len() == seconds && line.windows(2).all(|w| w[1].0 > w[0].0)
}

const OFFERED: &str = "#999999";
const ACCEPTED: &str = "#1F77B4";
const DECIDED: &str = "#2CA02C";
const THROTTLED: &str = "#FF7F0E";
const ACCEPT_P99: &str = "#08519C";
const DECIDED_P99: &str = "#006D2C";
const PIPELINE: &str = "#1F77B4";
const BASELINE: &str = "#D62728";

fn recorded(mode: Mode, seconds: u32, decided_per_sec: u64, p99_ms: f64) -> FlashSaleReport {
    let timeline = (0..seconds)
        .map(|s| SecondStats {
            second: s,
            offered: 2000,
            accepted: 1900,
            decided: decided_per_sec,
            throttled_429: 100,
            errors: 0,
            accept_p50_ms: Some(3.0 + f64::from(s)),
            accept_p99_ms: Some(40.0 + 10.0 * f64::from(s)),
            decided_from_send_p50_ms: Some(p99_ms / 4.0),
            decided_from_send_p99_ms: Some(p99_ms + 50.0 * f64::from(s)),
        })
        .collect();
    FlashSaleReport {
        mode,
        coupons: 1,
        stock_per_coupon: 1000,
        users: 20_000,
        rate: 2000.0,
        duration_s: u64::from(seconds),
        offered: 2000 * u64::from(seconds),
        accepted: 1900 * u64::from(seconds),
        granted: 1000,
        rejected: 1900 * u64::from(seconds) - 1000,
        throttled_429: 100 * u64::from(seconds),
        claims_per_sec: decided_per_sec as f64,
        accept_p50_ms: 5.0,
        accept_p99_ms: 80.0,
        decide_p50_ms: 40.0,
        decide_p99_ms: p99_ms,
        decide_from_send_p50_ms: 45.0,
        decide_from_send_p99_ms: p99_ms + 20.0,
        timeline,
        ..FlashSaleReport::default()
    }
}

#[tokio::test]
async fn recorded_runs_render_every_chart() {
    let scratch = scratch_dir("report-recorded");
    let html = scratch.join("compare.html");
    let runs = [
        recorded(Mode::Pipeline, 10, 1900, 120.0),
        recorded(Mode::SqlForUpdate, 10, 900, 900.0),
    ];
    html_report::write(&html, "pipeline vs sql-for-update", &runs).unwrap();
    let dom = rendered_dom(&html).await;

    let seconds: Vec<String> = (0..10).map(|s| s.to_string()).collect();
    let seconds: Vec<&str> = seconds.iter().map(String::as_str).collect();
    for (mode, decided) in [("pipeline", 1900.0), ("sql-for-update", 900.0)] {
        let throughput = assert_drawn(
            &dom,
            &format!("chart-throughput-{mode}"),
            &[
                &format!("{mode}: throughput per second"),
                "offered/s",
                "accepted/s",
                "decided/s",
                "429/s",
                "seconds since the load started",
                "claims per second",
                "0",
                "500",
                "1k",
                "1.5k",
                "2k",
            ],
        );
        for second in &seconds {
            assert!(
                texts(throughput).contains(second),
                "{mode}: no tick for second {second}"
            );
        }
        // Every series a line of one point per second; offered is dashed.
        let decided_line = line(throughput, DECIDED);
        let throttled_line = line(throughput, THROTTLED);
        for (name, points) in [
            ("accepted", line(throughput, ACCEPTED)),
            ("decided", decided_line.clone()),
            ("429", throttled_line.clone()),
        ] {
            assert!(one_point_per_second(&points, 10), "{mode} {name}: {points:?}");
            assert!(is_flat(&points), "{mode} {name} is constant: {points:?}");
        }
        assert!(lines(throughput, OFFERED).len() > 10, "{mode}: offered is dashed");
        // Each line at its value on the y axis's scale.
        let count = |y: f64| linear_value(throughput, y, ("0", 0.0), ("2k", 2000.0));
        assert_near(count(decided_line[0].1), decided, 0.01, &format!("{mode} decided/s"));
        assert_near(count(throttled_line[0].1), 100.0, 0.1, &format!("{mode} 429/s"));
        assert_near(
            count(line(throughput, ACCEPTED)[0].1),
            1900.0,
            0.01,
            &format!("{mode} accepted/s"),
        );

        let mut latency_texts = vec![
            "accept p50",
            "accept p99",
            "second the request was scheduled",
            "latency (log scale)",
            "1 ms",
            "10 ms",
            "100 ms",
            "1 s",
        ];
        if mode == "pipeline" {
            latency_texts.extend(["decided p50", "decided p99"]);
        }
        let latency = assert_drawn(&dom, &format!("chart-latency-{mode}"), &latency_texts);
        let accept_p99 = line(latency, ACCEPT_P99);
        assert!(one_point_per_second(&accept_p99, 10), "{accept_p99:?}");
        assert!(
            is_rising(&accept_p99),
            "accept p99 climbs 10 ms a second: {accept_p99:?}"
        );
        let ms = |y: f64| log_value(latency, y, ("10 ms", 10.0), ("1 s", 1000.0));
        assert_near(
            ms(accept_p99[0].1),
            40.0,
            0.03,
            &format!("{mode} accept p99 in second 0"),
        );
        assert_near(
            ms(accept_p99[9].1),
            130.0,
            0.03,
            &format!("{mode} accept p99 in second 9"),
        );
        if mode == "pipeline" {
            let decided_p99 = line(latency, DECIDED_P99);
            assert!(is_rising(&decided_p99), "{decided_p99:?}");
            // 570 ms against 130 ms in the last second.
            assert!(decided_p99[9].1 < accept_p99[9].1);
        } else {
            assert!(
                !texts(latency).contains(&"decided p99"),
                "sql-for-update decides in the request"
            );
        }
    }

    let decided = assert_drawn(
        &dom,
        "chart-decided-compare",
        &[
            "Claims decided per second",
            "pipeline decided/s",
            "sql-for-update decided/s",
            "decisions per second",
        ],
    );
    let (pipeline, baseline) = (line(decided, PIPELINE), line(decided, BASELINE));
    assert!(one_point_per_second(&pipeline, 10) && one_point_per_second(&baseline, 10));
    let count = |y: f64| linear_value(decided, y, ("0", 0.0), ("2k", 2000.0));
    assert_near(count(pipeline[0].1), 1900.0, 0.01, "pipeline decided/s");
    assert_near(count(baseline[0].1), 900.0, 0.02, "sql-for-update decided/s");
    let latency = assert_drawn(
        &dom,
        "chart-latency-compare",
        &[
            "pipeline p99",
            "pipeline p50",
            "sql-for-update p99",
            "sql-for-update p50",
        ],
    );
    // Solid p99 lines; the p50s are dashed, many short lines each.
    let (pipeline, baseline) = (lines(latency, PIPELINE), lines(latency, BASELINE));
    assert!(pipeline.len() > 2 && baseline.len() > 2);
    let longest = |lines: &[Vec<(f64, f64)>]| lines.iter().max_by_key(|l| l.len()).unwrap().clone();
    let (pipeline_p99, baseline_p99) = (longest(&pipeline), longest(&baseline));
    assert!(one_point_per_second(&pipeline_p99, 10) && one_point_per_second(&baseline_p99, 10));
    let ms = |y: f64| log_value(latency, y, ("10 ms", 10.0), ("1 s", 1000.0));
    for (second, (p, b)) in pipeline_p99.iter().zip(&baseline_p99).enumerate() {
        let rise = 50.0 * second as f64;
        assert_near(ms(p.1), 120.0 + rise, 0.03, &format!("pipeline p99 in second {second}"));
        assert_near(
            ms(b.1),
            900.0 + rise,
            0.03,
            &format!("sql-for-update p99 in second {second}"),
        );
    }

    let outcomes = assert_drawn(
        &dom,
        "chart-outcomes",
        &[
            "Outcomes of the offered claims",
            "pipeline",
            "sql-for-update",
            "granted",
            "rejected",
            "429",
            "other 4xx",
            "5xx",
            "transport",
            "dropped",
            "undecided",
            "1000",
            "18000",
        ],
    );
    // One bar per category and run: granted 1000, rejected 18000, 429 1000, then nothing.
    for color in [PIPELINE, BASELINE] {
        let widths = bars(outcomes, color);
        assert_eq!(widths.len(), 8, "{color}: {widths:?}");
        assert!(widths[0] > 0.0 && widths[0] == widths[2], "{color}: {widths:?}");
        assert!(widths[1] > 15.0 * widths[0], "{color}: {widths:?}");
        assert!(widths[3..].iter().all(|w| *w == 0.0), "{color}: {widths:?}");
    }

    for section in ["Summary", "Invariants", "Outcomes", "Side by side"] {
        assert!(dom.contains(&format!("<h2>{section}</h2>")), "no section {section}");
    }
    assert!(dom.contains(r#"<section id="run-pipeline"><h2>pipeline</h2>"#));
    assert!(dom.contains(r#"<section id="run-sql-for-update"><h2>sql-for-update</h2>"#));
    assert!(dom.contains(r#"<table id="invariants">"#));
    assert!(dom.contains(r#"<table id="summary">"#));
    assert!(dom.contains("<td>claims decided/s</td><td>1900</td><td>900</td>"));
    // Every invariant row, a pass mark in each run's column.
    for invariant in [
        "oversold",
        "double_claims",
        "fence_regressions",
        "remaining_mismatches",
        "undecided",
    ] {
        assert!(dom.contains(&format!(r#"data-invariant="{invariant}""#)), "{invariant}");
    }
    assert_eq!(dom.matches(r#"<td class="pass">0 ✓</td>"#).count(), 10);

    // Laid out and painted: a PNG with more in it than a blank page.
    let png = screenshot(&html).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 50_000, "a near-empty screenshot: {} bytes", png.len());
    browser::remove_dir_eventually(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sql_for_update_sale_reports_and_renders() {
    let settings = sql_baseline::Settings {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: turnstile_runtime::settings::DatabaseSettings {
            url: database_url().into(),
        },
        pg_pool: 8,
        pg_acquire_timeout: Duration::from_secs(30),
        pg_statement_timeout: Duration::from_secs(30),
        pg_lock_timeout: Duration::from_secs(30),
        outcome_deadline: Duration::from_secs(10),
        max_inflight: 1024,
        max_body_bytes: 16 * 1024,
        // This test measures the report, not the buckets.
        callers: turnstile_http::CallerSettings::unlimited(Duration::from_secs(2)),
        tls: turnstile_http::tls::TlsSettings::default(),
    };
    let app = sql_baseline::Application::build(settings)
        .await
        .expect("sql-baseline starts against the stack's postgres");
    let api = format!("http://{}", app.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let args = FlashSaleArgs {
        api,
        cacert: None,
        mode: Mode::SqlForUpdate,
        sale: SaleParams {
            database_url: database_url(),
            // None given: the sale mints a pair in the stack's database,
            // where sql-baseline reads its keys.
            keys: KeyArgs::default(),
            coupons: 1,
            stock: 50,
            users: 400,
            each_user_once: false,
            // Gentle enough for a debug build on a busy CI machine; the
            // in-flight cap is high so that a slow moment queues rather
            // than drops.
            rate: 100.0,
            duration: 3,
            max_in_flight: 4096,
            connections: std::num::NonZeroUsize::new(16).unwrap(),
            decide_timeout: 30,
            run_id: None,
            retry: false,
            throttle: ThrottleArgs::default(),
        },
        json: true,
        report: None,
    };
    let report = flash_sale::run(&args).await.unwrap();
    stop.cancel();
    println!("{}", serde_json::to_string(&report).unwrap());
    assert!(report.invariants_hold(), "{report:?}");
    assert_eq!(report.offered, 300);
    assert_eq!(
        report.accepted, report.offered,
        "every claim answered with its decision"
    );
    assert_eq!(report.granted, 50);
    assert_eq!(report.granted + report.rejected, report.accepted);
    assert_eq!(report.undecided, 0);
    // Decided in the request: the decide latency is the accept latency.
    assert_eq!(report.decide_p99_ms, report.accept_p99_ms);
    // No retries: one request per arrival, and the first attempt is the send.
    assert_eq!((report.requests_sent, report.retries), (300, 0));
    assert_eq!(report.arrivals_refused, report.offered - report.accepted);
    assert_eq!(report.decide_from_first_attempt_p99_ms, report.decide_from_send_p99_ms);
    assert!(report.grants_to_earliest_share > 0.0 && report.grants_to_earliest_share <= 1.0);
    assert!(
        report.generator_cores > 0.0 && report.generator_cpu_share <= 1.0,
        "{report:?}"
    );
    assert!(report.timeline.len() >= 3, "{:?}", report.timeline);
    assert_eq!(report.timeline.iter().map(|s| s.offered).sum::<u64>(), 300);
    assert_eq!(report.timeline.iter().map(|s| s.decided).sum::<u64>(), 300);

    let scratch = scratch_dir("report-real");
    let html = scratch.join("sql-for-update.html");
    html_report::write(&html, "a small sql-for-update sale", std::slice::from_ref(&report)).unwrap();
    let dom = rendered_dom(&html).await;
    // Every second of the run is a point of the decided line, and the
    // accept latency of every second with an answer one of its line.
    let throughput = assert_drawn(
        &dom,
        "chart-throughput-sql-for-update",
        &["offered/s", "accepted/s", "decided/s", "claims per second"],
    );
    let drawn: usize = lines(throughput, DECIDED).iter().map(Vec::len).sum();
    assert_eq!(drawn, report.timeline.len(), "{:?}", report.timeline);
    let latency = assert_drawn(
        &dom,
        "chart-latency-sql-for-update",
        &["accept p50", "accept p99", "latency (log scale)"],
    );
    let answered = report.timeline.iter().filter(|s| s.accept_p99_ms.is_some()).count();
    let drawn: usize = lines(latency, ACCEPT_P99).iter().map(Vec::len).sum();
    assert!(
        drawn <= answered && drawn + 2 >= answered,
        "{drawn} of {answered} seconds"
    );
    let outcomes = assert_drawn(&dom, "chart-outcomes", &["granted", "rejected", "50", "250"]);
    let widths = bars(outcomes, BASELINE);
    assert_eq!(widths.len(), 8, "{widths:?}");
    assert!(
        widths[1] > widths[0] && widths[0] > 0.0,
        "250 rejected, 50 granted: {widths:?}"
    );
    assert!(dom.contains(r#"<table id="invariants">"#));
    assert_eq!(dom.matches(r#"<td class="pass">0 ✓</td>"#).count(), 5);
    browser::remove_dir_eventually(&scratch);
}
