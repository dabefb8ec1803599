//! The platform's binaries as separate processes, for tests that kill, stop and restart them
//! the way an operator's bad day would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .with_context(|| format!("kill -{sig} {pid}"))?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// One binary of the workspace run with a config file; its output goes to a log file that
/// every restart appends to (shown when a test fails).
pub struct Daemon {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    config: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// SIGKILLs delivered.
    pub kills: u32,
    pub starts: u32,
}

impl Daemon {
    /// `bin` is a workspace binary (`speed-layer`, ...); `args` its subcommand and flags.
    pub fn new(
        name: &str,
        bin: &str,
        args: &[&str],
        config: &Path,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Daemon> {
        Ok(Daemon {
            name: name.to_string(),
            bin: crate::binary(bin)?,
            args: args.iter().map(|s| s.to_string()).collect(),
            config: config.to_path_buf(),
            env: env.to_vec(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            kills: 0,
            starts: 0,
        })
    }

    /// Starts the process (no-op when it runs).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("TRIBUTARY_CHAOS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.name))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How the process ended, when it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                self.kills += 1;
            }
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        Ok(())
    }

    /// SIGTERM and the exit code (after at most `timeout`, then SIGKILL and an error).
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        if let Some(pid) = c.id() {
            signal(pid, "TERM")?;
        }
        match tokio::time::timeout(timeout, c.wait()).await {
            Ok(status) => Ok(status?.code()),
            Err(_) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
                anyhow::bail!(
                    "{} did not stop within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.tail(40)
                )
            }
        }
    }

    /// Waits for the process to exit by itself; its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = tokio::time::timeout(timeout, c.wait())
            .await
            .with_context(|| format!("{} did not exit within {timeout:?}", self.name))??;
        self.child = None;
        Ok(status.code())
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
