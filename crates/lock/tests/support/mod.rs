//! Shared helpers for the lock crate's integration tests: where the stack's
//! services are, unique names, and private Redis servers that a test may kill.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::Stdio,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The shared Redis of `scripts/stack`.
pub fn redis_url() -> String {
    std::env::var("TURNSTILE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The three Redlock masters of `scripts/stack`.
pub fn redlock_urls() -> Vec<String> {
    std::env::var("TURNSTILE_REDLOCK_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Deletes `resource`'s lease key on each Redis in `urls` behind its
/// holder's back, as a failover or an operator would (the contract's vanish).
pub async fn delete_lease_keys(urls: &[String], resource: &str) {
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("valid redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis reachable");
        let _: i64 = redis::cmd("DEL")
            .arg(format!("turnstile:{{{resource}}}:lock"))
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

/// A name no other test run uses, for resources and key prefixes.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("test:{name}:{nanos:x}:{:x}", rand::random::<u32>())
}

/// A redis-server owned by one test, on its own port, without persistence,
/// so the test can kill and restart it without disturbing others.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("turnstile-redis-{port}-{:x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self { port, dir, child: None };
        server.restart().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and returns once it logs that it accepts
    /// connections: an event, not a guess at how long start-up takes.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("redis on port {} is already running", self.port);
        }
        let mut child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server must be installed: run scripts/stack up")?;
        let stdout = child.stdout.take().context("redis-server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if line.contains("Ready to accept connections") {
                // Keep draining so the server never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                return Ok(());
            }
        }
        bail!("redis-server on port {} exited before it was ready", self.port)
    }

    /// SIGKILL: the server loses everything it held in memory.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A TCP forwarder on loopback that a test can cut, as a network partition
/// would: [`cut`](Self::cut) drops every forwarded connection and refuses new
/// ones until [`heal`](Self::heal).
pub struct Partition {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Partition {
    pub async fn to(target: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, watch) = tokio::sync::watch::channel(false);
        let target = target.to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: refused while cut
                }
                let (target, mut cut) = (target.clone(), watch.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            cut,
            _accept: accept,
        })
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self._accept.abort();
    }
}
