//! One trace follows a claim: the HTTP request, the Kafka message (W3C
//! `traceparent` in its headers), and the worker's processing with its lock,
//! Postgres transaction, cache update and decision events. Spans go to an
//! in-memory exporter; the services are the real ones on the real stack.
//! (Its own test binary: it installs the process-wide subscriber.)

#![allow(clippy::unwrap_used)]

mod support;

use opentelemetry::{
    Value,
    trace::{SpanKind, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider, SpanData},
};
use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use support::{Namespace, TestWorker, api_settings, unique, worker_settings};
use tracing_subscriber::{EnvFilter, prelude::*};

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn has(span: &SpanData, key: &str, value: &str) -> bool {
    attribute(span, key).is_some_and(|v| v.as_str() == value)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_claim_from_http_through_kafka_into_the_worker() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let ns = Namespace::new("trace");
    let api = support::start_api(api_settings(&ns)).await.unwrap();
    let worker = TestWorker::start(worker_settings(&ns)).await.unwrap();
    let code = unique("TRACE");
    api.create_coupon(&code, 10, Some(1)).await.unwrap();
    let response = api
        .claim(&unique("trace"), json!({"coupon": code, "user_id": "u1"}), Some(10))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let correlation_id = response
        .headers()
        .get("x-correlation-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let view: Json = response.json().await.unwrap();
    assert_eq!(view["status"], "granted");
    worker.stop().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let server = spans
        .iter()
        .find(|s| s.name == "POST /v1/claims")
        .expect("a server span for the claim request");
    let trace_id = server.span_context.trace_id();
    assert_eq!(
        correlation_id,
        trace_id.to_string(),
        "the correlation id is the trace id"
    );
    let in_trace: Vec<&SpanData> = spans.iter().filter(|s| s.span_context.trace_id() == trace_id).collect();
    let named = |prefix: &str, suffix: &str| {
        *in_trace
            .iter()
            .find(|s| s.name.starts_with(prefix) && s.name.ends_with(suffix))
            .unwrap_or_else(|| {
                panic!(
                    "no span {prefix}..{suffix} in the trace: {:?}",
                    in_trace.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };

    assert_eq!(server.span_kind, SpanKind::Server);
    assert!(has(server, "http.request.method", "POST"));
    assert!(has(server, "http.route", "/v1/claims"));
    assert!(attribute(server, "http.response.status_code").is_some());

    let send = named("send ", "claims.requested");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert!(has(send, "messaging.system", "kafka"));
    assert!(has(send, "messaging.operation.type", "send"));
    assert_eq!(send.parent_span_id, server.span_context.span_id());

    // Across Kafka: the worker's span is a child of the producer span, which
    // it can only know from the message's traceparent header.
    let process = named("process ", "claims.requested");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert!(has(process, "messaging.system", "kafka"));
    assert!(has(process, "messaging.operation.type", "process"));
    assert_eq!(process.parent_span_id, send.span_context.span_id());

    for (name, system) in [
        ("lock acquire", None),
        ("decide_fenced claims", Some("postgresql")),
        ("cache update", Some("redis")),
    ] {
        let child = named(name, "");
        assert_eq!(
            child.parent_span_id,
            process.span_context.span_id(),
            "{name} under the processing span"
        );
        if let Some(system) = system {
            assert!(has(child, "db.system.name", system), "{name}: db.system.name");
        }
    }
    let decided = named("send ", "claims.decided");
    assert_eq!(decided.parent_span_id, process.span_context.span_id());
}
