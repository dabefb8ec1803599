"""The peer of `batch-layer run` in the benchmark: DuckDB computing the same view over the same
Parquet files (the `checkouts` view of infra/tributary.toml: deduplicated by event_id,
type = 'checkout', count / sum / max / exact count distinct / exact quantile_cont, every
grouping set of (country, device), at minute, hour and day). Prints its wall time (s).
With MEMORY_LIMIT (e.g. 2GB) DuckDB runs within it, spilling to TEMP_DIR: the peer of
`batch-layer run` with `batch.memory_limit`.

usage: duckdb_views.py STORE_DIR TOPIC DATE [MEMORY_LIMIT TEMP_DIR]
"""
import sys
import time

import duckdb

store, topic, date = sys.argv[1:4]
files = f"{store}/master/{topic}/date={date}/hour=*/*.parquet"
started = time.time()
con = duckdb.connect()
if len(sys.argv) > 4:
    con.execute(f"SET memory_limit = '{sys.argv[4]}'")
    con.execute(f"SET temp_directory = '{sys.argv[5]}'")
con.execute(f"""
CREATE TABLE events AS
SELECT min(epoch_ms(event_time)) AS ts, min(country) AS country, min(device) AS device,
       min(user_id) AS user_id, min(amount) AS amount, min(latency_ms) AS latency_ms
FROM read_parquet('{files}')
WHERE type = 'checkout'
GROUP BY event_id
""")
rows = 0
for name, ms in (("minute", 60_000), ("hour", 3_600_000), ("day", 86_400_000)):
    con.execute(f"""
    CREATE TABLE view_{name} AS
    SELECT ts - ts % {ms} AS t, country, device,
           count(*) AS events, sum(amount) AS revenue, max(amount) AS max_amount,
           count(DISTINCT user_id) AS buyers, quantile_cont(latency_ms, 0.95) AS p95_latency
    FROM events
    GROUP BY GROUPING SETS ((t, country, device), (t, country), (t, device), (t))
    """)
    rows += con.execute(f"SELECT count(*) FROM view_{name}").fetchone()[0]
print(f"{time.time() - started:.3f} {rows}")
