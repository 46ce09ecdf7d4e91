//! The load generator's fixed connection pool against a real HTTP server:
//! it never opens more connections than it was given, and replaces one the
//! server closed.

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::ConnectInfo, extract::State, http::header, response::IntoResponse, routing::post};
use hyper::{StatusCode, header::HeaderName};
use turnstile_loadtest::connections::Connections;

type Peers = Arc<Mutex<HashSet<SocketAddr>>>;

/// A server that records every client connection it answers, and closes
/// each after one answer if `close` is set.
async fn server(close: bool) -> (String, Peers) {
    let peers = Peers::default();
    let answer = move |State(peers): State<Peers>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: String| async move {
        peers.lock().unwrap().insert(peer);
        let connection = if close { "close" } else { "keep-alive" };
        (StatusCode::ACCEPTED, [(header::CONNECTION, connection)], body).into_response()
    };
    let app = Router::new()
        .route("/echo", post(answer))
        .with_state(Arc::clone(&peers));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    (api, peers)
}

#[tokio::test]
async fn many_concurrent_requests_share_the_connections_opened_up_front() {
    let (api, peers) = server(false).await;
    let connections = Connections::open(&api, NonZeroUsize::new(4).unwrap(), None)
        .await
        .unwrap();
    let key = HeaderName::from_static("idempotency-key");
    let requests = (0..200).map(|i| {
        let (connections, key) = (Arc::clone(&connections), key.clone());
        tokio::spawn(async move {
            let body = format!("{{\"n\":{i}}}").into_bytes();
            let answer = connections
                .post_json("/echo", &[(&key, i.to_string().try_into().unwrap())], body.clone())
                .await
                .unwrap();
            assert_eq!(answer.status, StatusCode::ACCEPTED);
            assert_eq!(answer.body, body);
        })
    });
    for request in futures::future::join_all(requests).await {
        request.unwrap();
    }
    assert_eq!(
        peers.lock().unwrap().len(),
        4,
        "every request went over one of the 4 connections"
    );
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    let (api, peers) = server(true).await;
    let connections = Connections::open(&api, NonZeroUsize::MIN, None).await.unwrap();
    for i in 0..5 {
        let answer = connections.post_json("/echo", &[], vec![b'0' + i]).await.unwrap();
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        assert_eq!(&answer.body[..], &[b'0' + i]);
    }
    assert_eq!(peers.lock().unwrap().len(), 5, "each answer closed its connection");
}

#[tokio::test]
async fn an_api_that_is_no_http_url_or_https_without_a_ca_is_refused() {
    for api in ["https://127.0.0.1:1", "127.0.0.1:8080", "http://"] {
        assert!(
            Connections::open(api, NonZeroUsize::MIN, None).await.is_err(),
            "{api} was accepted"
        );
    }
}
