//! A flash sale's report as terminal tables, for the person who ran it:
//! rates, latencies, refusals by kind and the invariants, then one line
//! that says whether the run passed. Scripts read `--json` instead, whose
//! line this never changes.
//!
//! Built with `comfy-table` without its tty feature: no colours and no
//! terminal size probe, so the same text goes to a terminal, a pipe or a log.

use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use crate::{flash_sale::FlashSaleReport, svg_chart::format_ms};

/// A table with `header` and `rows`, every column after the first aligned
/// right (they hold numbers).
fn table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    for row in rows {
        table.add_row(row.to_vec());
    }
    for column in table.column_iter_mut().skip(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    table
}

fn per_second(count: u64, seconds: u64) -> String {
    if seconds == 0 {
        "–".to_owned()
    } else {
        format!("{:.0}", count as f64 / seconds as f64)
    }
}

/// The largest of the per-second values, for the worst second of a run.
fn worst(values: impl Iterator<Item = Option<f64>>) -> String {
    values
        .flatten()
        .filter(|v| v.is_finite())
        .reduce(f64::max)
        .map_or_else(|| "–".to_owned(), format_ms)
}

fn rates(r: &FlashSaleReport) -> Table {
    let d = r.duration_s;
    let decided = r.granted + r.rejected;
    table(
        [&format!("flash sale ({})", r.mode.as_str()), "count", "per second"],
        vec![
            [
                format!(
                    "offered ({} × {} units, {} users, {} s)",
                    r.coupons, r.stock_per_coupon, r.users, d
                ),
                r.offered.to_string(),
                format!("{}", r.rate),
            ],
            [
                "requests sent (retries)".to_owned(),
                format!("{} ({})", r.requests_sent, r.retries),
                per_second(r.requests_sent, d),
            ],
            [
                "accepted (200/202)".to_owned(),
                r.accepted.to_string(),
                per_second(r.accepted, d),
            ],
            [
                "decided (granted / rejected)".to_owned(),
                format!("{decided} ({} / {})", r.granted, r.rejected),
                format!("{:.0}", r.claims_per_sec),
            ],
            [
                "grants to the earliest arrivals".to_owned(),
                format!("{:.1}%", 100.0 * r.grants_to_earliest_share),
                String::new(),
            ],
            [
                "load generator CPU".to_owned(),
                format!("{:.2} cores", r.generator_cores),
                format!("{:.0}% of the machine", 100.0 * r.generator_cpu_share),
            ],
        ],
    )
}

fn latencies(r: &FlashSaleReport) -> Table {
    let timeline = &r.timeline;
    table(
        ["latency", "p50", "p99", "worst second's p99"],
        vec![
            [
                "accept (the HTTP answer)".to_owned(),
                format_ms(r.accept_p50_ms),
                format_ms(r.accept_p99_ms),
                worst(timeline.iter().map(|s| s.accept_p99_ms)),
            ],
            [
                "decide".to_owned(),
                format_ms(r.decide_p50_ms),
                format_ms(r.decide_p99_ms),
                "–".to_owned(),
            ],
            [
                "send → decided".to_owned(),
                format_ms(r.decide_from_send_p50_ms),
                format_ms(r.decide_from_send_p99_ms),
                worst(timeline.iter().map(|s| s.decided_from_send_p99_ms)),
            ],
            [
                "first attempt → decided".to_owned(),
                format_ms(r.decide_from_first_attempt_p50_ms),
                format_ms(r.decide_from_first_attempt_p99_ms),
                "–".to_owned(),
            ],
        ],
    )
}

fn refusals(r: &FlashSaleReport) -> Table {
    table(
        ["refused", "count"],
        vec![
            ["throttled (429)".to_owned(), r.throttled_429.to_string()],
            [
                "  of which a key's or user's rate limit".to_owned(),
                r.rate_limited_429.to_string(),
            ],
            ["other 4xx".to_owned(), r.errors_4xx.to_string()],
            ["5xx".to_owned(), r.errors_5xx.to_string()],
            ["transport errors".to_owned(), r.transport_errors.to_string()],
            ["dropped by the client".to_owned(), r.dropped.to_string()],
            [
                "dropped by the client's throttle".to_owned(),
                r.throttled_locally.to_string(),
            ],
            ["arrivals refused in the end".to_owned(), r.arrivals_refused.to_string()],
        ],
    )
}

fn invariants(r: &FlashSaleReport) -> Table {
    let row = |name: &str, value: i64| {
        [
            name.to_owned(),
            value.to_string(),
            if value == 0 { "ok" } else { "FAIL" }.to_owned(),
        ]
    };
    table(
        ["invariant (must be 0)", "found", ""],
        vec![
            row("oversold units", r.oversold),
            row("double claims", r.double_claims),
            row("fence regressions", r.fence_regressions),
            row("remaining mismatches", r.remaining_mismatches),
            row("refused keys recorded", r.refused_keys_taken),
            row("undecided", i64::try_from(r.undecided).unwrap_or(i64::MAX)),
        ],
    )
}

/// The report as text: four tables and the verdict.
pub fn render(report: &FlashSaleReport) -> String {
    let verdict = if report.invariants_hold() {
        "PASS: every invariant holds"
    } else {
        "FAIL: an invariant is broken"
    };
    format!(
        "{}\n\n{}\n\n{}\n\n{}\n\n{verdict}",
        rates(report),
        latencies(report),
        refusals(report),
        invariants(report)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flash_sale::Mode, timeline::SecondStats};

    fn report() -> FlashSaleReport {
        FlashSaleReport {
            mode: Mode::Pipeline,
            coupons: 1,
            stock_per_coupon: 1000,
            users: 20_000,
            rate: 2000.0,
            duration_s: 10,
            offered: 20_000,
            requests_sent: 20_000,
            accepted: 19_000,
            granted: 1000,
            rejected: 18_000,
            throttled_429: 1000,
            rate_limited_429: 200,
            claims_per_sec: 1890.4,
            accept_p50_ms: 4.0,
            accept_p99_ms: 80.0,
            decide_from_send_p99_ms: 1500.0,
            timeline: vec![
                SecondStats {
                    accept_p99_ms: Some(60.0),
                    ..SecondStats::default()
                },
                SecondStats {
                    second: 1,
                    accept_p99_ms: Some(130.0),
                    ..SecondStats::default()
                },
            ],
            ..FlashSaleReport::default()
        }
    }

    /// The cells of the line that starts with `label`, trimmed.
    fn cells<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
        let line = text
            .lines()
            .find(|l| l.trim_start_matches('│').trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no line {label:?} in\n{text}"));
        line.split(['│', '┆'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn the_key_numbers_are_in_their_rows() {
        let text = render(&report());
        assert_eq!(
            cells(&text, "offered"),
            ["offered (1 × 1000 units, 20000 users, 10 s)", "20000", "2000"]
        );
        assert_eq!(cells(&text, "accepted"), ["accepted (200/202)", "19000", "1900"]);
        assert_eq!(
            cells(&text, "decided"),
            ["decided (granted / rejected)", "19000 (1000 / 18000)", "1890"]
        );
        assert_eq!(
            cells(&text, "accept ("),
            ["accept (the HTTP answer)", "4 ms", "80 ms", "130 ms"]
        );
        assert_eq!(cells(&text, "send → decided")[2], "1.5 s");
        assert_eq!(cells(&text, "throttled"), ["throttled (429)", "1000"]);
        assert_eq!(
            cells(&text, "of which"),
            ["of which a key's or user's rate limit", "200"]
        );
        assert_eq!(cells(&text, "double claims"), ["double claims", "0", "ok"]);
        assert!(text.ends_with("PASS: every invariant holds"), "{text}");
        // Numbers line up on the right.
        let accepted = text.lines().find(|l| l.contains("accepted (200/202)")).unwrap();
        assert!(accepted.contains(" 19000 ┆"), "{accepted}");
    }

    #[test]
    fn a_broken_invariant_fails_the_run() {
        let mut report = report();
        report.oversold = 3;
        let text = render(&report);
        assert_eq!(cells(&text, "oversold"), ["oversold units", "3", "FAIL"]);
        assert!(text.ends_with("FAIL: an invariant is broken"), "{text}");
    }
}
