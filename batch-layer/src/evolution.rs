//! Schema evolution: what a change of `[fields]` does to views already computed.
//!
//! Adding a field (and a measure or dimension on it) needs nothing here: the master files
//! archived before it have no such column and the scan reads it as null ([`crate::compute`]).
//! Changing a declared field's type would mix two meanings of one column in one view (old
//! dates computed from floats, new ones from text, say), so it is refused at start, naming the
//! field and the views: each manifest records the types its view was computed with. A renamed
//! view starts afresh under the new type.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::ObjectStore;
use tributary_shared::config::FieldType;
use tributary_shared::view::{FieldRef, ViewPlan};
use tributary_shared::{Config, EventSchema};

use crate::manifest::{Manifest, ManifestError};
use crate::sql::input_columns;

/// The declared fields a view reads (dimensions, measure fields, filters) with their types.
pub fn view_fields(config: &Config, view: &ViewPlan) -> BTreeMap<String, FieldType> {
    let mut names = input_columns(view);
    for (name, field, _) in &view.filters {
        if matches!(field, FieldRef::Declared(_)) {
            names.push(name.clone());
        }
    }
    names
        .into_iter()
        .filter_map(|n| config.fields.get(&n).map(|t| (n, *t)))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum EvolutionError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Refuses a config under which a field some view was computed with has another type now.
pub async fn check_field_types(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
) -> Result<(), EvolutionError> {
    let schema = EventSchema::from_config(config);
    let plans = ViewPlan::compile_all(config, &schema)
        .map_err(|e| EvolutionError::Refused(e.to_string()))?;
    // field → (was, now, views)
    let mut changed: BTreeMap<String, (FieldType, FieldType, Vec<String>)> = BTreeMap::new();
    for plan in &plans {
        // A manifest that cannot be read fails its own view in the run, not every view here.
        let manifest = match Manifest::load(store, &plan.name).await {
            Ok(Some((m, _))) => m,
            Ok(None) => continue,
            Err(ManifestError::Corrupt { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let now = view_fields(config, plan);
        for (field, was) in &manifest.fields {
            if let Some(is) = now.get(field)
                && is != was
            {
                changed
                    .entry(field.clone())
                    .or_insert_with(|| (*was, *is, Vec::new()))
                    .2
                    .push(plan.name.clone());
            }
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = changed
        .iter()
        .map(|(field, (was, is, views))| {
            format!(
                "fields.{field} changed type from {was} to {is} but views {} were computed with {was}",
                views.join(", ")
            )
        })
        .collect();
    Err(EvolutionError::Refused(format!(
        "{}; restore the type, or rename those views (a renamed view is computed afresh)",
        parts.join("; ")
    )))
}
