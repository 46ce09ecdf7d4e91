//! `loadtest lock-bench`: acquire + tiny critical section + release, as fast
//! as N clients can, on K keys, for a fixed time.
//!
//! Mutual exclusion is checked while it runs: each key has an occupancy
//! counter that a holder bumps on entry and drops on exit, and a plain
//! counter updated with a separate load and store. Any overlap shows up as a
//! `violation`; a fencing token not above the key's previous one shows up as
//! a `token_regression`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use turnstile_lock::{
    LockClient,
    backend::{
        postgres::PostgresLockBackend,
        redis::RedisLockBackend,
        redis_cluster::RedisClusterLockBackend,
        redlock::{RedlockBackend, RedlockConfig},
        zookeeper::{ZooKeeperConfig, ZooKeeperLockBackend},
    },
};

use crate::{latency::Latencies, progress::Progress};

/// Which lock implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchBackend {
    /// turnstile-lock on one Redis.
    Redis,
    /// turnstile-lock on a Redis Cluster, each key on the master owning its slot.
    RedisCluster,
    /// turnstile-lock's Redlock over the Redlock masters.
    Redlock,
    /// turnstile-lock's ephemeral sequential znodes in ZooKeeper.
    Zookeeper,
    /// turnstile-lock's lease table in PostgreSQL.
    Postgres,
    /// The `rslock` crate on one Redis, for comparison.
    Rslock,
    /// The `rslock` crate over the Redlock masters, for comparison.
    RslockRedlock,
}

impl BenchBackend {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::RedisCluster => "redis-cluster",
            Self::Redlock => "redlock",
            Self::Zookeeper => "zookeeper",
            Self::Postgres => "postgres",
            Self::Rslock => "rslock",
            Self::RslockRedlock => "rslock-redlock",
        }
    }
}

/// Arguments of `loadtest lock-bench`.
#[derive(Debug, Clone, Args)]
pub struct LockBenchArgs {
    /// The lock implementation.
    #[arg(long, value_enum)]
    pub backend: BenchBackend,
    /// Concurrent clients (tasks), each looping acquire/release.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Distinct keys the clients pick from at random (1 = one hot key).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Lease ttl in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub ttl_ms: u64,
    /// Backend instances (connections, pools, sessions) the clients share,
    /// round-robin.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    #[command(flatten)]
    pub stores: Stores,
    /// Print one JSON object on the last line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where each lock store listens (the native stack's ports by default).
#[derive(Debug, Clone, Args)]
pub struct Stores {
    /// The single Redis.
    #[arg(long, env = "TURNSTILE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Seed nodes of the Redis Cluster, comma-separated.
    #[arg(
        long,
        env = "TURNSTILE_REDIS_CLUSTER_URLS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003"
    )]
    pub redis_cluster_urls: Vec<String>,
    /// The Redlock masters, comma-separated.
    #[arg(
        long,
        env = "TURNSTILE_REDLOCK_URLS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393"
    )]
    pub redlock_urls: Vec<String>,
    /// The ZooKeeper ensemble, `host:port[,host:port...]`.
    #[arg(long, env = "TURNSTILE_ZOOKEEPER_URL", default_value = "127.0.0.1:2181")]
    pub zookeeper_url: String,
    /// PostgreSQL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/turnstile"
    )]
    pub database_url: String,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LockBenchReport {
    pub backend: BenchBackend,
    pub clients: usize,
    pub keys: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub violations: u64,
    pub token_regressions: u64,
    pub errors: u64,
}

/// Per-key guard state, shared by all clients.
#[derive(Debug, Default)]
struct KeyState {
    occupancy: AtomicU32,
    counter: AtomicU64,
    last_token: AtomicU64,
}

#[derive(Debug, Default)]
struct Totals {
    violations: AtomicU64,
    token_regressions: AtomicU64,
    errors: AtomicU64,
}

/// One lock implementation under test.
#[derive(Clone)]
enum Locker {
    Turnstile(LockClient),
    Rslock(rslock::LockManager),
}

impl Locker {
    /// Acquires `key`, runs `section` with the fencing token (if the
    /// implementation has one), releases. Returns whether the cycle completed.
    async fn cycle(
        &self,
        key: &str,
        ttl: Duration,
        deadline: Instant,
        section: impl FnOnce(Option<u64>),
    ) -> Result<bool> {
        match self {
            Self::Turnstile(locks) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                match locks.acquire(key, ttl, wait).await {
                    Ok(lease) => {
                        section(Some(lease.token().get()));
                        lease.release().await?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == turnstile_lock::LockErrorKind::Contended => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Self::Rslock(manager) => loop {
                match manager.lock(key, ttl).await {
                    Ok(lock) => {
                        section(None);
                        manager.unlock(&lock).await;
                        return Ok(true);
                    }
                    Err(_) if Instant::now() < deadline => continue,
                    Err(e) => bail!("rslock: {e:?}"),
                }
            },
        }
    }
}

async fn lockers(args: &LockBenchArgs) -> Result<Vec<Locker>> {
    let stores = &args.stores;
    let mut lockers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        lockers.push(match args.backend {
            BenchBackend::Redis => Locker::Turnstile(LockClient::new(Arc::new(
                RedisLockBackend::connect(&stores.redis_url)
                    .await
                    .context("connecting to redis")?,
            ))),
            BenchBackend::RedisCluster => Locker::Turnstile(LockClient::new(Arc::new(
                RedisClusterLockBackend::connect(&stores.redis_cluster_urls)
                    .await
                    .context("connecting to the redis cluster")?,
            ))),
            BenchBackend::Redlock => Locker::Turnstile(LockClient::new(Arc::new(RedlockBackend::new(
                &stores.redlock_urls,
                RedlockConfig::default(),
            )?))),
            BenchBackend::Zookeeper => Locker::Turnstile(LockClient::new(Arc::new(
                ZooKeeperLockBackend::connect(&stores.zookeeper_url, ZooKeeperConfig::default())
                    .await
                    .context("connecting to zookeeper")?,
            ))),
            BenchBackend::Postgres => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(u32::try_from(args.clients.clamp(1, 64)).unwrap_or(64))
                    .connect(&stores.database_url)
                    .await
                    .context("connecting to postgres")?;
                let backend = PostgresLockBackend::new(pool);
                backend.install().await?;
                Locker::Turnstile(LockClient::new(Arc::new(backend)))
            }
            BenchBackend::Rslock => Locker::Rslock(rslock::LockManager::new(vec![stores.redis_url.clone()])),
            BenchBackend::RslockRedlock => Locker::Rslock(rslock::LockManager::new(stores.redlock_urls.clone())),
        });
    }
    Ok(lockers)
}

/// Runs the benchmark and reports what it measured.
pub async fn run(args: &LockBenchArgs) -> Result<LockBenchReport> {
    if args.clients == 0 || args.keys == 0 || args.duration == 0 {
        bail!("--clients, --keys and --duration must be greater than zero");
    }
    let lockers = lockers(args).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let keys: Arc<Vec<String>> = Arc::new((0..args.keys).map(|i| format!("bench:{run_id}:{i}")).collect());
    let state: Arc<Vec<KeyState>> = Arc::new((0..args.keys).map(|_| KeyState::default()).collect());
    let totals = Arc::new(Totals::default());
    let ttl = Duration::from_millis(args.ttl_ms);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let progress = Progress::new(args.json).timed(
        Duration::from_secs(args.duration),
        format!(
            "{} lock cycles, {} clients on {} keys",
            args.backend.name(),
            args.clients,
            args.keys
        ),
    );

    let mut tasks = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let locker = lockers[client % lockers.len()].clone();
        let (keys, state, totals) = (Arc::clone(&keys), Arc::clone(&state), Arc::clone(&totals));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let k = rand::random_range(0..keys.len());
                let key_state = &state[k];
                let op_started = Instant::now();
                let section = |token: Option<u64>| {
                    if key_state.occupancy.fetch_add(1, Ordering::SeqCst) != 0 {
                        totals.violations.fetch_add(1, Ordering::Relaxed);
                    }
                    // A deliberately non-atomic increment: lost updates would
                    // reveal a second holder even if occupancy missed it.
                    let seen = key_state.counter.load(Ordering::SeqCst);
                    key_state.counter.store(seen + 1, Ordering::SeqCst);
                    if let Some(token) = token
                        && key_state.last_token.fetch_max(token, Ordering::SeqCst) >= token
                    {
                        totals.token_regressions.fetch_add(1, Ordering::Relaxed);
                    }
                    key_state.occupancy.fetch_sub(1, Ordering::SeqCst);
                };
                match locker.cycle(&keys[k], ttl, deadline, section).await {
                    Ok(true) => {
                        latencies.record(op_started.elapsed());
                        ops += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = format!("{e:#}"), "lock cycle failed");
                    }
                }
            }
            (latencies, ops)
        }));
    }
    let mut latencies = Latencies::new();
    let mut ops = 0;
    for task in tasks {
        let (l, n) = task.await?;
        latencies.merge(&l);
        ops += n;
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let counted: u64 = state.iter().map(|s| s.counter.load(Ordering::SeqCst)).sum();
    let lost_updates = ops.abs_diff(counted);
    Ok(LockBenchReport {
        backend: args.backend,
        clients: args.clients,
        keys: args.keys,
        connections: lockers.len(),
        duration_s: elapsed,
        ops,
        ops_per_sec: ops as f64 / elapsed,
        p50_us: latencies.quantile_us(0.50),
        p99_us: latencies.quantile_us(0.99),
        p999_us: latencies.quantile_us(0.999),
        max_us: latencies.max_us(),
        violations: totals.violations.load(Ordering::SeqCst) + lost_updates,
        token_regressions: totals.token_regressions.load(Ordering::SeqCst),
        errors: totals.errors.load(Ordering::SeqCst),
    })
}

impl LockBenchReport {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        format!(
            "backend      clients keys   ops       ops/s     p50_us  p99_us  p999_us violations token_regr errors\n\
             {:<12} {:<7} {:<6} {:<9} {:<9.0} {:<7} {:<7} {:<7} {:<10} {:<10} {}",
            self.backend.name(),
            self.clients,
            self.keys,
            self.ops,
            self.ops_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.violations,
            self.token_regressions,
            self.errors
        )
    }
}
