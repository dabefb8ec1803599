//! Services a fault scenario owns, so it can break them without touching the shared stack:
//! its own Redis (restarted empty, paused), its own broker (restarted, its topic grown), and a
//! fault-injecting proxy in front of the S3 API.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::procs::signal;

/// A free port on loopback (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_port(port: u16, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on port {port} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A redis-server of the scenario's own, without persistence (like the stack's).
pub struct OwnRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one on a free port; `extra` are more `redis-server` arguments.
    pub async fn start(extra: &[&str]) -> anyhow::Result<OwnRedis> {
        let mut r = OwnRedis {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start redis-server (is it installed? `make up` installs it)")?;
        self.child = Some(child);
        wait_port(self.port, "redis-server", Duration::from_secs(15)).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (SIGKILL): without persistence, everything it held is gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Kills it and starts an empty one on the same port (a restart without persistence).
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// SIGSTOP: unreachable (connections hang) but keeps its data; [`OwnRedis::resume`] ends it.
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.pid()?, "STOP")
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.pid()?, "CONT")
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .context("redis-server is not running")
    }
}

/// The index `make up` adds to the stack's broker store, added to every own broker too.
const TANSU_INDEX: &str = include_str!("../../../infra/tansu-index.sql");

/// A Tansu broker of the scenario's own (the stack's binary, its own SQLite store).
pub struct OwnBroker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnBroker {
    pub async fn start() -> anyhow::Result<OwnBroker> {
        let mut b = OwnBroker {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
        };
        b.spawn().await?;
        Ok(b)
    }

    fn bin() -> anyhow::Result<PathBuf> {
        let bin = std::env::var("TRIBUTARY_TANSU_BIN").context(
            "TRIBUTARY_TANSU_BIN is not set: run the tests through `make test` / `make chaos` (infra/stack.sh env)",
        )?;
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: `make up` installs Tansu",
            bin.display()
        );
        Ok(bin)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Tansu takes the SQLite path relative to its working directory.
        let child = Command::new(Self::bin()?)
            .current_dir(self.dir.path())
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("start tansu")?;
        self.child = Some(child);
        wait_port(self.port, "tansu", Duration::from_secs(30)).await?;
        self.index().await
    }

    /// Adds the header index Tansu 0.6 lacks, as `make up` does for the stack's broker
    /// (`infra/tansu-index.sql` says why). Tansu creates its tables as it starts: retried.
    async fn index(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.sqlite(TANSU_INDEX).await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Runs SQL on the broker's own store (sqlite3's shell, so dot-commands work).
    async fn sqlite(&self, sql: &str) -> anyhow::Result<()> {
        let mut child = Command::new("sqlite3")
            .arg(self.dir.path().join("tansu.db"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run sqlite3 (`make up` installs it)")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        anyhow::ensure!(
            out.status.success(),
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and starts it again on the same store: a broker crash and restart.
    pub async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        tokio::time::sleep(down_for).await;
        self.spawn().await
    }

    /// Grows a topic to `partitions` partitions, writing the broker's own SQLite store the
    /// way its topic creation does (Tansu 0.6 has no CreatePartitions; its metadata, produce
    /// and fetch read these rows on every request).
    pub async fn grow_partitions(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let sql = format!(
            ".timeout 10000
BEGIN IMMEDIATE;
WITH RECURSIVE p(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM p WHERE n + 1 < {partitions})
INSERT OR IGNORE INTO topition (topic, partition)
SELECT t.id, p.n FROM cluster c JOIN topic t ON t.cluster = c.id, p
WHERE c.name = 'tansu_cluster' AND t.name = '{topic}';
INSERT INTO watermark (topition)
SELECT tp.id FROM cluster c JOIN topic t ON t.cluster = c.id JOIN topition tp ON tp.topic = t.id
WHERE c.name = 'tansu_cluster' AND t.name = '{topic}'
  AND NOT EXISTS (SELECT 1 FROM watermark w WHERE w.topition = tp.id);
UPDATE topic SET partitions = {partitions}, last_updated = current_timestamp
WHERE name = '{topic}' AND cluster = (SELECT id FROM cluster WHERE name = 'tansu_cluster');
COMMIT;
"
        );
        self.sqlite(&sql).await
    }
}

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards to the target.
    Pass,
    /// Answers every request `503 Service Unavailable` (what S3 says when it is overloaded).
    Fail,
    /// Closes every connection at once (an endpoint restarting).
    Reset,
}

/// A TCP proxy in front of an HTTP service that can be told to fail.
pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<ProxyMode>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target: &str) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, rx) = watch::channel(ProxyMode::Pass);
        let target = target.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (target, mut rx) = (target.clone(), rx.clone());
                tokio::spawn(async move {
                    let now = *rx.borrow_and_update();
                    match now {
                        ProxyMode::Pass => {
                            let Ok(mut upstream) = TcpStream::connect(&target).await else {
                                return;
                            };
                            let mut client = client;
                            // Until the mode changes: then the connection is cut.
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                                _ = rx.changed() => {}
                            }
                        }
                        ProxyMode::Fail => {
                            let mut client = client;
                            let mut buf = [0u8; 8192];
                            let _ = client.read(&mut buf).await;
                            let body = "<Error><Code>ServiceUnavailable</Code><Message>fault injected</Message></Error>";
                            let resp = format!(
                                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = client.write_all(resp.as_bytes()).await;
                            let _ = client.shutdown().await;
                        }
                        ProxyMode::Reset => drop(client),
                    }
                });
            }
        });
        Ok(FaultProxy { port, mode, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: ProxyMode) {
        let _ = self.mode.send(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
