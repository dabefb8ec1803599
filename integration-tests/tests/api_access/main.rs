//! Access control of the serving layer, tested through HTTP as a client or a browser would:
//! API keys ([`keys`]: 401 with the JSON error body without a valid key, 200 with each key,
//! health and docs open, the bearer scheme in OpenAPI, keys never logged), CORS only for the
//! configured origins ([`cors`]), HTTPS with the local stack's test CA ([`https`]), and the
//! dashboard asking for a key in headless Chromium ([`dashboard`], driven by [`cdp`]).
//!
//! Needs the secured stack: `make up-secure`, then `eval "$(infra/stack.sh env)"`.

mod cdp;
mod cors;
mod dashboard;
mod https;
mod keys;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tributary_it::{example_config, redis_url, unique};
use tributary_shared::Config;

/// Two keys, as `serving.api_keys` would hold them (validation wants 16 characters or more).
pub const KEY_A: &str = "it-key-a-7f3c9e21b05d4a68";
pub const KEY_B: &str = "it-key-b-0c8d5e7a19f2463b";

/// A key nobody configured, of the same length as the real ones.
pub const WRONG_KEY: &str = "it-key-x-0000000000000000";

/// The example config with its own store and Redis prefix, on an ephemeral port, plus
/// `TRIBUTARY__SERVING__...`-style `overrides`, through the real loader and its validation.
pub fn config(store: &Path, overrides: &[(&str, String)]) -> anyhow::Result<Config> {
    let mut all = vec![
        ("SOURCE__BROKERS", tributary_it::brokers()),
        ("REDIS__URL", redis_url()),
        ("REDIS__KEY_PREFIX", unique("access")),
        ("STORE__URL", format!("file://{}", store.display())),
        ("SERVING__LISTEN", "127.0.0.1:0".into()),
    ];
    all.extend(overrides.iter().cloned());
    example_config(&all)
}

/// `serving.api_keys` holding [`KEY_A`] and [`KEY_B`].
pub fn two_keys() -> (&'static str, String) {
    ("SERVING__API_KEYS", format!(r#"["{KEY_A}", "{KEY_B}"]"#))
}

/// A path from the secured stack's environment; fails, saying how to get it, when unset.
pub fn secure_file(var: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var(var).map(PathBuf::from).map_err(|_| {
        anyhow::anyhow!(
            "{var} is not set: start the secured stack with `make up-secure`, then \
             `eval \"$(infra/stack.sh env)\"` before `cargo test`"
        )
    })?;
    anyhow::ensure!(
        path.is_file(),
        "{var}={} does not exist: run `make up-secure` again",
        path.display()
    );
    Ok(path)
}

/// A serving layer started in this process.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts it; if it does not bind, fails with the serving layer's own error.
    pub async fn start(config: Config) -> anyhow::Result<Running> {
        let (stop, rx) = watch::channel(false);
        let (tx, bound) = oneshot::channel();
        let task = tokio::spawn(tributary_serving_layer::serve(config, rx, Some(tx)));
        match bound.await {
            Ok(addr) => Ok(Running { addr, stop, task }),
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => anyhow::bail!("the serving layer ended without binding"),
                Err(e) => Err(e).context("the serving layer panicked"),
            },
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops it (graceful shutdown) and returns how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(std::time::Duration::from_secs(15), self.task)
            .await
            .context("the serving layer did not stop within 15 s")??
    }
}
