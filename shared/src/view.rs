//! Views compiled to a plan both layers execute the same way: filter, dimensions, measures.

use crate::bucket::Granularity;
use crate::config::{AggKind, Config, FieldType, ViewConfig};
use crate::event::{Event, EventSchema, Value};

/// Where a view reads a field from: the event's `type` or a declared field by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRef {
    Type,
    Declared(usize),
}

/// An equality filter of `where`.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// A compiled measure.
#[derive(Debug, Clone)]
pub struct Measure {
    pub name: String,
    pub agg: AggKind,
    /// Name of the input field (`None` for `count`).
    pub field_name: Option<String>,
    pub field: Option<FieldRef>,
    pub field_type: Option<FieldType>,
    /// Quantile rank, for `quantile`.
    pub q: Option<f64>,
}

/// A compiled dimension.
#[derive(Debug, Clone)]
pub struct Dimension {
    pub name: String,
    pub field: FieldRef,
    pub field_type: FieldType,
}

/// A view ready to run.
#[derive(Debug, Clone)]
pub struct ViewPlan {
    pub name: String,
    pub filters: Vec<(String, FieldRef, FilterValue)>,
    pub dimensions: Vec<Dimension>,
    pub granularities: Vec<Granularity>,
    pub measures: Vec<Measure>,
}

/// A view refers to a field the schema does not have; `Config::validate` prevents this.
#[derive(Debug, thiserror::Error)]
#[error("view {view:?}: unknown field {field:?}")]
pub struct PlanError {
    pub view: String,
    pub field: String,
}

impl ViewPlan {
    /// Compiles every view of a validated config.
    pub fn compile_all(config: &Config, schema: &EventSchema) -> Result<Vec<ViewPlan>, PlanError> {
        config
            .views
            .iter()
            .map(|v| ViewPlan::compile(config, schema, v))
            .collect()
    }

    pub fn compile(
        config: &Config,
        schema: &EventSchema,
        view: &ViewConfig,
    ) -> Result<ViewPlan, PlanError> {
        let resolve = |name: &str| -> Result<(FieldRef, FieldType), PlanError> {
            let err = || PlanError {
                view: view.name.clone(),
                field: name.to_string(),
            };
            if name == "type" {
                return Ok((FieldRef::Type, FieldType::String));
            }
            let idx = schema.index_of(name).ok_or_else(err)?;
            let ty = config.fields.get(name).copied().ok_or_else(err)?;
            Ok((FieldRef::Declared(idx), ty))
        };
        let mut filters = Vec::new();
        for (name, value) in &view.filter {
            let (field, _) = resolve(name)?;
            let value = match value {
                toml::Value::String(s) => FilterValue::Str(s.clone()),
                toml::Value::Integer(i) => FilterValue::Num(*i as f64),
                toml::Value::Float(f) => FilterValue::Num(*f),
                toml::Value::Boolean(b) => FilterValue::Bool(*b),
                _ => {
                    return Err(PlanError {
                        view: view.name.clone(),
                        field: name.clone(),
                    });
                }
            };
            filters.push((name.clone(), field, value));
        }
        let dimensions = view
            .dimensions
            .iter()
            .map(|d| {
                resolve(d).map(|(field, field_type)| Dimension {
                    name: d.clone(),
                    field,
                    field_type,
                })
            })
            .collect::<Result<_, _>>()?;
        let measures = view
            .measures
            .iter()
            .map(|m| {
                let (field, field_type) = match &m.field {
                    Some(f) => {
                        let (r, t) = resolve(f)?;
                        (Some(r), Some(t))
                    }
                    None => (None, None),
                };
                Ok(Measure {
                    name: m.name.clone(),
                    agg: m.agg,
                    field_name: m.field.clone(),
                    field,
                    field_type,
                    q: m.q,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ViewPlan {
            name: view.name.clone(),
            filters,
            dimensions,
            granularities: view.granularities.clone(),
            measures,
        })
    }

    /// Does the event pass the view's `where`? A filter on an absent field does not match.
    pub fn matches(&self, event: &Event<'_>) -> bool {
        self.filters.iter().all(
            |(_, field, want)| match (field_value(event, *field), want) {
                (Some(FieldView::Type(t)), FilterValue::Str(w)) => t == w,
                (Some(FieldView::Value(Value::Str(s))), FilterValue::Str(w)) => s == w,
                (Some(FieldView::Value(v)), FilterValue::Num(w)) => v.as_f64() == Some(*w),
                (Some(FieldView::Value(Value::Bool(b))), FilterValue::Bool(w)) => b == w,
                _ => false,
            },
        )
    }

    /// Appends the text of dimension `i` to `out`; returns false (and appends nothing) when the
    /// event lacks it, which groups it under null.
    pub fn write_dimension(&self, i: usize, event: &Event<'_>, out: &mut String) -> bool {
        self.dimensions
            .get(i)
            .is_some_and(|d| write_field_text(event, d.field, out))
    }

    pub fn measure(&self, name: &str) -> Option<&Measure> {
        self.measures.iter().find(|m| m.name == name)
    }

    pub fn dimension_index(&self, name: &str) -> Option<usize> {
        self.dimensions.iter().position(|d| d.name == name)
    }
}

/// A field as a number, for numeric measures (`None` when absent or not numeric).
pub fn field_f64(event: &Event<'_>, field: FieldRef) -> Option<f64> {
    match field_value(event, field)? {
        FieldView::Value(v) => v.as_f64(),
        FieldView::Type(_) => None,
    }
}

/// Appends a field's canonical text (dimensions, distinct counting); false when absent.
pub fn write_field_text(event: &Event<'_>, field: FieldRef, out: &mut String) -> bool {
    match field_value(event, field) {
        Some(FieldView::Type(t)) => {
            out.push_str(t);
            true
        }
        Some(FieldView::Value(v)) => {
            v.write_text(out);
            true
        }
        None => false,
    }
}

enum FieldView<'e, 'a> {
    Type(&'e str),
    Value(&'e Value<'a>),
}

fn field_value<'e, 'a>(event: &'e Event<'a>, field: FieldRef) -> Option<FieldView<'e, 'a>> {
    match field {
        FieldRef::Type => Some(FieldView::Type(&event.event_type)),
        FieldRef::Declared(i) => event.fields.get(i)?.as_ref().map(FieldView::Value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[fields]
country = "string"
amount = "float"
items = "int"

[[views]]
name = "checkouts"
where = { type = "checkout", items = 2 }
dimensions = ["country", "type"]
granularities = ["minute"]
measures = [{ name = "events", agg = "count" }, { name = "revenue", agg = "sum", field = "amount" },
            { name = "countries", agg = "count_distinct", field = "country" }]
"#;

    #[test]
    fn plan_filters_extracts_dimensions_and_inputs() {
        let config = Config::from_toml_str_with_env(CONFIG, "test", Vec::new()).expect("valid");
        let schema = EventSchema::from_config(&config);
        let plans = ViewPlan::compile_all(&config, &schema).expect("plan");
        let plan = &plans[0];
        let hit = schema
            .parse(br#"{"event_id":"a","event_time":0,"type":"checkout","items":2,"country":"DE","amount":3.5}"#)
            .expect("valid");
        let miss_type = schema
            .parse(br#"{"event_id":"b","event_time":0,"type":"view","items":2}"#)
            .expect("valid");
        let miss_absent = schema
            .parse(br#"{"event_id":"c","event_time":0,"type":"checkout"}"#)
            .expect("valid");
        assert!(plan.matches(&hit));
        assert!(!plan.matches(&miss_type));
        assert!(!plan.matches(&miss_absent));

        let mut out = String::new();
        assert!(plan.write_dimension(0, &hit, &mut out));
        assert!(plan.write_dimension(1, &hit, &mut out));
        assert_eq!(out, "DEcheckout");
        assert!(!plan.write_dimension(0, &miss_absent, &mut String::new()));

        let revenue = plan
            .measure("revenue")
            .and_then(|m| m.field)
            .expect("measure");
        assert_eq!(field_f64(&hit, revenue), Some(3.5));
        assert_eq!(field_f64(&miss_absent, revenue), None);
        let countries = plan
            .measure("countries")
            .and_then(|m| m.field)
            .expect("measure");
        let mut out = String::new();
        assert!(write_field_text(&hit, countries, &mut out));
        assert_eq!(out, "DE");
        assert_eq!(plan.dimension_index("type"), Some(1));
    }
}
