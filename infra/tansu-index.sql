-- Tansu 0.6's SQLite schema has no index on record headers: every record a fetch returns
-- looks its headers up with a scan of the whole `header` table, so once a topic holds many
-- records with headers (dead letters carry three or four) every fetch of every topic slows down in
-- proportion, and a burst of 100,000 dead letters starves the broker (heartbeats and
-- metadata time out). Tansu's own DDL is `create ... if not exists`, so this index lives
-- beside it. Run by infra/stack.sh and by the fault suite's own brokers after each start.
.timeout 10000
CREATE INDEX IF NOT EXISTS tributary_header_record ON header (topition, offset_id);
