//! What went wrong with a store, by kind: the few cases a person can act on,
//! and whether retrying can help.

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};

/// The kind of a storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The object is not there (deleted after listing, or never there).
    NotFound,
    /// The bucket is not there.
    NoBucket,
    /// The credentials or the bucket policy refuse us.
    AccessDenied,
    /// No credentials were given and the cloud's credential chain (instance
    /// metadata, managed identity) found none.
    NoCredentials,
    /// This process may not open the object: outside its `--allow-prefix`.
    Outside,
    /// The endpoint does not answer; `refused` when nothing listens there.
    Unreachable { refused: bool },
    /// Anything else: a server error, a malformed answer, a local I/O error.
    Other,
}

impl Fault {
    /// The kind of a store error, from its variant, S3's error code in the
    /// response, and the typed HTTP and I/O errors that caused it.
    pub fn of(e: &object_store::Error) -> Self {
        use object_store::Error as E;
        let text = chain_text(e);
        let code = s3_code(&text);
        match (e, code.as_deref()) {
            (E::PermissionDenied { source, .. }, _) if source.to_string().contains(crate::guard::REFUSAL) => {
                Self::Outside
            }
            (_, Some(code)) if is_no_bucket(code) => Self::NoBucket,
            (E::NotFound { .. }, _) => Self::NotFound,
            (E::PermissionDenied { .. } | E::Unauthenticated { .. }, _) => Self::AccessDenied,
            (_, Some(code)) if is_denial(code) => Self::AccessDenied,
            _ if is_token_failure(&text) => Self::NoCredentials,
            _ => unreachable_in(e).unwrap_or(Self::Other),
        }
    }

    /// The kind of a storage failure known only by its text: an error that
    /// an executor relayed through the engine, where nothing but the message
    /// crosses the process boundary. Reads S3's error codes and the words the
    /// HTTP client and the OS use; `None` when it is not a storage failure.
    pub fn recognise(text: &str) -> Option<Self> {
        let has = |needle: &str| text.contains(needle);
        // The engine's own transport (a client or an executor fetching
        // results from another executor) fails with the same socket words.
        if has("fetch partition") || has("Grpc") {
            return None;
        }
        let code = s3_code(text);
        Some(if has(crate::guard::REFUSAL) {
            Self::Outside
        } else if code.as_deref().is_some_and(is_no_bucket) || has("NoSuchBucket") || has("ContainerNotFound") {
            Self::NoBucket
        } else if code.as_deref().is_some_and(is_denial) || has("403 Forbidden") || has("AccessDenied") {
            Self::AccessDenied
        } else if is_token_failure(text) {
            Self::NoCredentials
        } else if has("Connection refused") || has("tcp connect error") || has("dns error") || has("timed out") {
            Self::Unreachable {
                refused: has("Connection refused"),
            }
        } else if has("NotFound {") {
            Self::NotFound
        } else {
            return None;
        })
    }

    /// Whether retrying cannot help.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Self::NotFound | Self::NoBucket | Self::AccessDenied | Self::NoCredentials | Self::Outside
        )
    }

    /// In plain words, for people; `None` for [`Fault::Other`], whose own
    /// message is the best there is.
    pub fn plain(self) -> Option<String> {
        Some(match self {
            Self::NotFound => "not found".into(),
            Self::NoBucket => "the bucket (container) does not exist".into(),
            Self::AccessDenied => "access denied: check the credentials and the bucket policy".into(),
            Self::NoCredentials => "no credentials: none are set and the credential chain found none \
                 (instance metadata, managed identity); set the store's keys (README: Object stores)"
                .into(),
            Self::Outside => format!("{}: see the engine processes' --allow-prefix", crate::guard::REFUSAL),
            Self::Unreachable { refused } => format!(
                "cannot reach the storage endpoint ({}; check the endpoint setting: AWS_ENDPOINT_URL, GOOGLE_BASE_URL, AZURITE_BLOB_STORAGE_URL)",
                if refused { "connection refused" } else { "no answer" }
            ),
            Self::Other => return None,
        })
    }
}

/// Error codes (S3's, GCS's XML API's, Azure's) that mean "not with these
/// credentials".
fn is_denial(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AuthenticationFailed"
            | "AuthorizationFailure"
            | "AuthorizationPermissionMismatch"
            | "InsufficientAccountPermissions"
    )
}

/// The credential chain's token request failed: the instance metadata
/// service (AWS, GCP and Azure all serve it at 169.254.169.254, ECS at
/// 169.254.170.2) or an identity endpoint refused or did not answer. Checked
/// before "unreachable", which would blame the storage endpoint.
fn is_token_failure(text: &str) -> bool {
    [
        "Error performing token request",
        "Error getting token",
        "169.254.169.254",
        "169.254.170.2",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Error codes that mean the bucket (Azure: the container) is not there.
fn is_no_bucket(code: &str) -> bool {
    matches!(code, "NoSuchBucket" | "ContainerNotFound")
}

/// The `<Code>` of an S3, GCS or Azure XML error response carried in the
/// error's message.
fn s3_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].to_string())
}

/// The error's message and its causes', joined.
fn chain_text(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    let mut cause = StdError::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// An endpoint that did not answer, from the typed causes of `e`.
fn unreachable_in(e: &object_store::Error) -> Option<Fault> {
    let mut unreachable = false;
    let mut refused = false;
    let mut cause: Option<&(dyn StdError + 'static)> = StdError::source(e);
    while let Some(c) = cause {
        if let Some(http) = c.downcast_ref::<HttpError>() {
            unreachable |= matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = c.source();
    }
    unreachable.then_some(Fault::Unreachable { refused })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found(body: &str) -> object_store::Error {
        object_store::Error::NotFound {
            path: "b/k".into(),
            source: body.to_string().into(),
        }
    }

    /// A store's error with the response it got, as object_store reports one.
    fn generic(store: &'static str, body: &str) -> object_store::Error {
        object_store::Error::Generic {
            store,
            source: body.to_string().into(),
        }
    }

    #[test]
    fn kinds_come_from_variants_and_s3_codes() {
        assert_eq!(Fault::of(&not_found("404")), Fault::NotFound);
        let no_bucket = not_found("404 Not Found: <Error><Code>NoSuchBucket</Code></Error>");
        assert_eq!(Fault::of(&no_bucket), Fault::NoBucket);
        let denied = object_store::Error::PermissionDenied {
            path: "b/k".into(),
            source: "403".into(),
        };
        assert_eq!(Fault::of(&denied), Fault::AccessDenied);
        let bad_key = generic("S3", "400 Bad Request: <Error><Code>InvalidAccessKeyId</Code></Error>");
        assert_eq!(Fault::of(&bad_key), Fault::AccessDenied);
        let other = generic("S3", "500 Internal Server Error");
        assert_eq!(Fault::of(&other), Fault::Other);
        let azure = generic(
            "MicrosoftAzure",
            "404 Not Found: <Error><Code>ContainerNotFound</Code></Error>",
        );
        assert_eq!(Fault::of(&azure), Fault::NoBucket);
        let azure_denied = generic(
            "MicrosoftAzure",
            "403 Forbidden: <Error><Code>AuthenticationFailed</Code></Error>",
        );
        assert_eq!(Fault::of(&azure_denied), Fault::AccessDenied);
        let no_credentials = generic(
            "GCS",
            "Error performing token request: Error performing GET http://169.254.169.254/computeMetadata/v1/\
                     instance/service-accounts/default/token: tcp connect error: Connection refused",
        );
        assert_eq!(
            Fault::of(&no_credentials),
            Fault::NoCredentials,
            "not the storage endpoint's fault"
        );
        assert!(Fault::NoCredentials.is_permanent());
        let no_aws_role = generic(
            "S3",
            "Error performing PUT http://169.254.169.254/latest/api/token in 1ms - 403 Forbidden",
        );
        assert_eq!(Fault::of(&no_aws_role), Fault::NoCredentials);
        assert!(Fault::NoBucket.is_permanent() && !Fault::Unreachable { refused: true }.is_permanent());
    }

    #[test]
    fn relayed_text_is_recognised() {
        assert_eq!(
            Fault::recognise("External error: Generic S3 error: tcp connect error: Connection refused (os error 111)"),
            Some(Fault::Unreachable { refused: true })
        );
        assert_eq!(
            Fault::recognise("... <Code>NoSuchBucket</Code> ..."),
            Some(Fault::NoBucket)
        );
        assert_eq!(Fault::recognise("Arrow error: schema mismatch"), None);
        let lost_executor = "Shuffle fetch partition error from Executor 7f3a, map_stage 1, map_partition 0, \
             error desc: Status { code: Unavailable, message: \"tcp connect error\" }: Connection refused";
        assert_eq!(Fault::recognise(lost_executor), None, "an executor is not a store");
        assert_eq!(Fault::NotFound.plain().as_deref(), Some("not found"));
        assert_eq!(Fault::Other.plain(), None);
    }
}
