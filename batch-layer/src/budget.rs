//! The memory budget of the view queries: `[batch] memory_limit` and `spill_dir` as a
//! DataFusion runtime (a fair spill pool that names its largest consumers when it runs out,
//! spilling to `spill_dir`), and the session options sized to it. The same budget bounds a
//! Ballista executor ([`crate::ballista`]), split over its task slots.

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;

/// Where and within what a query runs.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Bytes the queries may hold.
    pub memory_limit: u64,
    /// Where they spill (`None`: the OS temporary directory).
    pub spill_dir: Option<String>,
}

impl Budget {
    /// `[batch] memory_limit` and `spill_dir`; an unset limit is half of the machine's memory.
    pub fn from_config(batch: &tributary_shared::config::BatchConfig) -> Budget {
        Budget {
            memory_limit: batch.memory_limit.unwrap_or_else(|| machine_memory() / 2),
            spill_dir: batch.spill_dir.clone(),
        }
    }

    /// The runtime of a session within this budget.
    pub fn runtime(&self) -> Result<Arc<RuntimeEnv>, DataFusionError> {
        let mode = match &self.spill_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    DataFusionError::Execution(format!("batch.spill_dir {dir}: {e}"))
                })?;
                DiskManagerMode::Directories(vec![dir.into()])
            }
            None => DiskManagerMode::OsTmpDirectory,
        };
        // Tracking the largest consumers puts them in an exhaustion error: what the budget
        // was spent on, for the operator who has to size it.
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(self.memory_limit as usize),
            NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
        );
        RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(mode))
            .build_arc()
    }

    /// The limit and the spill directory, as an error names them.
    pub(crate) fn describe(&self) -> (String, String) {
        (
            bytesize::ByteSize::b(self.memory_limit)
                .display()
                .iec()
                .to_string(),
            self.spill_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().display().to_string()),
        )
    }
}

/// Total memory of this machine (from `/proc/meminfo`; 4 GiB where that cannot be read).
fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30)
}

/// The session options every engine shares: batches sized for aggregation within the budget,
/// and the listing table's statistics left unread (each file's footer is read once, by the
/// scan). `budget` is what one task may hold (the whole limit locally; a slot's share of it
/// on a Ballista executor).
pub fn tune_session(config: SessionConfig, partitions: usize, budget: u64) -> SessionConfig {
    let mut config = config
        .with_target_partitions(partitions)
        .with_batch_size(batch_rows(budget));
    let options = config.options_mut();
    options.execution.collect_statistics = false;
    options.execution.parquet.pushdown_filters = true;
    // The sort of the view's rows keeps this much aside, unspillable, for merging its spills
    // (DataFusion's default, 10 MiB, is a sixth of a 64 MiB budget; the rows it sorts are
    // the view's, a small fraction of the date). The merge grows past it only when the pool
    // has room, which the aggregations' fair shares may just have taken: at budget / 64 a
    // merge at 64 MiB once needed 1.15 MiB of its 1 MiB and failed the date, so a sixteenth
    // (4 MiB there, DataFusion's 10 MiB from a 160 MiB budget up).
    options.execution.sort_spill_reservation_bytes =
        (budget / 16).clamp(256 << 10, 10 << 20) as usize;
    config
}

/// Rows per batch within a budget. Each operator must hold one batch at a time whatever its
/// share of the pool, and a batch of the cube's partial states carries whole exact-distinct
/// and quantile states (measured: 13.6 MB for 8,192 rows of the shipped view), so a small
/// budget, split between the aggregations' partitions, takes smaller batches: 2,048 rows at
/// 64 MiB, DataFusion's 8,192 from 256 MiB.
fn batch_rows(budget: u64) -> usize {
    let rows = (budget / (32 << 10)).clamp(1024, 8192);
    // A power of two, as DataFusion's own sizes.
    1 << (63 - rows.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_with_a_small_budget() {
        assert_eq!(batch_rows(64 << 20), 2048);
        assert_eq!(batch_rows(100 << 20), 2048);
        assert_eq!(batch_rows(128 << 20), 4096);
        assert_eq!(batch_rows(2 << 30), 8192);
        assert_eq!(batch_rows(1 << 20), 1024);
    }
}
