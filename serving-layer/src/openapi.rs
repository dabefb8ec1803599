//! The OpenAPI document this server serves, built once from its own configuration so that a
//! generated client or a fuzzer agrees with what the handlers accept:
//!
//! - one path per configured view (`/v1/views/checkouts/series`, ...), since which measure,
//!   dimension and granularity names a query may use depends on the view: per view they are
//!   enums, which one templated `{view}` path could not say;
//! - the bearer scheme, the operations' security and their 401 only when `serving.api_keys`
//!   is set (an open server declaring keys would be wrong about every answer);
//! - every view operation's 400 and 404 with the error body;
//! - the rules between parameters that JSON Schema cannot state (from before to, the bucket,
//!   filter-value and history limits) in each operation's description, and the limits
//!   themselves in `x-tributary-limits`.

use serde_json::json;
use tributary_shared::Config;
use tributary_shared::view::ViewPlan;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, ParameterStyle};
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};

use crate::access::BearerSecurity;
use crate::api::ApiDoc;
use crate::query::MAX_K;

/// The path every view's operations are written under in the handlers' annotations.
const VIEW_PATH: &str = "/v1/views/{view}";

/// The document for `config`'s views (`views`, as compiled), serialized once at start.
pub fn document(config: &Config, views: &[ViewPlan], keys_required: bool) -> String {
    let mut doc = ApiDoc::openapi();
    let templated: Vec<_> = doc
        .paths
        .paths
        .keys()
        .filter(|p| p.starts_with(VIEW_PATH))
        .cloned()
        .collect();
    for path in templated {
        let Some(item) = doc.paths.paths.remove(&path) else {
            continue;
        };
        for view in views {
            let mut item = item.clone();
            if let Some(op) = item.get.as_mut() {
                specialise(op, view, config);
            }
            doc.paths
                .paths
                .insert(path.replace("{view}", &view.name), item);
        }
    }
    if keys_required {
        BearerSecurity.modify(&mut doc);
    }
    doc.extensions = Some(
        ExtensionsBuilder::new()
            .add(
                "x-tributary-limits",
                json!({
                    "max_buckets": config.serving.max_buckets,
                    "max_groups": config.serving.max_groups,
                    "max_filter_values": config.serving.max_filter_values,
                    "history_retention_seconds": config.batch.history_retention.as_secs(),
                }),
            )
            .build(),
    );
    // Serializing a document of strings and numbers cannot fail; an empty body would be
    // noticed by any client at once.
    serde_json::to_string(&doc).unwrap_or_default()
}

/// One view's copy of an operation: no `view` parameter, its names as enums, its errors.
fn specialise(op: &mut Operation, view: &ViewPlan, config: &Config) {
    let base = op.operation_id.clone().unwrap_or_default();
    op.operation_id = Some(format!("{base}_{}", view.name));
    let measures: Vec<&str> = view.measures.iter().map(|m| m.name.as_str()).collect();
    let dimensions: Vec<&str> = view.dimensions.iter().map(|d| d.name.as_str()).collect();
    let granularities: Vec<&str> = view.granularities.iter().map(|g| g.as_str()).collect();
    let params = op.parameters.get_or_insert_with(Vec::new);
    params.retain(|p| p.name != "view");
    for p in params.iter_mut() {
        let schema: RefOr<Schema> = match p.name.as_str() {
            "measures" => comma_list(&measures),
            "group_by" => comma_list(&dimensions),
            "granularity" => names(&granularities),
            "dimension" => names(&dimensions),
            "measure" => names(&measures),
            "from" | "to" | "as_of" => time(),
            "filter" => filter(&dimensions),
            "k" => ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_K as u64))
                .build()
                .into(),
            "exact" => ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .build()
                .into(),
            _ => continue,
        };
        p.schema = Some(schema);
        match p.name.as_str() {
            "measures" | "group_by" => {
                p.style = Some(ParameterStyle::Form);
                p.explode = Some(false);
            }
            "filter" => {
                p.style = Some(ParameterStyle::Form);
                p.explode = Some(true);
            }
            "dimension" | "measure" => p.required = Required::True,
            _ => {}
        }
    }
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let rules = rules(&base, config);
    if !rules.is_empty() {
        let text = op.description.take().unwrap_or_default();
        op.description = Some(format!("{text}\n\n{rules}").trim().to_string());
    }
    if has_params {
        op.responses.responses.insert(
            "400".into(),
            error_response("A parameter the view does not accept; `error.parameter` names it")
                .into(),
        );
    }
    op.responses.responses.insert(
        "404".into(),
        error_response(
            "No such view on this server (a client generated from another configuration)",
        )
        .into(),
    );
}

/// A response with the error body.
pub(crate) fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// One of `names`.
fn names(names: &[&str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names.to_vec()))
        .build()
        .into()
}

/// A comma-separated list of `names` (`a,b`), not empty (leave it out for the default); a
/// name twice counts once.
fn comma_list(of: &[&str]) -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(names(of))
        .min_items(Some(1))
        .build()
        .into()
}

/// RFC 3339 date-time or full-date; times past the calendar events can have are clamped to
/// it (1970-01-01 ..= 9999-12-31).
fn time() -> RefOr<Schema> {
    let of = |f: KnownFormat| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(f)))
            .build()
    };
    RefOr::T(Schema::AnyOf(
        AnyOfBuilder::new()
            .item(of(KnownFormat::DateTime))
            .item(of(KnownFormat::Date))
            .build(),
    ))
}

/// `dimension:value` or `dimension:v1|v2`, repeatable, one per dimension.
fn filter(dimensions: &[&str]) -> RefOr<Schema> {
    let alternatives: Vec<String> = dimensions.iter().map(|d| regex::escape(d)).collect();
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^(?:{}):", alternatives.join("|"))))
        .build();
    ArrayBuilder::new().items(item).build().into()
}

/// What an operation's parameters must satisfy together, in words.
fn rules(operation: &str, config: &Config) -> String {
    let s = &config.serving;
    let retention = humantime::format_duration(config.batch.history_retention);
    let range = format!(
        "`from` must be before `to`; at most {} buckets between them (`serving.max_buckets`).",
        s.max_buckets
    );
    let filters = format!(
        "A dimension is filtered once; at most {} filter values in all (`serving.max_filter_values`).",
        s.max_filter_values
    );
    let as_of = format!(
        "`as_of` lies within the last {retention} (`batch.history_retention`). An answer has at most {} groups (`serving.max_groups`).",
        s.max_groups
    );
    match operation {
        "series" => format!(
            "{range} {filters} {as_of} With `exact=true`, distinct counts and quantiles take one value per filter."
        ),
        "top" => format!(
            "{range} {filters} {as_of} With `exact=true`, a distinct count or quantile ranks one bucket only."
        ),
        "accuracy" => range,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tributary_shared::EventSchema;

    fn doc(keys: bool) -> Value {
        let config = Config::from_toml_str_with_env(
            include_str!("../../infra/tributary.toml"),
            "t",
            Vec::new(),
        )
        .unwrap_or_default();
        let views =
            ViewPlan::compile_all(&config, &EventSchema::from_config(&config)).unwrap_or_default();
        serde_json::from_str(&document(&config, &views, keys)).unwrap_or_default()
    }

    #[test]
    fn one_path_per_view_with_its_names() {
        let doc = doc(false);
        assert!(doc["paths"]["/v1/views/{view}/series"].is_null());
        let op = &doc["paths"]["/v1/views/checkouts/series"]["get"];
        assert_eq!(op["operationId"], "series_checkouts", "{op}");
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let param = |name: &str| {
            params
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or_default()
        };
        assert!(params.iter().all(|p| p["name"] != "view"));
        let measures = param("measures");
        assert_eq!(measures["explode"], false, "{measures}");
        assert!(
            measures["schema"]["items"]["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&Value::from("events"))),
            "{measures}"
        );
        assert_eq!(
            param("granularity")["schema"]["enum"],
            serde_json::json!(["minute", "hour", "day"])
        );
        assert_eq!(
            op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(
            op["description"]
                .as_str()
                .is_some_and(|d| d.contains("serving.max_buckets")),
            "{op}"
        );
        assert_eq!(
            doc["x-tributary-limits"]["max_buckets"],
            Value::from(10_000)
        );
    }

    #[test]
    fn the_bearer_scheme_only_with_keys() {
        let open = doc(false);
        assert!(open["components"]["securitySchemes"].is_null(), "{open}");
        assert!(open["paths"]["/v1/status"]["get"]["security"].is_null());
        let keyed = doc(true);
        assert_eq!(
            keyed["paths"]["/v1/views/checkouts/top"]["get"]["security"],
            serde_json::json!([{"bearer": []}])
        );
        assert!(keyed["paths"]["/healthz"]["get"]["security"].is_null());
    }
}
