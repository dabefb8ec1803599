//! The serving layer for a test: in process on an ephemeral port, stopped by the test.

use anyhow::Context;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tributary_shared::Config;
use tributary_shared::bucket::format_rfc3339;

use crate::checks::get;

/// A running serving layer: its base URL, and how to stop it.
pub struct Server {
    pub url: String,
    pub stop: watch::Sender<bool>,
    /// Ends with the serving layer's own result once `stop` is sent.
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts the serving layer in this process (`config.serving.listen` should be port 0).
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let (stop, rx) = watch::channel(false);
        let (tx, bound) = oneshot::channel();
        let task = tokio::spawn(tributary_serving_layer::serve(config, rx, Some(tx)));
        let addr = bound.await.context("the serving layer did not bind")?;
        Ok(Server {
            url: format!("http://{addr}"),
            stop,
            task,
        })
    }

    /// `series` of the `checkouts` view over `[from, to)`, failing unless the answer is 200.
    pub async fn series(&self, g: &str, from: i64, to: i64, extra: &str) -> anyhow::Result<Value> {
        let (code, body) = get(&format!(
            "{}/v1/views/checkouts/series?granularity={g}&from={}&to={}{extra}",
            self.url,
            format_rfc3339(from),
            format_rfc3339(to)
        ))
        .await?;
        anyhow::ensure!(code == 200, "series: {code} {body}");
        Ok(body)
    }

    /// Stops it and returns how it ended (an error of the serving layer, or its panic).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}
