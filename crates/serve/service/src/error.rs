//! Every failure of the API as `{"error": "...", "code": "..."}` with a 4xx
//! or 5xx status: clients branch on `code`, people read `error`.

use axum::extract::rejection::QueryRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    #[schema(example = "cannot decode image: the JPEG data ends early (truncated file?)")]
    pub error: String,
    /// What went wrong, for programs: `empty_body`, `not_an_image`, `corrupt_image`,
    /// `too_many_pixels`, `body_too_large`, `unsupported_media_type`, `missing_image_field`,
    /// `bad_multipart`, `bad_query`, `unknown_fruit`, `not_found`, `method_not_allowed`,
    /// `rate_limited`, `busy`, `timeout`, `unauthorized`, `reload_failed`, `internal`.
    #[schema(example = "corrupt_image")]
    pub code: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn internal(what: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", what)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the upload is over the limit of {} bytes", limit),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
    }
}

/// A photo that cannot be read is the client's fault (4xx); a model that
/// fails on a readable photo is ours (500). The model's own message names
/// files and paths on this server: it goes to the log, not to the client.
impl From<crate::identify::IdentifyError> for ApiError {
    fn from(e: crate::identify::IdentifyError) -> Self {
        use crate::identify::IdentifyError as E;
        match e {
            E::Photo(e) => e.into(),
            E::Model(e) => {
                tracing::error!(error = %e, "the model failed on a readable photo");
                Self::internal("the model failed on this photo; the service log says why")
            }
        }
    }
}

/// Decoding failures are the client's: 4xx, never 500.
impl From<fruits_preprocess::Error> for ApiError {
    fn from(e: fruits_preprocess::Error) -> Self {
        use fruits_preprocess::Error as E;
        let code = match &e {
            E::Empty => "empty_body",
            E::UnknownFormat => "not_an_image",
            E::TooLarge { .. } => "too_many_pixels",
            E::Decode(_) => "corrupt_image",
        };
        let status = match &e {
            E::Empty => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(crate::api::ErrorCode(self.code));
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::IdentifyError;

    #[test]
    fn a_model_failure_is_a_500_that_names_no_server_path() {
        let failure = fruits_bundle::Error::Invalid {
            uri: "file:///srv/fruits/runs/latest/model/kinds.json".into(),
            cause: "does not match bundle.json's kind head".into(),
        };
        let e = ApiError::from(IdentifyError::Model(failure));
        assert_eq!((e.status, e.code), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
        assert!(
            !e.message.contains("/srv") && !e.message.contains("kinds.json"),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_unreadable_photo_stays_the_clients_fault() {
        let e = ApiError::from(IdentifyError::Photo(fruits_preprocess::Error::Empty));
        assert_eq!((e.status.is_client_error(), e.code), (true, "empty_body"));
    }
}
