//! The speed read takes quantile-sketch hashes with `DUMP` (`speed_layer::read::dump`): the
//! decoder reads what Redis itself dumps, the read answers what `HGETALL` would, and a user
//! whose ACL refuses `DUMP` gets the same answer through `HGETALL`.

use std::collections::BTreeMap;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_it::{hgetall, now_ms, redis, redis_url, test_config, unique};
use tributary_shared::Granularity;
use tributary_shared::layout::RedisKeys;
use tributary_shared::selection::Selection;
use tributary_shared::view::ViewPlan;
use tributary_speed_layer::read::dump::{Entry, hash_pairs};
use tributary_speed_layer::read::{SpeedQuery, read};

/// Hashes of every shape Redis gives ours (small and large listpacks, LZF-compressed or not,
/// integers of every width, a hash table past `hash-max-listpack-entries` or with a long
/// value): `DUMP` decoded equals `HGETALL`.
#[tokio::test]
async fn the_decoder_reads_what_redis_dumps() -> anyhow::Result<()> {
    let mut con = redis().await?;
    let prefix = unique("it-dump");
    let mut rng = StdRng::seed_from_u64(11);
    let counts = [1i64, 127, 128, 4_095, 40_000, 10_000_000, 5_000_000_000];
    let mut encodings = Vec::new();
    for (i, fields) in [1usize, 3, 40, 200, 511, 700].into_iter().enumerate() {
        let key = format!("{prefix}:{i}");
        let mut args: Vec<String> = Vec::new();
        for f in 0..fields {
            let count = counts[rng.random_range(0..counts.len())] + rng.random_range(0..3);
            args.push(format!("p{}", 300 + f as i64 - 20));
            args.push(count.to_string());
        }
        if i == 2 {
            // A value past hash-max-listpack-value (64 bytes) makes a hash table too.
            args.push("note".into());
            args.push("x".repeat(100));
        }
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&args)
            .query_async(&mut con)
            .await?;
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(&mut con)
            .await?;
        encodings.push(encoding);
        let payload: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut con).await?;
        let decoded: BTreeMap<String, String> = hash_pairs(&payload, |f, v| {
            let text = |e: Entry<'_>| match e {
                Entry::Str(s) => String::from_utf8_lossy(s).into_owned(),
                Entry::Int(i) => i.to_string(),
            };
            Some((text(f), text(v)))
        })
        .with_context(|| format!("decode the DUMP of a {fields}-field hash"))?
        .into_iter()
        .collect();
        let truth: BTreeMap<String, String> = hgetall(&mut con, &key).await?.into_iter().collect();
        assert_eq!(decoded, truth, "the {fields}-field hash");
        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut con).await?;
    }
    for want in ["listpack", "hashtable"] {
        assert!(
            encodings.iter().any(|e| e == want),
            "a {want} among {encodings:?}"
        );
    }
    Ok(())
}

/// `calls` of a command in `INFO commandstats`.
async fn calls(con: &mut redis::aio::MultiplexedConnection, command: &str) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await?;
    let line = format!("cmdstat_{command}:calls=");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Minute cells of a few countries through `replay`: the read takes their sketches with
/// `DUMP`; the same read as a user whose ACL refuses `DUMP` answers the same, with `HGETALL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_dump_reads_the_same_quantiles() -> anyhow::Result<()> {
    let prefix = unique("it-dumpread");
    let views = r#"
[fields]
country = "string"
latency_ms = "float"

[[views]]
name = "lat"
dimensions = ["country"]
granularities = ["minute"]
measures = [{ name = "p90", agg = "quantile", field = "latency_ms", q = 0.9 }]
"#;
    let text = format!("[speed]\nallowed_lateness = \"48h\"\n{views}");
    let config = test_config("dump-read-test", &prefix, &text)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.jsonl");
    let start = Granularity::Minute.floor(now_ms() - 3_600_000);
    let mut rng = StdRng::seed_from_u64(5);
    let mut lines = String::new();
    for i in 0..20_000i64 {
        let latency = (rng.random_range(0.0f64..1.0).powi(3) * 9_000.0 + 1.0).round();
        lines.push_str(&format!(
            "{{\"event_id\":\"d{i}\",\"event_time\":{},\"type\":\"req\",\"country\":\"c{}\",\"latency_ms\":{latency}}}\n",
            start + (i * 997) % (20 * 60_000),
            i % 7
        ));
    }
    std::fs::write(&file, lines)?;
    let summary = tributary_speed_layer::replay::replay(&config, &file, None).await?;
    assert_eq!(summary.applied, 20_000);

    let schema = tributary_shared::event::EventSchema::from_config(&config);
    let plan = ViewPlan::compile_all(&config, &schema)?
        .into_iter()
        .find(|p| p.name == "lat")
        .context("the view's plan")?;
    let keys = RedisKeys::new(prefix.clone());
    let q = SpeedQuery {
        granularity: Granularity::Minute,
        buckets: (0..20).map(|m| start + m * 60_000).collect(),
        selection: Selection {
            group_by: vec![0],
            measures: vec![0],
            ..Selection::default()
        },
        epoch: None,
        max_groups: 100,
    };

    let mut admin = redis().await?;
    let dumps = calls(&mut admin, "dump").await?;
    let with_dump = read(&mut admin.clone(), &keys, &plan, &q).await?;
    let cells = 20 * 7;
    assert!(
        calls(&mut admin, "dump").await? >= dumps + cells,
        "the read took the {cells} cells' sketches with DUMP"
    );
    assert_eq!(with_dump.len(), 7, "seven countries");
    assert!(
        with_dump.values().all(|points| points.len() == 20),
        "every minute of every country"
    );

    // A user that may read everything but DUMP.
    let (user, password) = (unique("it-nodump"), unique("pw"));
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .arg("-dump")
        .query_async(&mut admin)
        .await?;
    let url = redis_url().replacen("redis://", &format!("redis://{user}:{password}@"), 1);
    let mut restricted = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
        .context("connect as the user without DUMP")?;
    let hgetalls = calls(&mut admin, "hgetall").await?;
    let without_dump = read(&mut restricted, &keys, &plan, &q).await;
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await?;
    assert_eq!(without_dump?, with_dump, "the same answer through HGETALL");
    assert!(
        calls(&mut admin, "hgetall").await? >= hgetalls + cells,
        "the refused read took the sketches with HGETALL"
    );
    Ok(())
}
