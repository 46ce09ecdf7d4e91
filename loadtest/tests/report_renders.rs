//! The HTML report in a real browser: headless Chromium loads the file and
//! its rendered DOM must hold every chart with something drawn in it.
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
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio_util::sync::CancellationToken;
use turnstile_http::auth::RateLimit;
use turnstile_loadtest::{
    credentials::KeyArgs,
    flash_sale::{self, FlashSaleArgs, FlashSaleReport, Mode, SaleParams},
    html_report,
    timeline::SecondStats,
};

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

/// Best effort: Chromium's helper processes may still be writing to their
/// profile for a moment after the browser exits.
fn remove_scratch(dir: &Path) {
    for _ in 0..10 {
        if std::fs::remove_dir_all(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join("chromium")))
        .chain([PathBuf::from("/usr/bin/chromium")]);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("chromium is not installed: run scripts/ensure-chromium");
}

/// The DOM Chromium built from `html`, after loading it as a file.
async fn rendered_dom(html: &Path, scratch: &Path) -> String {
    let profile = scratch.join("chromium-profile");
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("chromium answers within 2 minutes")
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The markup of the element with `id`, which must be an `<svg>`.
fn svg_by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element with id {id} in the rendered DOM"));
    let start = dom[..at].rfind('<').unwrap();
    assert!(dom[start..].starts_with("<svg"), "#{id} is not an <svg>");
    let end = at + dom[at..].find("</svg>").unwrap();
    &dom[start..end]
}

fn assert_drawn(dom: &str, id: &str, mark: &str) {
    let svg = svg_by_id(dom, id);
    assert!(svg.contains(mark), "#{id} has no {mark}: {svg:.300}");
    assert!(!svg.contains("no data"), "#{id} says no data");
}

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
    let dom = rendered_dom(&html, &scratch).await;

    for id in [
        "chart-throughput-pipeline",
        "chart-latency-pipeline",
        "chart-throughput-sql-for-update",
        "chart-latency-sql-for-update",
        "chart-decided-compare",
        "chart-latency-compare",
    ] {
        assert_drawn(&dom, id, "<polyline");
    }
    assert_drawn(&dom, "chart-outcomes", r#"<rect class="bar""#);
    assert!(dom.contains(r#"<table id="invariants">"#));
    assert!(dom.contains(r#"<table id="summary">"#));
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
    remove_scratch(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sql_for_update_sale_reports_and_renders() {
    let settings = sql_baseline::Settings {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: database_url(),
        pg_pool: 8,
        pg_acquire_timeout: Duration::from_secs(30),
        max_inflight: 1024,
        max_body_bytes: 16 * 1024,
        key_refresh: Duration::from_secs(2),
        // This test measures the report, not the buckets.
        key_rate: RateLimit {
            per_second: 0,
            burst: 0,
        },
        user_rate: RateLimit {
            per_second: 0,
            burst: 0,
        },
    };
    let app = sql_baseline::Application::build(settings)
        .await
        .expect("sql-baseline starts against the stack's postgres");
    let api = format!("http://{}", app.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));

    let args = FlashSaleArgs {
        api,
        mode: Mode::SqlForUpdate,
        sale: SaleParams {
            database_url: database_url(),
            // None given: the sale mints a pair in the stack's database,
            // where sql-baseline reads its keys.
            keys: KeyArgs::default(),
            coupons: 1,
            stock: 50,
            users: 400,
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
    let dom = rendered_dom(&html, &scratch).await;
    assert_drawn(&dom, "chart-throughput-sql-for-update", "<polyline");
    assert_drawn(&dom, "chart-latency-sql-for-update", "<polyline");
    assert_drawn(&dom, "chart-outcomes", r#"<rect class="bar""#);
    assert!(dom.contains(r#"<table id="invariants">"#));
    remove_scratch(&scratch);
}
