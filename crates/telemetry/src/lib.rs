//! One initialisation for the logs, traces and metrics of every Turnstile
//! service.
//!
//! - **Logs** are readable text on a terminal and JSON lines otherwise (one
//!   object per line, for the machines that collect them);
//!   `TURNSTILE_LOG_FORMAT` (`text` or `json`, see [`LogSettings`]) chooses
//!   either way, and `RUST_LOG` filters them.
//! - **Traces** go out over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set (the standard variable; `OTEL_SERVICE_NAME` names the service), in
//!   batches from a background thread, so the hot path never waits on the
//!   collector. Unset, no exporter exists and spans cost only `tracing`'s
//!   own bookkeeping. The W3C trace-context propagator is always installed,
//!   so an incoming `traceparent` is honoured and passed on either way.
//! - **Metrics** live in one [`prometheus::Registry`] per process, rendered
//!   by [`render_metrics`] for the `/metrics` endpoint.

mod memory;

pub use memory::disable_transparent_huge_pages;

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use prometheus::{Encoder, Gauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The standard variable that turns trace export on.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable naming the service in traces.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Text when the logs go to a terminal, where a person reads them; JSON
    /// otherwise (a pipe, a file, a container's log driver), where a
    /// program does.
    pub fn detect() -> Self {
        if std::io::stdout().is_terminal() {
            Self::Text
        } else {
            Self::Json
        }
    }
}

/// The log settings every service takes: flatten them into its command
/// line (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogSettings {
    /// How log lines are written: text for people or one JSON object per
    /// line for log collectors [default: text on a terminal, json otherwise]
    #[arg(long, env = "TURNSTILE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl LogSettings {
    /// The format chosen, or the one [`LogFormat::detect`] picks.
    pub fn format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(LogFormat::detect)
    }
}

/// What a service's `--help` adds after its settings: the standard
/// variables it reads besides them.
pub const ENVIRONMENT_HELP: &str = "\
Also read from the environment:
  RUST_LOG                     log filter [default: info]
  OTEL_EXPORTER_OTLP_ENDPOINT  export traces over OTLP/gRPC [default: unset, nothing exported]
  OTEL_SERVICE_NAME            the service's name in traces [default: the binary's name]";

/// Keeps the trace exporter alive; dropping it flushes the spans still
/// buffered (hold it in `main` until the service has stopped).
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    traces: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting_traces(&self) -> bool {
        self.traces.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at exit failed");
        }
    }
}

/// Installs the global log subscriber, the W3C trace-context propagator and,
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OTLP trace exporter. Call
/// once, first thing in `main` (inside the Tokio runtime).
pub fn init(service: &'static str, format: LogFormat) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (traces, export_error) = match std::env::var(OTEL_EXPORTER_OTLP_ENDPOINT) {
        Ok(endpoint) if !endpoint.trim().is_empty() => match trace_provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    let otel = traces
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        // Colours only on a terminal: text asked for into a file stays plain.
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    };
    if result.is_ok() {
        tracing::info!(service, traces = traces.is_some(), "telemetry initialised");
    }
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP trace export could not start; continuing without traces");
    }
    TelemetryGuard { traces }
}

fn trace_provider(service: &'static str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // Endpoint, timeout and headers come from the standard OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    // OTEL_SERVICE_NAME, when set, wins (the builder reads it).
    if std::env::var(OTEL_SERVICE_NAME).map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Logs only, for binaries that do not hold a [`TelemetryGuard`] yet: like
/// [`init`], but spans still buffered at exit are not flushed.
pub fn init_logs(service: &'static str, format: LogFormat) {
    std::mem::forget(init(service, format));
}

/// The id that ties a request's log lines together across services: the
/// trace id of `span` when it is being traced, otherwise a fresh random id
/// in the same format (32 lowercase hex digits).
pub fn correlation_id(span: &tracing::Span) -> String {
    let context = span.context();
    let trace = context.span().span_context().trace_id();
    if trace != opentelemetry::trace::TraceId::INVALID {
        trace.to_string()
    } else {
        format!("{:032x}", rand::random::<u128>())
    }
}

/// The Prometheus text exposition of `registry`.
pub fn render_metrics(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// Registers `process_start_time_seconds`, the standard gauge of when this
/// process started (seconds since the Unix epoch). It changes only when the
/// process is replaced, so `changes()` over it counts restarts, whichever
/// supervisor (a script, compose, an orchestrator) did them. The time is
/// taken once per process, at the first registration, which services make
/// while they start; every registry of the process reports the same value.
pub fn register_process_start_time(registry: &Registry) -> Result<(), prometheus::Error> {
    static STARTED: OnceLock<f64> = OnceLock::new();
    let started = *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64())
    });
    let gauge = Gauge::new(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
    )?;
    gauge.set(started);
    registry.register(Box::new(gauge))
}

/// `turnstile_db_pool_connections{pool, state}`: connections of each
/// database pool, `in_use` and `idle`, set when `/metrics` is scraped. A pool
/// whose `in_use` sits at its maximum is the bottleneck.
#[derive(Debug, Clone)]
pub struct PoolGauges(IntGaugeVec);

impl PoolGauges {
    /// Creates the family and registers it.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauges = IntGaugeVec::new(
            Opts::new(
                "turnstile_db_pool_connections",
                "Database pool connections by pool and state (in_use, idle).",
            ),
            &["pool", "state"],
        )?;
        registry.register(Box::new(gauges.clone()))?;
        Ok(Self(gauges))
    }

    /// Records a pool's current `size` (open connections) and `idle` count.
    pub fn observe(&self, pool: &str, size: u32, idle: usize) {
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        self.0.with_label_values(&[pool, "idle"]).set(idle);
        self.0
            .with_label_values(&[pool, "in_use"])
            .set(i64::from(size).saturating_sub(idle).max(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_time(registry: &Registry) -> f64 {
        let text = render_metrics(registry);
        let line = text
            .lines()
            .find(|line| line.starts_with("process_start_time_seconds "))
            .expect("the gauge is rendered");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn process_start_time_is_one_value_per_process_and_not_in_the_future() {
        let first = Registry::new();
        let second = Registry::new();
        register_process_start_time(&first).unwrap();
        register_process_start_time(&second).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let started = start_time(&first);
        assert!(started > 0.0 && started <= now, "{started} vs now {now}");
        assert_eq!(started, start_time(&second));
        // A registry holds it once: registering twice is the caller's bug.
        assert!(register_process_start_time(&first).is_err());
    }
}
