//! The speed layer on a 3-master Redis Cluster with a replica each: exact totals with two
//! speed processes and a rebalance, the serving layer reading through the cluster, a master
//! killed mid-stream (its replica takes over; the writes it lost are noticed and re-read from
//! Kafka), and `reset` deleting a view's keys on whichever master holds them.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use tributary_it::chaos::procs::{Daemon, signal};
use tributary_it::chaos::{Platform, chaos_config};
use tributary_it::scenario::{Ev, FIELDS, close, exact_events, truth};
use tributary_it::secure::SecureStack;
use tributary_it::server::Server;
use tributary_it::{
    brokers, create_topic, now_ms, redis_url, unique, wait_for, wait_speed_applied_via,
};
use tributary_shared::Granularity;
use tributary_shared::bucket::{HOUR_MS, format_rfc3339, parse_rfc3339};
use tributary_shared::config::RedisConfig;
use tributary_shared::redis_client::RedisClient;

use crate::produce_via;

const PARTITIONS: i32 = 4;

/// Two more views, chosen so that with `checkouts` (slot 7368) each master's slot range holds
/// one view: `revenue` hashes to 1738, `devices` to 11379. `reset` then has keys to delete on
/// every master.
const SPREAD_VIEWS: &str = r#"
[[views]]
name = "revenue"
granularities = ["hour"]
measures = [{ name = "revenue", agg = "sum", field = "amount" }]

[[views]]
name = "devices"
dimensions = ["device"]
granularities = ["hour"]
measures = [{ name = "events", agg = "count" }]
"#;
const VIEW_NAMES: [&str; 4] = ["checkouts", "all_types", "revenue", "devices"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_layer_on_redis_cluster_stays_exact() -> anyhow::Result<()> {
    let stack = SecureStack::from_env()?;
    heal_cluster(&stack).await?;
    let topic = unique("cluster");
    let prefix = unique("cluster");
    let mut config = chaos_config(&brokers(), &redis_url(), &topic, &prefix, "")?;
    config.redis = stack.cluster(&prefix);
    let spread = tributary_shared::Config::from_toml_str_with_env(
        &format!("{FIELDS}{SPREAD_VIEWS}"),
        "spread views",
        Vec::new(),
    )?;
    config.views.extend(spread.views);
    create_topic(&topic, PARTITIONS).await?;
    let mut platform = Platform::new(config)?;
    let config = platform.config.clone();
    let mut second = Daemon::new(
        "speed-2",
        "speed-layer",
        &["run"],
        &platform.config_path,
        &platform.env,
        platform.dir.path(),
    )?;

    let now = now_ms();
    let start = Granularity::Hour.floor(now) - 2 * HOUR_MS;
    let evs = exact_events(29, 4000, start, now - 30_000 - start);
    let waves: Vec<&[Ev]> = evs.chunks(evs.len().div_ceil(4)).collect();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut sent = 0;
    // The master killed (`host:port`): the speed layer's logs must show it noticed.
    let mut killed: Option<String> = None;
    let result = async {
        // One process, then a second joins (a rebalance) while events flow.
        platform.speed.start()?;
        add(
            &mut ends,
            produce_via(&config.source, waves[0], PARTITIONS).await?,
        );
        second.start()?;
        add(
            &mut ends,
            produce_via(&config.source, waves[1], PARTITIONS).await?,
        );
        sent += waves[0].len() + waves[1].len();
        applied(&config.redis, &prefix, &topic, &ends).await?;
        let server = Server::start(config.clone()).await?;
        check_exact(&server, &evs[..sent], start, now).await?;

        // Kill the master that holds the `checkouts` view while events flow.
        let (node, pid) = master_of(&stack, "checkouts").await?;
        killed = Some(node.clone());
        let produce = produce_via(&config.source, waves[2], PARTITIONS);
        signal(pid, "KILL")?;
        add(&mut ends, produce.await?);
        sent += waves[2].len();
        wait_for("a replica to take over", Duration::from_secs(30), || {
            let stack = stack.clone();
            let node = node.clone();
            async move {
                let (now_node, _) = master_of(&stack, "checkouts").await?;
                Ok((now_node != node).then_some(()))
            }
        })
        .await?;
        applied(&config.redis, &prefix, &topic, &ends).await?;
        check_exact(&server, &evs[..sent], start, now).await?;

        // `reset` rebuilds every view from Kafka: each view's keys go, on whichever master.
        let holders = masters_with_keys(&config.redis, &prefix).await?;
        anyhow::ensure!(
            holders.len() == 3,
            "the views' keys should be on all three masters: {holders:?}"
        );
        let mut reset = Daemon::new(
            "reset",
            "speed-layer",
            &["reset", "--to", &format_rfc3339(start)],
            &platform.config_path,
            &platform.env,
            platform.dir.path(),
        )?;
        reset.start()?;
        let code = reset.wait(Duration::from_secs(60)).await?;
        anyhow::ensure!(code == Some(0), "reset: exit {code:?}\n{}", reset.tail(30));
        add(
            &mut ends,
            produce_via(&config.source, waves[3], PARTITIONS).await?,
        );
        sent += waves[3].len();
        applied(&config.redis, &prefix, &topic, &ends).await?;
        check_exact(&server, &evs[..sent], start, now).await?;
        server.stop().await
    }
    .await;
    let whole_logs = platform.whole_logs();
    let logs = Platform::tails(&whole_logs);
    let _ = platform.speed.stop(Duration::from_secs(10)).await;
    let _ = second.stop(Duration::from_secs(10)).await;
    heal_cluster(&stack).await?;
    result.with_context(|| format!("after {sent} events{logs}"))?;
    let killed = killed.context("no master was killed")?;
    anyhow::ensure!(
        whole_logs
            .iter()
            .any(|(_, log)| failover_noticed(log, &killed)),
        "the failover of {killed} went unnoticed by the speed layer{logs}"
    );
    Ok(())
}

/// Whether a speed process's log accounts for the failover of `killed` (`host:port`): its
/// cluster connection lost that node and then found the new master, either by our repair
/// (`RepairingCluster`, when a request to the dead node failed first) or by the redis crate's
/// own slot refresh (when the replica was promoted before one did). Which of the two runs
/// depends on timing; the totals checked after the kill are what proves the outcome.
fn failover_noticed(logs: &str, killed: &str) -> bool {
    if logs.contains("re-read the slot map") {
        eprintln!("failover of {killed}: our cluster connection repaired itself");
        return true;
    }
    let lost = format!("connection to {killed} lost");
    let refreshed = logs
        .find(&lost)
        .is_some_and(|at| logs[at..].contains("slot refresh complete"));
    if refreshed {
        eprintln!("failover of {killed}: the redis client refreshed its slot map");
    }
    refreshed
}

fn add(ends: &mut HashMap<i32, i64>, more: HashMap<i32, i64>) {
    for (p, n) in more {
        *ends.entry(p).or_insert(0) += n;
    }
}

async fn applied(
    redis: &RedisConfig,
    prefix: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    for view in VIEW_NAMES {
        wait_speed_applied_via(redis, prefix, view, topic, ends, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// Every hour of `series` equals the truth over `evs` (count, sum, min, max: exact).
async fn check_exact(server: &Server, evs: &[Ev], start: i64, now: i64) -> anyhow::Result<()> {
    let truth = truth(evs, Granularity::Hour, &[], &[]);
    // The speed layer's buckets are visible as soon as its offsets are: no wait needed, but
    // the serving layer caches a view's state for a moment.
    wait_for("series to equal the truth", Duration::from_secs(10), || {
        let truth = &truth;
        async move {
            let body = server
                .series("hour", start, Granularity::Hour.floor(now) + HOUR_MS, "")
                .await?;
            let mut seen = 0;
            for s in body["series"].as_array().context("series")? {
                for p in s["points"].as_array().context("points")? {
                    let t = p["t"].as_str().and_then(parse_rfc3339).context("t")?;
                    let Some(tr) = truth.get(&(Vec::new(), t)) else {
                        continue;
                    };
                    for m in ["events", "revenue", "min_amount", "max_amount"] {
                        let (api, want) = (p["values"][m].as_f64(), tr.value(m));
                        let same = match (api, want) {
                            (Some(a), Some(b)) => close(a, b),
                            (a, b) => a == b,
                        };
                        if !same {
                            return Err(anyhow::anyhow!(
                                "{} {m}: api {api:?}, truth {want:?} ({})",
                                format_rfc3339(t),
                                p["source"]
                            ));
                        }
                    }
                    seen += 1;
                }
            }
            anyhow::ensure!(
                seen == truth.len(),
                "{seen} of {} hours answered",
                truth.len()
            );
            Ok(Some(()))
        }
    })
    .await
}

/// The master serving the slot of `view`'s keys, and its pid.
async fn master_of(stack: &SecureStack, view: &str) -> anyhow::Result<(String, u32)> {
    let mut con = RedisClient::new(&stack.cluster("probe"))?.connect().await?;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("{{{view}}}"))
        .query_async(&mut con)
        .await?;
    for port in &stack.cluster_ports {
        let node = format!("127.0.0.1:{port}");
        let Ok(client) = redis::Client::open(format!("redis://{node}/")) else {
            continue;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let Ok(info) = redis::cmd("INFO")
            .arg("server")
            .arg("replication")
            .query_async::<String>(&mut c)
            .await
        else {
            continue;
        };
        if !info.contains("role:master") {
            continue;
        }
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await?;
        let owns = ranges.iter().any(|r| {
            let n = |i: usize| match r.get(i) {
                Some(redis::Value::Int(v)) => *v,
                _ => -1,
            };
            let port_of_master = match r.get(2) {
                Some(redis::Value::Array(a)) => match a.get(1) {
                    Some(redis::Value::Int(p)) => *p,
                    _ => -1,
                },
                _ => -1,
            };
            n(0) <= slot as i64 && slot as i64 <= n(1) && port_of_master == *port as i64
        });
        if owns {
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse().ok())
                .context("process_id")?;
            return Ok((node, pid));
        }
    }
    anyhow::bail!("no live master owns slot {slot} of {view}")
}

/// The masters that hold view keys (`<prefix>:{<view>}:...`) of `prefix`.
async fn masters_with_keys(redis: &RedisConfig, prefix: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (node, mut con) in RedisClient::new(redis)?.masters().await? {
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{prefix}:{{*"))
            .arg("COUNT")
            .arg(100_000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            out.insert(node);
        }
    }
    Ok(out)
}

/// Restarts any cluster node a test killed (`infra/stack.sh up --secure` is idempotent) and
/// waits for the cluster to be whole again.
async fn heal_cluster(stack: &SecureStack) -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/stack.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg("up")
        .arg("--secure")
        .output()
        .await
        .context("infra/stack.sh up --secure")?;
    anyhow::ensure!(
        out.status.success(),
        "infra/stack.sh up --secure failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A node just restarted rejoins as a replica; a failover needs its link to the master up.
    wait_for(
        "every replica to be in sync with its master",
        Duration::from_secs(60),
        || async {
            let (mut masters, mut synced) = (0, 0);
            for port in &stack.cluster_ports {
                let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
                    .get_multiplexed_async_connection()
                    .await?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await?;
                if info.contains("role:master") {
                    masters += 1;
                } else if info.contains("master_link_status:up") {
                    synced += 1;
                }
            }
            Ok((masters == 3 && synced == 3).then_some(()))
        },
    )
    .await
}
