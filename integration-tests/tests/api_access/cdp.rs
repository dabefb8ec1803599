//! Just enough of the Chrome DevTools Protocol to drive a page like a person: headless Chromium
//! with `--remote-debugging-pipe` (JSON messages ending in NUL on its fds 3 and 4), so no
//! websocket client and no extra crate are needed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long one protocol command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with one page (tab) attached.
pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    /// The profile and Chromium's stderr (shown when a call fails).
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and opens a blank tab.
    pub async fn launch() -> anyhow::Result<Browser> {
        let bin = tributary_it::chromium();
        let dir = tempfile::tempdir()?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        // The shell gives Chromium our stdin as its fd 3 (commands) and our stdout as its fd 4
        // (answers), which is where `--remote-debugging-pipe` talks; `exec` keeps its pid.
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(&bin)
            .args(tributary_it::CHROMIUM_FLAGS)
            .args([
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1400,1000",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("run {bin} (installed by `make up`: apt-get install chromium)")
            })?;
        let to = child.stdin.take().context("chromium stdin")?;
        let from = BufReader::new(child.stdout.take().context("chromium stdout")?);
        let mut browser = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            dir,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}), false)
            .await?;
        let target = target["targetId"]
            .as_str()
            .context("no targetId")?
            .to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
                false,
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_string();
        Ok(browser)
    }

    /// One command; `on_page` sends it to the tab rather than the browser. Events and other
    /// answers read meanwhile are skipped.
    async fn call(&mut self, method: &str, params: Value, on_page: bool) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            self.to.write_all(&bytes).await?;
            self.to.flush().await?;
            loop {
                let mut buf = Vec::new();
                if self.from.read_until(0, &mut buf).await? == 0 {
                    bail!("chromium closed its pipe");
                }
                buf.pop();
                let v: Value = serde_json::from_slice(&buf)?;
                if v["id"] == json!(id) {
                    return Ok(v);
                }
            }
        })
        .await;
        let answer = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => bail!("{method}: {e:#}{}", self.stderr_tail()),
            Err(_) => bail!(
                "{method}: no answer in {CALL_TIMEOUT:?}{}",
                self.stderr_tail()
            ),
        };
        if let Some(err) = answer.get("error") {
            bail!("{method}: {err}");
        }
        Ok(answer["result"].clone())
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        format!(
            "\nchromium stderr (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Opens `url` in the tab (returns once the navigation is committed, not loaded).
    pub async fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let r = self
            .call("Page.navigate", json!({"url": url}), true)
            .await?;
        if let Some(e) = r.get("errorText") {
            bail!("navigate {url}: {e}");
        }
        Ok(())
    }

    /// Reloads the tab (its sessionStorage stays).
    pub async fn reload(&mut self) -> anyhow::Result<()> {
        self.call("Page.reload", json!({}), true).await.map(drop)
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                true,
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expression` is truthy in the page, failing with `what` after `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            // Between navigations the page may have no context yet: an error is retried.
            if let Ok(v) = self.eval(&format!("!!({expression})")).await
                && v == json!(true)
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let html = self
                    .eval("document.body ? document.body.outerHTML.slice(0, 3000) : ''")
                    .await
                    .unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for {what}; page: {html}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a PNG screenshot of the tab.
    pub async fn screenshot(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}), true)
            .await?;
        let data = r["data"].as_str().context("no screenshot data")?;
        std::fs::write(path, BASE64_STANDARD.decode(data)?)?;
        Ok(())
    }

    /// Closes the browser and waits for it to exit.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self.call("Browser.close", json!({}), false).await;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}
