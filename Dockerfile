# syntax=docker/dockerfile:1
#
# One image for every Turnstile binary (claim-api, claim-worker, loadtest);
# docker-compose.yml picks one with `command:`. BuildKit is required for the
# cache mounts (default since Docker 23; `DOCKER_BUILDKIT=1` before that).
#
#   docker build -t turnstile .
#   docker run --rm turnstile claim-api

# --- build ----------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka builds its bundled librdkafka with cmake (feature cmake-build).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# .cargo/config.toml sets SQLX_OFFLINE=true and .sqlx/ holds the checked query
# data, so the build needs no database.
COPY . .

# The registry and target/ live in cache mounts, so a rebuild after a source
# change recompiles only the workspace crates. A cache mount is not part of the
# image: the binaries are copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p claim-api -p claim-worker -p turnstile-loadtest \
 && mkdir -p /out \
 && cp target/release/claim-api target/release/claim-worker target/release/loadtest /out/

# --- run ------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl is for the compose healthchecks; the rest are the binaries' shared
# libraries (librdkafka links zlib, and OpenSSL/libcurl when built with them).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libcurl4 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 turnstile \
 && useradd --system --uid 10001 --gid turnstile --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin turnstile

COPY --from=builder /out/ /usr/local/bin/

USER turnstile:turnstile
# claim-api listens on TURNSTILE_HTTP_ADDR, claim-worker serves /metrics and
# /healthz on TURNSTILE_METRICS_ADDR; both default to loopback, so a container
# must set 0.0.0.0 (docker-compose.yml does).
EXPOSE 8080 9101
CMD ["claim-api"]
