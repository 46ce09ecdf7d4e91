//! `loadtest compare --sweep`: the pipeline-against-baseline comparison at
//! several offered rates in turn, to see where each mode stops keeping up.
//!
//! Each point is a whole `compare` ([`crate::sale_compare`]): the pipeline,
//! `--pause`, the baseline, then `--pause` before the next rate. Per point
//! and mode it keeps what decides the question: final answers per second
//! (at the door or by the pipeline; for the baseline, its decisions),
//! accept and decide p99, the share of requests answered 429, and how much
//! of the machine the load generator itself took while it sent.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    credentials::{Credentials, with_credentials},
    flash_sale::FlashSaleReport,
    sale_compare::{self, CompareArgs, CompareReport},
    sweep_chart::{self, Curve},
};

/// Every point of a sweep, in the order run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub points: Vec<CompareReport>,
}

/// The sweep table's columns.
pub const COLUMNS: [&str; 10] = [
    "offered/s",
    "pipeline answered/s",
    "baseline answered/s",
    "pipeline ÷ baseline",
    "pipeline accept p99 ms",
    "pipeline decide p99 ms",
    "pipeline 429 share",
    "baseline decide p99 ms",
    "baseline 429 share",
    "generator CPU share (pipeline / baseline)",
];

fn percent(share: f64) -> String {
    format!("{:.1}%", 100.0 * share)
}

impl SweepReport {
    /// Whether every invariant held in every run.
    pub fn invariants_hold(&self) -> bool {
        self.points.iter().all(CompareReport::invariants_hold)
    }

    /// Every run, point by point, pipeline first.
    pub fn runs(&self) -> Vec<FlashSaleReport> {
        self.points.iter().flat_map(CompareReport::runs).collect()
    }

    /// One row of [`COLUMNS`] per point.
    pub fn rows(&self) -> Vec<[String; COLUMNS.len()]> {
        self.points
            .iter()
            .map(|point| {
                let (p, b) = (&point.pipeline, &point.sql_for_update);
                let (pa, ba) = (p.answered_or_decided_per_sec(), b.answered_or_decided_per_sec());
                let ratio = if ba > 0.0 {
                    format!("{:.2}", pa / ba)
                } else {
                    "–".to_owned()
                };
                [
                    format!("{}", p.rate),
                    format!("{pa:.0}"),
                    format!("{ba:.0}"),
                    ratio,
                    format!("{:.1}", p.accept_p99_ms),
                    format!("{:.1}", p.decide_from_send_p99_ms),
                    percent(p.throttled_share()),
                    format!("{:.1}", b.decide_from_send_p99_ms),
                    percent(b.throttled_share()),
                    format!(
                        "{} / {}",
                        percent(p.generator_cpu_share),
                        percent(b.generator_cpu_share)
                    ),
                ]
            })
            .collect()
    }

    /// A Markdown table, one row per offered rate.
    pub fn table(&self) -> String {
        let mut out = format!("| {} |\n|", COLUMNS.join(" | "));
        out.push_str(&"---:|".repeat(COLUMNS.len()));
        out.push('\n');
        for row in self.rows() {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }

    /// Final answers per second against offered, one curve per mode.
    pub fn curves(&self) -> [Curve; 2] {
        let points = |run: fn(&CompareReport) -> &FlashSaleReport| {
            self.points
                .iter()
                .map(|point| (run(point).rate, run(point).answered_or_decided_per_sec()))
                .collect()
        };
        [
            Curve {
                name: "pipeline".to_owned(),
                color: (0x1f, 0x77, 0xb4),
                points: points(|p| &p.pipeline),
            },
            Curve {
                name: "sql-for-update".to_owned(),
                color: (0xd6, 0x27, 0x28),
                points: points(|p| &p.sql_for_update),
            },
        ]
    }

    /// [`Self::curves`] drawn as an SVG document.
    pub fn chart_svg(&self) -> Result<String> {
        sweep_chart::decided_against_offered(&self.curves())
    }
}

/// Runs `compare` at each of `--sweep`'s rates (`--rate` is ignored).
pub async fn run(args: &CompareArgs) -> Result<SweepReport> {
    if args.sweep.is_empty() {
        bail!("--sweep needs at least one rate");
    }
    if let Some(bad) = args.sweep.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        bail!("--sweep: {bad} is not a rate (claims per second, greater than zero)");
    }
    // One pair of keys for every point, rather than one per point.
    // One pair of keys for every point, rather than one per point.
    let points = with_credentials(&args.sale.keys, &args.sale.database_url, async |credentials| {
        run_points(args, credentials).await
    })
    .await?;
    Ok(SweepReport { points })
}

async fn run_points(args: &CompareArgs, credentials: &Credentials) -> Result<Vec<CompareReport>> {
    let mut points = Vec::with_capacity(args.sweep.len());
    for (n, &rate) in args.sweep.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(args.pause)).await;
        }
        if !args.quiet {
            eprintln!("sweep: {rate} claims/s ({} of {})", n + 1, args.sweep.len());
        }
        let mut point = args.clone();
        point.sweep.clear();
        point.sale.rate = rate;
        point.sale.keys = credentials.as_args();
        let report = sale_compare::run(&point)
            .await
            .with_context(|| format!("the sweep's point at {rate} claims/s"))?;
        points.push(report);
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash_sale::Mode;

    fn run(mode: Mode, rate: f64, decided: f64, throttled: u64) -> FlashSaleReport {
        FlashSaleReport {
            mode,
            rate,
            offered: 1_000,
            requests_sent: 1_000,
            throttled_429: throttled,
            claims_per_sec: decided,
            accept_p99_ms: 12.0,
            decide_from_send_p99_ms: 80.0,
            generator_cpu_share: 0.25,
            ..FlashSaleReport::default()
        }
    }

    fn sweep() -> SweepReport {
        SweepReport {
            points: vec![
                CompareReport {
                    pipeline: run(Mode::Pipeline, 2_000.0, 1_990.0, 0),
                    sql_for_update: run(Mode::SqlForUpdate, 2_000.0, 995.0, 100),
                },
                CompareReport {
                    pipeline: run(Mode::Pipeline, 5_000.0, 4_800.0, 50),
                    sql_for_update: run(Mode::SqlForUpdate, 5_000.0, 0.0, 900),
                },
            ],
        }
    }

    #[test]
    fn one_row_per_rate_with_ratio_and_shares() {
        let rows = sweep().rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], "2000");
        assert_eq!(rows[0][3], "2.00");
        assert_eq!(rows[0][8], "10.0%");
        assert_eq!(rows[1][3], "–", "nothing decided by the baseline: no ratio");
        assert_eq!(rows[1][6], "5.0%");
        assert_eq!(rows[1][9], "25.0% / 25.0%");
        let table = sweep().table();
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.starts_with("| offered/s | pipeline answered/s |"), "{table}");
    }

    #[test]
    fn curves_and_chart_follow_the_points() {
        let sweep = sweep();
        let [pipeline, baseline] = sweep.curves();
        assert_eq!(pipeline.points, [(2_000.0, 1_990.0), (5_000.0, 4_800.0)]);
        assert_eq!(baseline.points, [(2_000.0, 995.0), (5_000.0, 0.0)]);
        let svg = sweep.chart_svg().unwrap();
        assert!(
            svg.contains("pipeline\n</text>") && svg.contains("sql-for-update\n</text>"),
            "{svg}"
        );
    }

    #[test]
    fn the_json_line_reads_back() {
        let line = serde_json::to_string(&sweep()).unwrap();
        let back: SweepReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back.points.len(), 2);
        assert!(
            serde_json::from_str::<CompareReport>(&line).is_err(),
            "not mistaken for a compare"
        );
    }
}
