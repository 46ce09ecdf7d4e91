//! The sale's command-line arguments: `flash-sale`'s own, and the sale
//! itself, shared with `compare` and chaos.

use std::{num::NonZeroUsize, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use turnstile_client::ThrottleSettings;

use crate::credentials::KeyArgs;

/// How the claims are processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// claim-api → Kafka → claim-worker (lock + fence) → Postgres.
    #[default]
    Pipeline,
    /// sql-baseline: `SELECT ... FOR UPDATE` and the decision inside the request.
    SqlForUpdate,
}

impl Mode {
    /// The name used on the command line, in reports and element ids.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pipeline => "pipeline",
            Self::SqlForUpdate => "sql-for-update",
        }
    }
}

/// The sale itself: shared by `flash-sale` and `compare`.
#[derive(Debug, Clone, Args)]
pub struct SaleParams {
    /// Postgres, for the audit.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/turnstile"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Coupons on sale (claims are spread over them at random).
    #[arg(long, default_value_t = 1)]
    pub coupons: usize,
    /// Units per coupon.
    #[arg(long, default_value_t = 1000)]
    pub stock: i64,
    /// Distinct users; a user may come back, and the limit of one per user holds.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Every arrival is a user of its own (`--users` is ignored): with
    /// `--stock` at least the arrivals, every claim is a grant, the deep-stock
    /// sale that measures the pipeline's own pace.
    #[arg(long)]
    pub each_user_once: bool,
    /// Offered load, claims per second (`compare --sweep` ignores it).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// How long the load is offered, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Requests in flight at most, counting those waiting for a connection
    /// (beyond that the client counts them as dropped).
    #[arg(long, default_value_t = 2048)]
    pub max_in_flight: usize,
    /// Keep-alive connections to the API, opened before the clock starts; a
    /// request waits for a free one, and the wait counts in its latency.
    /// The default is twice what claim-api admits at once.
    #[arg(long, default_value = "512")]
    pub connections: NonZeroUsize,
    /// How long to wait for every accepted claim to be decided, in seconds.
    #[arg(long, default_value_t = 120)]
    pub decide_timeout: u64,
    /// Names the run's coupons (`FLASH-<run id>-<n>`) and idempotency keys
    /// (default: eight random hex digits).
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,
    /// Shoppers come back: an arrival answered 429 or 503 waits the
    /// `Retry-After` seconds (1 when absent, at most 10) times a random
    /// factor in [0.5, 1.5), then sends the same request under the same
    /// idempotency key again (with the refusal's `Turnstile-Ticket`), until
    /// it is accepted or `--duration` is over: `turnstile-client`'s retries.
    #[arg(long)]
    pub retry: bool,
    #[command(flatten)]
    pub throttle: ThrottleArgs,
}

/// `turnstile-client`'s adaptive throttling, for a sale's arrivals.
#[derive(Debug, Clone, Args)]
pub struct ThrottleArgs {
    /// The client throttles itself (Google SRE's adaptive throttling): over
    /// a sliding window it drops each request with probability
    /// max(0, (requests - K * accepts) / (requests + 1)), where every answer
    /// but a 429 or 503 is an accept. Dropped requests are never sent and
    /// are counted in `throttled_locally`.
    #[arg(long)]
    pub throttle: bool,
    /// K of `--throttle`: the client sends about K times what the API accepts.
    #[arg(long, default_value_t = ThrottleSettings::DEFAULT_K, value_name = "K", requires = "throttle")]
    pub throttle_k: f64,
    /// The window of `--throttle`, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS", requires = "throttle")]
    pub throttle_window: u64,
}

impl Default for ThrottleArgs {
    fn default() -> Self {
        Self {
            throttle: false,
            throttle_k: ThrottleSettings::DEFAULT_K,
            throttle_window: 120,
        }
    }
}

impl ThrottleArgs {
    /// The throttle's settings, when it is on.
    pub fn settings(&self) -> Result<Option<ThrottleSettings>> {
        if !self.throttle {
            return Ok(None);
        }
        ThrottleSettings::try_new(Duration::from_secs(self.throttle_window), self.throttle_k)
            .map(Some)
            .context("--throttle-k must be at least 1 and --throttle-window from 1 s to a day")
    }
}

fn parse_run_id(raw: &str) -> Result<String, String> {
    if (1..=16).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(raw.to_owned())
    } else {
        Err("1 to 16 ASCII letters and digits".to_owned())
    }
}

/// Arguments of `loadtest flash-sale`.
#[derive(Debug, Clone, Args)]
pub struct FlashSaleArgs {
    /// The claim API (claim-api, or sql-baseline with `--mode sql-for-update`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,

    /// The CA (a PEM file) that signed an https:// --api's certificate.
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
    /// How the service at `--api` processes claims.
    #[arg(long, value_enum, default_value_t = Mode::Pipeline)]
    pub mode: Mode,
    #[command(flatten)]
    pub sale: SaleParams,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report (charts as inline SVG).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_match_the_command_line() {
        for mode in [Mode::Pipeline, Mode::SqlForUpdate] {
            assert_eq!(Mode::from_str(mode.as_str(), false).ok(), Some(mode));
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
        }
    }
}
