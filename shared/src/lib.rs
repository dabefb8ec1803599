//! Tributary's shared contracts: what the speed, batch and serving layers must agree on.
//!
//! - [`event`]: parsing and validating events;
//! - [`config`]: `tributary.toml`, its layered loader and validation;
//! - [`view`]: views compiled into plans;
//! - [`selection`]: a query's filters, grouping and measures, applied the same by both readers;
//! - [`bucket`]: UTC time buckets and the times operators write;
//! - [`layout`]: Redis keys and object-store paths;
//! - [`sketch`]: the quantile sketch both sides merge;
//! - [`hll`]: HyperLogLog in Redis's own encodings;
//! - [`series`]: the per-bucket answer both layers give;
//! - [`store`]: object stores from URLs (local directory with fsync and compare-and-swap, S3);
//! - [`kafka`]: client settings (SASL, TLS), topics, end offsets and the consumer-group watchdog;
//! - [`redis_client`]: Redis as `[redis]` says (TLS, ACL user, Cluster), one connection type;
//! - [`cli`], [`telemetry`], [`metrics_http`]: what every binary starts with;
//! - [`secret`]: credentials that never print.

pub mod bucket;
pub mod cli;
pub mod config;
pub mod event;
pub mod hll;
pub mod kafka;
pub mod layout;
pub mod metrics_http;
pub mod redis_client;
pub mod secret;
pub mod selection;
pub mod series;
pub mod sketch;
pub mod store;
pub mod telemetry;
pub mod view;

pub use bucket::Granularity;
pub use config::Config;
pub use event::{Event, EventError, EventSchema};
pub use view::ViewPlan;
