//! The server's one error type, and the one place where errors become HTTP statuses and
//! OpenAI-shaped bodies: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sprout_pipeline::PipelineError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiError {
    /// A request parameter is missing, of the wrong type or out of range; `param` names it.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    /// The request names a model this server does not serve.
    #[error("the model {0:?} does not exist; GET /v1/models lists the models served here")]
    UnknownModel(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The queue is full; retry after this many seconds.
    #[error("the server is busy ({depth} jobs queued); retry in {retry_after} s")]
    Overloaded { depth: usize, retry_after: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the job ran past its deadline of {0} s and was stopped")]
    Deadline(u64),
    #[error("the job was cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
    /// Distributed serving: the broker cannot be reached (the job was not queued).
    #[error("the job broker is unreachable ({0}); retry when it is back")]
    BrokerDown(String),
    /// Distributed serving: no live worker serves this model.
    #[error("no live worker serves the model {0:?}; start one with `sprout worker --broker URL --model …`")]
    NoWorker(String),
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            // 499 (client closed request) is not in the standard set; a cancelled job's
            // response only reaches clients that asked for it through the jobs API.
            ApiError::Cancelled => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BrokerDown(_) | ApiError::NoWorker(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// OpenAI's `type` and `code` fields.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::Invalid { .. } => ("invalid_request_error", None),
            ApiError::UnknownModel(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::NotFound(_) => ("invalid_request_error", Some("not_found")),
            ApiError::TooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
            ApiError::Overloaded { .. } => ("rate_limit_error", Some("queue_full")),
            ApiError::ShuttingDown => ("server_error", Some("shutting_down")),
            ApiError::Deadline(_) => ("server_error", Some("deadline_exceeded")),
            ApiError::Cancelled => ("invalid_request_error", Some("cancelled")),
            ApiError::Internal(_) => ("server_error", None),
            ApiError::BrokerDown(_) => ("server_error", Some("broker_unreachable")),
            ApiError::NoWorker(_) => ("server_error", Some("no_worker")),
        }
    }

    /// The label of this error in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } => "invalid",
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Deadline(_) => "deadline",
            ApiError::Cancelled => "cancelled",
            ApiError::Internal(_) => "internal",
            ApiError::BrokerDown(_) => "broker_down",
            ApiError::NoWorker(_) => "no_worker",
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> ApiError {
        match e {
            PipelineError::Request(m) => ApiError::Invalid {
                message: m,
                param: None,
            },
            PipelineError::Invalid { param, message } => ApiError::Invalid {
                message,
                param: Some(param.to_string()),
            },
            PipelineError::Cancelled => ApiError::Cancelled,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind();
        let param = match &self {
            ApiError::Invalid { param, .. } => param.clone(),
            ApiError::UnknownModel(_) | ApiError::NoWorker(_) => Some("model".into()),
            _ => None,
        };
        let body = json!({"error": {
            "message": self.to_string(),
            "type": kind,
            "param": param,
            "code": code,
        }});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let ApiError::Overloaded { retry_after, .. } = self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after.to_string()).expect("digits"),
            );
        }
        resp
    }
}
