//! Throwaway PostgreSQL, Redis and Kafka-protocol servers on free loopback
//! ports, for the runs that must own their stores: a chaos scenario kills,
//! freezes and restarts them, and the Postgres TLS tests need a server
//! configured for TLS. Everything else uses the shared stack that
//! `scripts/stack up` starts. The server binaries are the stack's (Debian's
//! `postgresql` and `redis-server`, and the tansu broker the stack builds
//! into its cache); nothing is downloaded.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    process::{Child, Command},
    time::sleep,
};

mod tls_front;
pub use tls_front::TlsFront;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to process `pid`, as
/// the tests and chaos scenarios that stop, freeze or kill a service do.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: as root, run it as `postgres`.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn pg_bin() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (scripts/stack up installs it)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// A server certificate and key, in PEM, for a Postgres that speaks TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate (its chain, leaf first).
    pub cert_pem: String,
    /// Its private key (PKCS#8 or PKCS#1).
    pub key_pem: String,
}

/// A PostgreSQL server of its own: its own data directory under the log
/// directory, its own port, database `turnstile` created.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    log_dir: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl PrivatePostgres {
    /// Starts a server that takes plain TCP connections.
    pub async fn start(log_dir: &Path) -> Result<Self> {
        Self::start_with(log_dir, None).await
    }

    /// Starts a server that takes TLS connections only: any connection over
    /// plain TCP is refused by `pg_hba.conf`, so a client that connects has
    /// spoken TLS.
    pub async fn start_with_tls(log_dir: &Path, tls: &ServerTls) -> Result<Self> {
        Self::start_with(log_dir, Some(tls)).await
    }

    async fn start_with(log_dir: &Path, tls: Option<&ServerTls>) -> Result<Self> {
        let bin = pg_bin()?;
        let data = log_dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        hand_to_postgres(log_dir)?;
        let initdb = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !initdb.success() {
            bail!("initdb failed");
        }
        if let Some(tls) = tls {
            require_tls(&data, tls)?;
        }
        let mut postgres = Self {
            bin,
            data,
            log_dir: log_dir.to_path_buf(),
            port: free_port()?,
            server: None,
        };
        postgres.launch().await?;
        let admin = sqlx::PgPool::connect(&postgres.url_of("postgres")).await?;
        sqlx::query("CREATE DATABASE turnstile").execute(&admin).await?;
        admin.close().await;
        Ok(postgres)
    }

    /// Starts a streaming replica of this server (a hot standby, read-only,
    /// fed by `pg_basebackup -R`), with its data and log under `log_dir`.
    /// Pausing its replay (`SELECT pg_wal_replay_pause()`) makes it lag on
    /// demand.
    pub async fn start_replica(&self, log_dir: &Path) -> Result<Self> {
        let data = log_dir.join("pgdata");
        std::fs::create_dir_all(log_dir)?;
        hand_to_postgres(log_dir)?;
        let backup = as_postgres(&self.bin.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !backup.success() {
            bail!("pg_basebackup from port {} failed", self.port);
        }
        let mut replica = Self {
            bin: self.bin.clone(),
            data,
            log_dir: log_dir.to_path_buf(),
            port: free_port()?,
            server: None,
        };
        replica.launch().await?;
        Ok(replica)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `postgres://` URL of its `turnstile` database (user `postgres`,
    /// trusted; sqlx's default `sslmode=prefer`).
    pub fn url(&self) -> String {
        self.url_of("turnstile")
    }

    async fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join("postgres.log"))?;
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.data.display()))
            .args(["-c", "max_connections=200", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
                && sqlx::PgPool::connect(&self.url_of("postgres")).await.is_ok()
            {
                return Ok(());
            }
            sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "private PostgreSQL did not start; see {}/postgres.log",
            self.log_dir.display()
        )
    }

    /// SIGSTOP to every process of the server (its process group), and
    /// SIGCONT after `pause`: connections stay open and nothing answers.
    pub async fn freeze(&mut self, pause: Duration) -> Result<()> {
        let pid = self
            .server
            .as_ref()
            .and_then(Child::id)
            .context("PostgreSQL is not running")?;
        let group = format!("-{pid}");
        let signal = |sig: &str| std::process::Command::new("kill").args([sig, "--", &group]).status();
        if !signal("-STOP")?.success() {
            bail!("kill -STOP -- {group} failed");
        }
        sleep(pause).await;
        if !signal("-CONT")?.success() {
            bail!("kill -CONT -- {group} failed");
        }
        Ok(())
    }

    /// A crash: `pg_ctl stop -m immediate` (every server process quits at
    /// once, without a checkpoint, and open transactions are lost with
    /// their connections), then start again on the same port and data,
    /// which runs crash recovery. Returns how long it was down.
    pub async fn crash_and_restart(&mut self) -> Result<Duration> {
        let down = Instant::now();
        let status = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("pg_ctl stop -m immediate failed");
        }
        self.shutdown().await?;
        self.launch().await?;
        Ok(down.elapsed())
    }

    /// Fast shutdown (SIGINT to the server's process group), then start
    /// again on the same port and data. Returns how long it was down.
    pub async fn restart(&mut self) -> Result<Duration> {
        let down = Instant::now();
        self.shutdown().await?;
        self.launch().await?;
        Ok(down.elapsed())
    }

    async fn shutdown(&mut self) -> Result<()> {
        if let Some(mut child) = self.server.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-INT", "--", &format!("-{pid}")])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            // The postmaster may outlive `runuser`: wait for the port.
            let deadline = Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                if Instant::now() > deadline {
                    bail!("PostgreSQL did not shut down");
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Turns TLS on in an initialised data directory and refuses plain TCP.
fn require_tls(data: &Path, tls: &ServerTls) -> Result<()> {
    use std::{io::Write, os::unix::fs::PermissionsExt};

    // Postgres refuses a key that others can read.
    for (name, pem) in [("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)] {
        let path = data.join(name);
        std::fs::write(&path, pem)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    writeln!(
        conf,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
    )?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostssl replication all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )?;
    hand_to_postgres(data)
}

/// PostgreSQL refuses to run as root, so as root its files must belong to
/// `postgres`, the user it runs as.
fn hand_to_postgres(dir: &Path) -> Result<()> {
    if running_as_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()?;
        if !status.success() {
            bail!("chown of {} failed", dir.display());
        }
    }
    Ok(())
}

/// A Redis server of its own, without persistence unless asked.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    log_dir: PathBuf,
    server: Option<Child>,
    /// TLS only, with these files (in the log directory), when set.
    tls: Option<RedisTlsFiles>,
}

/// A TLS-only Redis's certificate files, and whether it asks clients for
/// a certificate.
#[derive(Debug, Clone)]
struct RedisTlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    ask_clients: bool,
}

impl PrivateRedis {
    pub async fn start(log_dir: &Path) -> Result<Self> {
        let mut redis = Self {
            port: free_port()?,
            log_dir: log_dir.to_path_buf(),
            server: None,
            tls: None,
        };
        redis.launch().await?;
        Ok(redis)
    }

    /// A server that speaks TLS only (no plain port at all), with `tls`'s
    /// certificate and the CA `ca_pem`; with `ask_clients`, it refuses a
    /// client without a certificate that CA signed.
    pub async fn start_with_tls(log_dir: &Path, tls: &ServerTls, ca_pem: &str, ask_clients: bool) -> Result<Self> {
        let files = RedisTlsFiles {
            cert: log_dir.join("redis-server.pem"),
            key: log_dir.join("redis-server.key"),
            ca: log_dir.join("redis-ca.pem"),
            ask_clients,
        };
        std::fs::write(&files.cert, &tls.cert_pem)?;
        std::fs::write(&files.key, &tls.key_pem)?;
        std::fs::write(&files.ca, ca_pem)?;
        let mut redis = Self {
            port: free_port()?,
            log_dir: log_dir.to_path_buf(),
            server: None,
            tls: Some(files),
        };
        redis.launch().await?;
        Ok(redis)
    }

    /// `redis://` URL, or `rediss://` for a TLS-only server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join("redis.log"))?;
        // No automatic snapshots; `snapshot` writes one into the log
        // directory, and a restart loads it if there is one.
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", if tls.ask_clients { "yes" } else { "no" }]),
        };
        let child = command
            .arg("--dir")
            .arg(&self.log_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (scripts/stack up installs it)")?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // A TLS port that accepts connections is serving: this crate's
            // client has no TLS to say more.
            if self.tls.is_some() {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return Ok(());
                }
            } else if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok(());
            }
            sleep(Duration::from_millis(50)).await;
        }
        bail!("private redis-server did not start")
    }

    /// SIGKILL: the data is gone, as after a crash without persistence.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.server.take() {
            child.kill().await?;
        }
        Ok(())
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.launch().await
    }

    /// Writes a snapshot (`SAVE`) that a later [`roll_back`](Self::roll_back) restores.
    pub async fn snapshot(&self) -> Result<()> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("SAVE").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// SIGKILL, then start again from the last snapshot: the data goes
    /// back to what it was then, as after a restore from backup or a
    /// failover to a replica that was behind.
    pub async fn roll_back(&mut self) -> Result<()> {
        if !self.log_dir.join("dump.rdb").is_file() {
            bail!("no snapshot to roll back to");
        }
        self.kill().await?;
        self.launch().await
    }

    pub async fn stop(mut self) {
        let _ = self.kill().await;
    }
}

/// Where the stack's tansu binary is: `$TURNSTILE_CACHE`, or
/// `~/.cache/turnstile`, then `tansu-0.6.0/bin/tansu` (as `scripts/stack`
/// builds it).
pub fn tansu_bin() -> PathBuf {
    let cache = std::env::var_os("TURNSTILE_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/turnstile"),
        PathBuf::from,
    );
    cache.join("tansu-0.6.0/bin/tansu")
}

/// A Kafka-protocol broker of its own: the stack's tansu, with in-memory
/// storage, on a free port. Its log lives in the process, so
/// [`kill`](Self::kill) then [`restart`](Self::restart) is a broker that
/// comes back on the same address without its topics, as after a crash of
/// a broker without persistent storage.
///
/// Started [with TLS](Self::start_with_tls), it sits behind a [`TlsFront`]
/// and advertises the front's address, so clients reach it over TLS alone.
#[derive(Debug)]
pub struct PrivateBroker {
    bin: PathBuf,
    port: u16,
    log_dir: PathBuf,
    server: Option<Child>,
    front: Option<TlsFront>,
}

impl PrivateBroker {
    /// Starts the broker and waits until it takes connections. Its output
    /// goes to `broker.log` in `log_dir`.
    pub async fn start(log_dir: &Path) -> Result<Self> {
        Self::start_with(log_dir, None).await
    }

    /// Starts the broker behind a [`TlsFront`] serving `tls`: it advertises
    /// the front, so [`addr`](Self::addr) and every address a client learns
    /// from it are the front's.
    pub async fn start_with_tls(log_dir: &Path, tls: &ServerTls) -> Result<Self> {
        Self::start_with(log_dir, Some(tls)).await
    }

    async fn start_with(log_dir: &Path, tls: Option<&ServerTls>) -> Result<Self> {
        let bin = tansu_bin();
        if !bin.is_file() {
            bail!("{} not found: scripts/stack up builds it", bin.display());
        }
        let port = free_port()?;
        let front = match tls {
            Some(tls) => Some(TlsFront::start(tls, port).await?),
            None => None,
        };
        let mut broker = Self {
            bin,
            port,
            log_dir: log_dir.to_path_buf(),
            server: None,
            front,
        };
        broker.launch().await?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, as `TURNSTILE_KAFKA_BROKERS` names it: the TLS
    /// front's port if it has one.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port())
    }

    /// The TLS front, if it was started with one.
    pub fn front(&self) -> Option<&TlsFront> {
        self.front.as_ref()
    }

    fn advertised_port(&self) -> u16 {
        self.front.as_ref().map_or(self.port, TlsFront::port)
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    async fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join("broker.log"))?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.addr());
        // As scripts/stack starts the shared one; no traces exported.
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "private broker did not listen on 127.0.0.1:{} within 30 s; see {}/broker.log",
            self.port,
            self.log_dir.display()
        )
    }

    /// SIGKILL, and wait until the process is gone: its topics and
    /// messages are gone with it.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.server.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the broker again on the same address, empty.
    pub async fn restart(&mut self) -> Result<()> {
        if self.server.is_some() {
            bail!("the broker is running: kill it first");
        }
        // The port was released by the killed process; a restart right
        // after the kill may find it in use for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("port {} still in use 10 s after the broker was killed", self.port);
            }
            sleep(Duration::from_millis(50)).await;
        }
        self.launch().await
    }

    pub async fn stop(mut self) {
        let _ = self.kill().await;
    }
}
