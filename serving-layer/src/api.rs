//! The REST API: routes, handlers and their OpenAPI description (generated from the handlers'
//! annotations and response types by utoipa, made per view by [`crate::openapi`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tower_http::cors::CorsLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::{OpenApi, ToSchema};

use crate::accuracy::{AccuracyBucket, AccuracyResponse, AccuracySummary, MeasureAccuracy};
use crate::error::{ApiError, ErrorBody};
use crate::metrics::ServingMetrics;
use crate::query::{AccuracyParams, Limits, SeriesParams, TopParams, pairs};
use crate::response::{SeriesResponse, TopResponse};
use crate::sources::Sources;
use crate::status::StatusResponse;
use tributary_shared::bucket::format_rfc3339;

pub struct App {
    /// `serving.api_keys`, checked by [`crate::access::require_key`].
    pub keys: crate::access::ApiKeys,
    /// This server's OpenAPI document ([`crate::openapi::document`]), serialized.
    pub openapi: String,
    pub sources: Sources,
    pub metrics: ServingMetrics,
}

type AppState = Arc<App>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tributary serving layer",
        description = "Merged batch (exact, up to the horizon) and speed (fresh) views of the event stream."
    ),
    paths(
        list_views, get_view, series, top, accuracy, status, healthz, readyz, metrics
    ),
    components(schemas(
        ErrorBody,
        ViewList,
        ViewInfo,
        VersionInfo,
        MeasureInfo,
        BatchInfo,
        SeriesResponse,
        TopResponse,
        AccuracyResponse,
        AccuracyBucket,
        MeasureAccuracy,
        AccuracySummary,
        StatusResponse,
        Health
    ))
)]
pub struct ApiDoc;

/// The routes with their middleware; `cors` from [`crate::access::cors_layer`] (none: no
/// `Access-Control-*` headers).
pub fn router(app: AppState, cors: Option<CorsLayer>) -> axum::Router {
    let timeout = app.sources.config.serving.request_timeout;
    let router = axum::Router::new()
        .route("/", get(dashboard))
        .route("/v1/views", get(list_views))
        .route("/v1/views/{view}", get(get_view))
        .route("/v1/views/{view}/series", get(series))
        .route("/v1/views/{view}/top", get(top))
        .route("/v1/views/{view}/accuracy", get(accuracy))
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        // Inside `observe`, so 401s are counted and timed like any answer.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::access::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ));
    // Outermost, so a browser's preflight (which carries no key) is answered before the key
    // check.
    match cors {
        Some(cors) => router.layer(cors).with_state(app),
        None => router.with_state(app),
    }
}

/// Request counts and latency per route, and one log line per request.
async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    app.metrics.observe(&route, res.status().as_u16(), secs);
    tracing::debug!(%method, %uri, status = res.status().as_u16(), ms = secs * 1000.0, "request");
    res
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn view<'a>(app: &'a App, name: &str) -> Result<&'a tributary_shared::ViewPlan, ApiError> {
    app.sources
        .view(name)
        .ok_or_else(|| ApiError::unknown_view(name, &app.sources.view_names()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeasureInfo {
    pub name: String,
    pub agg: String,
    pub field: Option<String>,
    pub q: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchInfo {
    pub horizon: Option<String>,
    pub manifest_version: u64,
    /// The instant this version counts from for `as_of`.
    pub landed_at: Option<String>,
    pub run_id: String,
    pub computed_at: String,
    pub dates: Vec<String>,
}

/// A manifest version `as_of` can name.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub version: u64,
    /// From this instant until the next version's, `as_of` answers from this version.
    pub landed_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ViewInfo {
    pub name: String,
    /// The view's `where`: equality filters on fields.
    #[schema(value_type = Object)]
    pub r#where: BTreeMap<String, serde_json::Value>,
    pub dimensions: Vec<String>,
    pub granularities: Vec<String>,
    pub measures: Vec<MeasureInfo>,
    /// The batch view's current manifest (absent before the first batch run).
    pub batch: Option<BatchInfo>,
    /// The manifest versions `as_of` can name, oldest first (`GET /v1/views/{view}` only).
    pub versions: Option<Vec<VersionInfo>>,
    /// The oldest instant `as_of` accepts (now − `batch.history_retention`).
    pub as_of_from: Option<String>,
}

/// The versions an `as_of` query can name now: those that landed within the retention, and
/// the one current at its start.
async fn versions(app: &App, name: &str, batch: Option<&BatchInfo>) -> Vec<VersionInfo> {
    let retention = app.sources.config.batch.history_retention.as_millis() as i64;
    let cutoff = now_ms() - retention;
    let entries = app
        .sources
        .batch
        .history(name, None)
        .await
        .unwrap_or_default();
    let at_cutoff = tributary_batch_layer::history::current_at(&entries, cutoff);
    let mut out: Vec<VersionInfo> = entries
        .iter()
        .filter(|e| e.landed_ms >= cutoff || Some(*e) == at_cutoff)
        .map(|e| VersionInfo {
            version: e.version,
            landed_at: format_rfc3339(e.landed_ms),
        })
        .collect();
    // The current version, should its history entry be missing.
    if let Some(b) = batch
        && let Some(landed_at) = &b.landed_at
        && out.last().is_none_or(|v| v.version < b.manifest_version)
    {
        out.push(VersionInfo {
            version: b.manifest_version,
            landed_at: landed_at.clone(),
        });
    }
    out
}

async fn view_info(app: &App, name: &str, with_batch: bool) -> ViewInfo {
    let cfg = app.sources.config.view(name);
    let batch = if with_batch {
        app.sources
            .batch
            .manifest(name)
            .await
            .ok()
            .flatten()
            .map(|m| BatchInfo {
                horizon: m.horizon.clone(),
                manifest_version: m.version,
                landed_at: m.landed_ms.map(format_rfc3339),
                run_id: m.run_id.clone(),
                computed_at: m.computed_at.clone(),
                dates: m.dates.keys().cloned().collect(),
            })
    } else {
        None
    };
    ViewInfo {
        name: name.to_string(),
        r#where: cfg
            .map(|c| {
                c.filter
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        dimensions: cfg.map(|c| c.dimensions.clone()).unwrap_or_default(),
        granularities: cfg
            .map(|c| c.granularities.iter().map(|g| g.to_string()).collect())
            .unwrap_or_default(),
        measures: cfg
            .map(|c| {
                c.measures
                    .iter()
                    .map(|m| MeasureInfo {
                        name: m.name.clone(),
                        agg: m.agg.as_str().into(),
                        field: m.field.clone(),
                        q: m.q,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        batch,
        versions: None,
        as_of_from: None,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ViewList {
    pub views: Vec<ViewInfo>,
}

/// The configured views.
#[utoipa::path(get, path = "/v1/views", responses((status = 200, body = ViewList)))]
async fn list_views(State(app): State<AppState>) -> Json<ViewList> {
    let mut views = Vec::new();
    for v in app.sources.view_names() {
        views.push(view_info(&app, &v, true).await);
    }
    Json(ViewList { views })
}

/// One view: dimensions, granularities, measures and its batch manifest.
#[utoipa::path(get, path = "/v1/views/{view}",
    params(("view" = String, Path, description = "View name")),
    responses((status = 200, body = ViewInfo), (status = 404, body = ErrorBody)))]
async fn get_view(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ViewInfo>, ApiError> {
    view(&app, &name)?;
    let mut info = view_info(&app, &name, true).await;
    info.versions = Some(versions(&app, &name, info.batch.as_ref()).await);
    let retention = app.sources.config.batch.history_retention.as_millis() as i64;
    info.as_of_from = Some(format_rfc3339((now_ms() - retention).max(0)));
    Ok(Json(info))
}

/// Time series of measures per bucket (and group), batch before the horizon, speed after.
#[utoipa::path(get, path = "/v1/views/{view}/series",
    params(
        ("view" = String, Path, description = "View name"),
        ("measures" = Option<String>, Query, description = "Comma-separated measure names (default: all)"),
        ("from" = Option<String>, Query, description = "Start, RFC 3339 (default: to - 24h)"),
        ("to" = Option<String>, Query, description = "End (exclusive), RFC 3339 (default: now)"),
        ("granularity" = Option<String>, Query, description = "minute, hour or day (default: the view's first)"),
        ("group_by" = Option<String>, Query, description = "Comma-separated dimensions"),
        ("filter" = Option<Vec<String>>, Query, description = "Repeatable `dim:value` or `dim:v1|v2`"),
        ("exact" = Option<bool>, Query, description = "Exact answers only: buckets the batch has not settled come back `pending`, without values"),
        ("as_of" = Option<String>, Query, description = "The answer as the batch views stood at this instant (RFC 3339; within batch.history_retention, not in the future); no speed part; `from`/`to` default to the 24 hours before it"),
    ),
    responses((status = 200, body = SeriesResponse), (status = 400, body = ErrorBody)))]
async fn series(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let plan = view(&app, &name)?;
    let now = now_ms();
    let params = SeriesParams::parse(
        plan,
        &pairs(raw.as_deref()),
        now,
        Limits::of(&app.sources.config),
    )?;
    let out = crate::merge::series(&app.sources, plan, &params, now).await?;
    app.metrics.series_answer(out.is_kept());
    if out.is_partial() {
        app.metrics.partial_answers.inc();
    }
    Ok(out.respond(&headers))
}

/// The top `k` values of a dimension by a measure over a range.
#[utoipa::path(get, path = "/v1/views/{view}/top",
    params(
        ("view" = String, Path, description = "View name"),
        ("dimension" = String, Query, description = "Dimension to rank"),
        ("measure" = String, Query, description = "Measure to rank by"),
        ("k" = Option<usize>, Query, description = "How many (1..1000, default 10)"),
        ("from" = Option<String>, Query, description = "Start, RFC 3339 (default: to - 24h)"),
        ("to" = Option<String>, Query, description = "End (exclusive), RFC 3339 (default: now)"),
        ("filter" = Option<Vec<String>>, Query, description = "Repeatable `dim:value` or `dim:v1|v2`"),
        ("exact" = Option<bool>, Query, description = "Only settled (batch) buckets; `covered` says which range the rows cover"),
        ("as_of" = Option<String>, Query, description = "The answer as the batch views stood at this instant (RFC 3339; within batch.history_retention, not in the future)"),
    ),
    responses((status = 200, body = TopResponse), (status = 400, body = ErrorBody)))]
async fn top(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<TopResponse>, ApiError> {
    let plan = view(&app, &name)?;
    let now = now_ms();
    let params = TopParams::parse(
        plan,
        &pairs(raw.as_deref()),
        now,
        Limits::of(&app.sources.config),
    )?;
    Ok(Json(
        crate::merge::top(&app.sources, plan, &params, now).await?,
    ))
}

/// The speed accuracy ledger: per bucket the batch settled, the speed layer's value next to
/// the batch's exact one and their errors, with a summary per measure.
#[utoipa::path(get, path = "/v1/views/{view}/accuracy",
    params(
        ("view" = String, Path, description = "View name"),
        ("measures" = Option<String>, Query, description = "Comma-separated measure names (default: all)"),
        ("from" = Option<String>, Query, description = "Start, RFC 3339 (default: to - 24h)"),
        ("to" = Option<String>, Query, description = "End (exclusive), RFC 3339 (default: now)"),
        ("granularity" = Option<String>, Query, description = "minute, hour or day (default: the view's first)"),
    ),
    responses((status = 200, body = AccuracyResponse), (status = 400, body = ErrorBody)))]
async fn accuracy(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<AccuracyResponse>, ApiError> {
    let plan = view(&app, &name)?;
    let params = AccuracyParams::parse(
        plan,
        &pairs(raw.as_deref()),
        now_ms(),
        Limits::of(&app.sources.config),
    )?;
    Ok(Json(
        crate::accuracy::accuracy(&app.sources, plan, &params).await?,
    ))
}

/// Lag, late and DLQ counts, archive progress, horizons, batch runs, warnings.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusResponse)))]
async fn status(State(app): State<AppState>) -> Json<StatusResponse> {
    Json(crate::status::status(&app.sources).await)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    #[schema(value_type = Object)]
    pub checks: BTreeMap<String, String>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        checks: BTreeMap::new(),
    })
}

/// Readiness: Redis and the object store answer.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(app): State<AppState>) -> Response {
    let mut checks = BTreeMap::new();
    let redis = app
        .sources
        .with_redis(|mut con| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    checks.insert(
        "redis".to_string(),
        match &redis {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        },
    );
    let store = app
        .sources
        .batch
        .manifest(
            app.sources
                .views
                .first()
                .map(|v| v.name.as_str())
                .unwrap_or(""),
        )
        .await;
    checks.insert(
        "store".to_string(),
        match &store {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        },
    );
    let ok = redis.is_ok() && store.is_ok();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status: if ok { "ready" } else { "not ready" }.into(),
            checks,
        }),
    )
        .into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", responses((status = 200,
    description = "OpenMetrics text", body = String,
    content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn openapi(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.openapi.clone(),
    )
        .into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(crate::dashboard::INDEX_HTML)
}

async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("no route {}; see /openapi.json", req.uri().path()),
        parameter: None,
    }
}
