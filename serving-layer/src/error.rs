//! API errors: `{"error": {"code": "...", "message": "..."}}` with the HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Error body of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unknown_view`, `bad_parameter`, `too_many_buckets`,
    /// `missing_api_key`, `invalid_api_key`.
    pub code: String,
    /// What is wrong, naming the parameter.
    pub message: String,
    /// The offending query parameter, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub parameter: Option<&'static str>,
}

impl ApiError {
    /// A 400 about one query parameter.
    pub fn param(parameter: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            parameter: Some(parameter),
        }
    }

    /// A 404: the path names a view this server does not have.
    pub fn unknown_view(view: &str, known: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_view",
            message: format!("unknown view {view:?}; views: {}", known.join(", ")),
            parameter: Some("view"),
        }
    }

    /// A 401: no API key, or one the server does not know (never echoed back).
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code,
            message: message.into(),
            parameter: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
            parameter: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                parameter: self.parameter.map(str::to_string),
            },
        };
        (self.status, Json(body)).into_response()
    }
}
