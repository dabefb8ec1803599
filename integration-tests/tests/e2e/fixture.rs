//! The scenario, run once for every test of the binary: setup, then each phase in the order
//! the state demands (everything after the first batch run, then a second wave, then the DLQ
//! round trip), each recording what it saw for its test to check.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use object_store::ObjectStore;
use serde_json::Value;
use tokio::sync::watch;
use tributary_batch_layer::metrics::BatchMetrics;
use tributary_batch_layer::run::{RunRequest, run_once};
use tributary_it::scenario::{Ev, Resend, VIEWS, add_ends, events, produce};
use tributary_it::server::Server;
use tributary_it::{
    create_topic, now_ms, open, test_config, unique, wait_archived, wait_speed_applied,
};
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS, format_rfc3339, parse_rfc3339};
use tributary_shared::{Config, Granularity};

use crate::accuracy::{self, Ledger};
use crate::exact_as_of::{self, After, Before};
use crate::first_run::{self, BadRequest, Bounded, Degraded, Ops, Series};
use crate::openapi::{self, Fuzzed};
use crate::second_run::{self, Dlq};

const SETTINGS: &str = r#"
[speed]
allowed_lateness = "5m"
dedup_window = "1h"
flush_interval = "100ms"
metrics_listen = "127.0.0.1:0"

[batch]
archive_max_rows = 5000
archive_flush_interval = "300ms"
metrics_listen = "127.0.0.1:0"
idle_timeout = "1s"

[serving]
listen = "127.0.0.1:0"
max_buckets = 2000
"#;

/// What one phase saw, or why it could not look (as text: the record is shared by tests).
pub type Seen<T> = Result<T, String>;

/// A phase's record, or its error for the test to fail with.
pub fn got<T>(seen: &Seen<T>) -> anyhow::Result<&T> {
    seen.as_ref()
        .map_err(|e| anyhow::anyhow!("the phase could not observe: {e}"))
}

fn seen<T>(r: anyhow::Result<T>) -> Seen<T> {
    r.map_err(|e| format!("{e:#}"))
}

/// The running platform, for the phases to query and feed.
pub struct Ctx {
    pub config: Config,
    pub store: Arc<dyn ObjectStore>,
    pub topic: String,
    pub server: Server,
    pub metrics: Arc<BatchMetrics>,
    /// What every partition held at the first batch run.
    pub ends: HashMap<i32, i64>,
    pub from: i64,
    pub to: i64,
}

impl Ctx {
    /// A `series` URL of the `checkouts` view over the scenario's range.
    pub fn q(&self, g: &str, extra: &str) -> String {
        format!(
            "{}/v1/views/checkouts/series?granularity={g}&from={}&to={}{extra}",
            self.server.url,
            format_rfc3339(self.from),
            format_rfc3339(self.to)
        )
    }
}

/// Every phase's record.
pub struct Fixture {
    pub wave1: Vec<Ev>,
    pub late: Vec<Ev>,
    pub wave2: Vec<Ev>,
    pub series: Seen<Series>,
    pub exact_as_of: Seen<Before>,
    pub ledger: Seen<Ledger>,
    pub exact_as_of_after: Seen<After>,
    pub status: Seen<Value>,
    pub top: Seen<(u16, Value)>,
    pub bad_requests: Seen<Vec<BadRequest>>,
    pub measures_twice: Seen<(u16, Value)>,
    pub bounded: Seen<Bounded>,
    pub ops: Seen<Ops>,
    pub degraded: Seen<Degraded>,
    pub second_run: Seen<(u16, Value)>,
    pub dlq: Seen<Dlq>,
    pub openapi: Seen<Fuzzed>,
    pub shutdown: Seen<()>,
}

impl Fixture {
    /// The events both layers saw before the first batch run (the batch's truth; the speed
    /// layer's is `wave1`, as it drops the late ones).
    pub fn first_events(&self) -> Vec<Ev> {
        let mut all = self.wave1.clone();
        all.extend(self.late.iter().cloned());
        all
    }

    /// The batch horizon after the first run, as the first hourly series reported it.
    pub fn h1(&self) -> anyhow::Result<i64> {
        horizon(&got(&self.series)?.hour.1)
    }
}

/// The `batch_horizon` of a series answer.
pub fn horizon(body: &Value) -> anyhow::Result<i64> {
    body["batch_horizon"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("horizon")
}

static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();

/// The scenario's record, run on first use; every later caller waits for it.
pub fn fixture() -> anyhow::Result<&'static Fixture> {
    FIXTURE
        .get_or_init(|| {
            // Its own thread and runtime: the layers it starts must not belong to whichever
            // test came first (its runtime ends with it), and every one of them is stopped
            // before this runtime ends.
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("runtime: {e}"))?;
                rt.block_on(run()).map_err(|e| format!("{e:#}"))
            })
            .join()
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {what}"))
            })
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the e2e setup failed: {e}"))
}

/// Waits for the speed layer to apply, and the archive to commit, every record.
pub async fn wait_consumed(config: &Config, ends: &HashMap<i32, i64>) -> anyhow::Result<()> {
    let topic = &config.source.topic;
    wait_speed_applied(&config.redis.key_prefix, "checkouts", topic, ends).await?;
    wait_archived(open(&config.store)?, topic, ends).await
}

fn malformed() -> Vec<Vec<u8>> {
    let future = now_ms() + 3_600_000;
    let mut out = Vec::new();
    for i in 0..10 {
        out.push(format!("not json {i}").into_bytes());
        out.push(format!(r#"{{"event_id":"m{i}","type":"checkout"}}"#).into_bytes());
        out.push(
            format!(
                r#"{{"event_id":"f{i}","event_time":{future},"type":"checkout","amount":1.0}}"#
            )
            .into_bytes(),
        );
    }
    out
}

async fn run() -> anyhow::Result<Fixture> {
    let topic = unique("e2e");
    create_topic(&topic, 4).await?;
    let store_dir = tempfile::tempdir()?;
    let mut config = test_config(&topic, &unique("e2e"), &format!("{SETTINGS}{VIEWS}"))?;
    config.store.url = format!("file://{}", store_dir.path().display());
    let store = open(&config.store)?;
    let now = now_ms();

    // History: 2.5 h ending 30 min ago (resends on the same partition, which the speed
    // layer's dedup window and the batch both remove), late events 2 h behind, malformed ones.
    let wave1 = events(11, 6000, now - 3 * HOUR_MS, 150 * MINUTE_MS);
    let late = events(12, 300, now - 170 * MINUTE_MS, HOUR_MS);
    let mut ends = produce(&topic, &wave1, 25, Resend::SamePartition, 4, &malformed()).await?;
    ends = add_ends(
        &ends,
        &produce(&topic, &late, 0, Resend::SamePartition, 4, &[]).await?,
    );

    let (stop_speed, rx) = watch::channel(false);
    let speed = tokio::spawn(tributary_speed_layer::run(config.clone(), rx));
    let (stop_archive, rx) = watch::channel(false);
    let archive = tokio::spawn(tributary_batch_layer::archive(config.clone(), rx));
    let server = Server::start(config.clone()).await?;
    wait_consumed(&config, &ends).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // every partition idle
    let metrics = BatchMetrics::new();
    run_once(&config, &store, &metrics, &RunRequest::default()).await?;

    let ctx = Ctx {
        config,
        store,
        topic,
        server,
        metrics,
        ends,
        from: Granularity::Hour.floor(now - 4 * HOUR_MS),
        to: Granularity::Hour.floor(now) + 2 * HOUR_MS,
    };
    // Read-only phases first, on the state of the first run; then the ones that add events.
    let series = seen(first_run::observe_series(&ctx).await);
    let exact_as_of = seen(exact_as_of::observe_before(&ctx).await);
    let ledger = seen(accuracy::observe(&ctx).await);
    let status = seen(first_run::observe_status(&ctx).await);
    let top = seen(first_run::observe_top(&ctx).await);
    let bad_requests = seen(first_run::observe_bad_requests(&ctx).await);
    let measures_twice = seen(first_run::observe_measures_twice(&ctx).await);
    let bounded = seen(first_run::observe_bounded(&ctx).await);
    let ops = seen(first_run::observe_ops(&ctx).await);
    let degraded = seen(first_run::observe_degraded(&ctx).await);

    // More events arrive up to now.
    let wave2 = events(13, 2000, now - 30 * MINUTE_MS, 29 * MINUTE_MS);
    let second = seen(second_run::observe_second_run(&ctx, &wave2).await);
    let exact_as_of_after = match (&second, &exact_as_of) {
        (Ok(_), Ok(before)) => seen(exact_as_of::observe_after(&ctx, before).await),
        _ => Err("not run: the second run or the first as_of phase failed".into()),
    };
    let dlq = match &second {
        Ok(_) => seen(second_run::observe_dlq(&ctx).await),
        Err(_) => Err("not run: the second-run phase failed before it".into()),
    };
    // Last: it changes nothing, and finds the most to answer with once both runs landed.
    let openapi = seen(openapi::observe(&ctx).await);

    let Ctx { server, .. } = ctx;
    let shutdown = seen(
        async {
            for stop in [stop_speed, stop_archive] {
                let _ = stop.send(true);
            }
            speed.await??;
            archive.await??;
            server.stop().await
        }
        .await,
    );
    drop(store_dir); // the store outlives every layer that writes to it
    Ok(Fixture {
        wave1,
        late,
        wave2,
        series,
        exact_as_of,
        ledger,
        exact_as_of_after,
        status,
        top,
        bad_requests,
        measures_twice,
        bounded,
        ops,
        degraded,
        second_run: second,
        dlq,
        openapi,
        shutdown,
    })
}
