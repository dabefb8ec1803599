//! The serving layer: REST API merging the batch views and the speed layer's Redis aggregates.
//!
//! Not built yet: tracked by the serving-layer issue. The CLI and config contract are in place.

use tributary_shared::Config;

/// Refuses clearly instead of pretending to work.
pub fn not_built_yet(config: &Config) -> anyhow::Result<()> {
    anyhow::bail!(
        "serving-layer serve is not implemented yet (would listen on {}); see the serving-layer issue",
        config.serving.listen
    )
}
