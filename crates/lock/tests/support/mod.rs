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

/// The Redis Cluster of `scripts/stack` (any of its nodes is a seed).
pub fn redis_cluster_urls() -> Vec<String> {
    std::env::var("TURNSTILE_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Deletes `resource`'s lease key on the cluster at `seeds`, on whichever
/// master owns it, behind its holder's back.
pub async fn delete_cluster_lease_key(seeds: &[String], resource: &str) {
    let client = redis::cluster::ClusterClient::new(seeds.to_vec()).expect("valid cluster urls");
    let mut conn = client.get_async_connection().await.expect("redis cluster reachable");
    let _: i64 = redis::cmd("DEL")
        .arg(format!("turnstile:{{{resource}}}:lock"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
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

/// A Redis Cluster owned by one test: three masters with a replica each, on
/// free ports, without persistence, so the test can kill a master without
/// disturbing the stack's cluster or other tests. Every node dies with it.
pub struct PrivateCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

/// What `CLUSTER NODES` says about one node.
#[derive(Debug, Clone)]
pub struct NodeRole {
    pub port: u16,
    pub id: String,
    pub master: bool,
    pub failed: bool,
    /// For a replica, the id of its master.
    pub master_id: Option<String>,
}

impl PrivateCluster {
    /// Starts six nodes and joins them with `redis-cli --cluster create`;
    /// returns once every slot is served and every master has a replica.
    pub async fn start(node_timeout: std::time::Duration) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("turnstile-cluster-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self { nodes: Vec::new(), dir };
        // Held together until all are chosen, so no port is handed out twice.
        let listeners = (0..12)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<Result<Vec<u16>>>()?;
        drop(listeners);
        for pair in ports.chunks(2) {
            let (port, bus) = (pair[0], pair[1]);
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir)?;
            let mut child = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", &node_timeout.as_millis().to_string()])
                .args(["--cluster-require-full-coverage", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("redis-server must be installed: run scripts/stack up")?;
            ready(&mut child, port).await?;
            cluster.nodes.push(ClusterNode {
                port,
                child: Some(child),
            });
        }
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .context("redis-cli must be installed: run scripts/stack up")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        cluster.until_healthy(std::time::Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Seed URLs: every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The nodes as a live node sees them.
    pub async fn roles(&self) -> Result<Vec<NodeRole>> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(mut conn) = plain(node.port).await else { continue };
            let Ok(text) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
            else {
                continue;
            };
            return Ok(text
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                    let flags = fields.get(2)?;
                    Some(NodeRole {
                        port,
                        id: (*fields.first()?).to_owned(),
                        master: flags.contains("master"),
                        failed: flags.contains("fail"),
                        master_id: fields.get(3).filter(|m| **m != "-").map(|m| (*m).to_owned()),
                    })
                })
                .collect());
        }
        bail!("no cluster node answers")
    }

    /// The port of the master serving `key`'s slot.
    pub async fn master_of(&self, key: &str) -> Result<u16> {
        let port = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .context("no node runs")?
            .port;
        let mut conn = plain(port).await?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        let slots: Vec<(i64, i64, Vec<redis::Value>)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await?
            .into_iter()
            .map(|range| {
                let redis::Value::Array(fields) = range else {
                    bail!("unexpected CLUSTER SLOTS reply")
                };
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(i) => Ok(*i),
                    other => bail!("unexpected {other:?}"),
                };
                let master = match fields.get(2) {
                    Some(redis::Value::Array(node)) => node.clone(),
                    _ => bail!("unexpected CLUSTER SLOTS reply"),
                };
                Ok((int(&fields[0])?, int(&fields[1])?, master))
            })
            .collect::<Result<_>>()?;
        let (_, _, master) = slots
            .iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .context("slot not served")?;
        match master.get(1) {
            Some(redis::Value::Int(port)) => Ok(u16::try_from(*port)?),
            other => bail!("unexpected master port {other:?}"),
        }
    }

    /// SIGKILL the node on `port`: it loses everything it held.
    pub async fn kill(&mut self, port: u16) -> Result<()> {
        let node = self.nodes.iter_mut().find(|n| n.port == port).context("no such node")?;
        if let Some(mut child) = node.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Waits until every live node answers, every slot is served by a live
    /// master, and no live node is flagged as failing. There is no event for
    /// a cluster agreeing, so this asks every 50 ms until `within`.
    pub async fn until_healthy(&self, within: std::time::Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.healthy().await.unwrap_or(false) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("cluster not healthy within {within:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&self) -> Result<bool> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        for port in &live {
            let mut conn = plain(*port).await?;
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return Ok(false);
            }
        }
        let roles = self.roles().await?;
        for role in roles.iter().filter(|r| !r.master && live.contains(&r.port)) {
            let mut conn = plain(role.port).await?;
            let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await?;
            if !info.contains("master_link_status:up") {
                return Ok(false);
            }
        }
        let live_masters = roles.iter().filter(|r| r.master && live.contains(&r.port) && !r.failed);
        Ok(live_masters.count() == 3)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain (non-cluster) connection to one node.
pub async fn plain(port: u16) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Returns once `child` logs that it accepts connections, and keeps draining
/// its output so it never blocks on a full pipe.
async fn ready(child: &mut Child, port: u16) -> Result<()> {
    let stdout = child.stdout.take().context("redis-server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if line.contains("Ready to accept connections") {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(());
        }
    }
    bail!("redis-server on port {port} exited before it was ready")
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

/// A certificate authority made for one test, the server certificate it
/// signed for 127.0.0.1, and a client certificate it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestPki {
    pub fn new() -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "turnstile-lock test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let server = server.signed_by(&server_key, &ca)?;
        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "turnstile-lock test client");
        let client = client.signed_by(&client_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// What a client that trusts this CA and shows its certificate uses.
    pub fn client_tls(&self) -> turnstile_lock::backend::tls::RedisTls {
        turnstile_lock::backend::tls::RedisTls::default()
            .with_ca(self.ca_pem.as_bytes())
            .with_client_certificate(self.client_cert_pem.as_bytes(), self.client_key_pem.as_bytes())
    }
}

/// TLS-only redis-servers owned by one test: no plain TCP port at all, so
/// a client that talks to one has spoken TLS. With `ask_clients`, each
/// refuses a client without a certificate its CA signed.
pub struct TlsRedis {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl TlsRedis {
    /// `count` standalone servers.
    pub async fn start(pki: &TestPki, count: usize, ask_clients: bool) -> Result<Self> {
        Self::launch(pki, count, ask_clients, false).await
    }

    /// Three masters joined into a cluster over TLS (the cluster bus too),
    /// every slot served.
    pub async fn cluster(pki: &TestPki) -> Result<Self> {
        let servers = Self::launch(pki, 3, true, true).await?;
        let output = Command::new("redis-cli")
            .args(servers.cli_tls())
            .arg("--cluster")
            .arg("create")
            .args(servers.ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .context("redis-cli must be installed: run scripts/stack up")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create over tls failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // Every node agrees the cluster serves every slot.
        for port in &servers.ports {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let info = Command::new("redis-cli")
                    .args(servers.cli_tls())
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .await?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("the tls cluster never reached cluster_state:ok");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(servers)
    }

    async fn launch(pki: &TestPki, count: usize, ask_clients: bool, cluster: bool) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("turnstile-tls-redis-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let files = [
            ("ca.pem", &pki.ca_pem),
            ("server.pem", &pki.server_cert_pem),
            ("server.key", &pki.server_key_pem),
            ("client.pem", &pki.client_cert_pem),
            ("client.key", &pki.client_key_pem),
        ];
        for (name, content) in files {
            std::fs::write(dir.join(name), content)?;
        }
        let mut servers = Self {
            ports: Vec::new(),
            dir,
            children: Vec::new(),
        };
        for _ in 0..count {
            let port = free_port()?;
            let node_dir = servers.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir)?;
            let mut command = Command::new("redis-server");
            command
                .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(servers.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(servers.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(servers.dir.join("ca.pem"))
                .args(["--tls-auth-clients", if ask_clients { "yes" } else { "no" }])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir);
            if cluster {
                command.args(["--cluster-enabled", "yes", "--tls-cluster", "yes"]);
            }
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("redis-server must be installed: run scripts/stack up")?;
            ready(&mut child, port).await?;
            servers.ports.push(port);
            servers.children.push(child);
        }
        Ok(servers)
    }

    /// `rediss://` URLs, one per server.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("rediss://127.0.0.1:{port}"))
            .collect()
    }

    /// redis-cli's arguments to speak TLS with these servers.
    fn cli_tls(&self) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            path("ca.pem"),
            "--cert".to_owned(),
            path("client.pem"),
            "--key".to_owned(),
            path("client.key"),
        ]
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
