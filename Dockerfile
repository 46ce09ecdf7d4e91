# One image for every Turnstile binary (claim-api, claim-worker, loadtest);
# docker-compose.yml picks one with `command:`. No BuildKit feature is used,
# so any builder builds it.
#
#   docker build -t turnstile .
#   docker run --rm turnstile claim-api
#
# What runs in the image: claim-api, claim-worker, and the loadtest
# subcommands that only need the services over the network (flash-sale,
# report, seed, lock-bench and lock-compare against the compose stores).
# What runs only natively (scripts/stack): `loadtest compare`, which starts
# the sql-baseline binary this image does not build, and `loadtest chaos`,
# which starts private Postgres and Redis servers (initdb, redis-server).

# --- tools ----------------------------------------------------------------------
FROM rust:1-bookworm AS chef

# cargo-chef splits the build in two: the dependencies, built from a recipe
# that changes only with the manifests and Cargo.lock, and the workspace.
RUN cargo install cargo-chef --locked --version 0.1.78

# The build's native parts: rdkafka builds librdkafka with cmake (feature
# cmake-build; g++ for its C++ parts) and OpenSSL from source (feature
# ssl-vendored: perl and make), and libz-sys links the system zlib, found
# with pkg-config. librdkafka is built without libcurl (rdkafka's `curl`
# feature is off), and no crate compiles protobuf at build time.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake g++ make perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# --- the recipe: the workspace's manifests and lock file, without sources -------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- build ----------------------------------------------------------------------
FROM chef AS builder

# The dependencies, in a layer of their own: rebuilt only when the recipe
# changes, so a source change recompiles just the workspace crates.
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
      -p claim-api -p claim-worker -p turnstile-loadtest

# .cargo/config.toml sets SQLX_OFFLINE=true and .sqlx/ holds the checked query
# data, so the build needs no database.
COPY . .
RUN cargo build --release --locked -p claim-api -p claim-worker -p turnstile-loadtest

# --- run ------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl is for the compose healthchecks; ca-certificates for TLS to Kafka or
# an OTLP collector. The binaries link only the C runtime and zlib (ldd:
# libz, libgcc_s, libm, libc), which the base image has: OpenSSL is built in
# statically, libcurl not at all.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 turnstile \
 && useradd --system --uid 10001 --gid turnstile --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin turnstile \
 && mkdir /reports \
 && chown turnstile:turnstile /reports

COPY --from=builder /app/target/release/claim-api /app/target/release/claim-worker \
     /app/target/release/loadtest /usr/local/bin/

USER turnstile:turnstile
# A directory the service user can write: `loadtest ... --report sale.html`
# writes here, and docker-compose.yml mounts loadtest/reports/ on it.
WORKDIR /reports
# claim-api listens on TURNSTILE_HTTP_ADDR, claim-worker serves /metrics and
# /healthz on TURNSTILE_METRICS_ADDR; both default to loopback, so a container
# must set 0.0.0.0 (docker-compose.yml does).
EXPOSE 8080 9101
CMD ["claim-api"]
