//! One error type for every CCM call, carrying what the service said, and the split between
//! failures worth retrying and ones that will not change on their own.

use std::time::Duration;

/// An error from a CCM API call.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The service answered with an error status.
    #[error("{service} {operation}: HTTP {status}{}: {msg}{}",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        request_id.as_deref().map(|r| format!(" (request id {r})")).unwrap_or_default())]
    Api {
        service: &'static str,
        operation: &'static str,
        status: u16,
        code: Option<String>,
        msg: String,
        request_id: Option<String>,
    },
    /// The request could not be sent or its response not read.
    #[error("{service} {operation}: {detail}")]
    Http {
        service: &'static str,
        operation: &'static str,
        detail: String,
        /// True when the request certainly never reached the server (connection refused, DNS).
        not_sent: bool,
    },
    /// No response within the per-request timeout.
    #[error("{service} {operation}: no response within {timeout:?}")]
    Timeout {
        service: &'static str,
        operation: &'static str,
        timeout: Duration,
    },
    /// The response arrived but its body is not what the API reference describes.
    #[error("{service} {operation}: malformed response: {detail}")]
    Decode {
        service: &'static str,
        operation: &'static str,
        detail: String,
    },
    /// The call was refused before sending: bad input, missing credentials, bad endpoint.
    #[error("{0}")]
    Invalid(String),
}

impl CloudError {
    /// Whether trying again later may succeed: connection errors, timeouts, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Api { status, .. } => *status == 429 || *status >= 500,
            CloudError::Http { .. } | CloudError::Timeout { .. } => true,
            CloudError::Decode { .. } | CloudError::Invalid(_) => false,
        }
    }

    /// Whether the request certainly had no effect on the server, so even a call that
    /// creates something may be sent again.
    pub fn certainly_not_processed(&self) -> bool {
        match self {
            CloudError::Http { not_sent, .. } => *not_sent,
            // Throttling and "service unavailable" are answered before the request is handled.
            CloudError::Api { status, .. } => *status == 429 || *status == 503,
            _ => false,
        }
    }

    /// The HTTP status, where the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The service's error code (`SCM.0008`, `PCA.10010002`, ...), where it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// The body of an error answer. SCM and PCA send `{"error_code": "SCM.0008", "error_msg": ".."}`
/// (every operation's 4xx/5xx examples in the reference); IAM nests it as
/// `{"error": {"code": 401, "message": "..", "title": ".."}}`. Every field is optional: what is
/// missing is filled from the status and the raw body.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
    /// IAM's form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NestedError>,
}

/// IAM's nested error object; `code` is a number there, a string elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NestedError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl ErrorBody {
    /// The error code, from either form.
    pub fn code(&self) -> Option<String> {
        self.error_code.clone().or_else(|| {
            let nested = self.error.as_ref()?.code.clone()?;
            Some(match nested {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
        })
    }

    /// The message, from either form (IAM's `message`, else its `title`).
    pub fn message(&self) -> Option<String> {
        self.error_msg.clone().or_else(|| {
            let nested = self.error.as_ref()?;
            nested.message.clone().or_else(|| nested.title.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CloudError {
        CloudError::Api {
            service: "scm",
            operation: "list",
            status,
            code: Some("SCM.0005".into()),
            msg: "bad".into(),
            request_id: Some("r1".into()),
        }
    }

    #[test]
    fn classification() {
        assert!(api(500).is_retryable());
        assert!(api(429).is_retryable());
        assert!(!api(400).is_retryable());
        assert!(!api(404).is_retryable());
        assert!(api(503).certainly_not_processed());
        assert!(!api(500).certainly_not_processed());
    }

    #[test]
    fn display_names_code_and_request_id() {
        let s = api(400).to_string();
        assert!(
            s.contains("SCM.0005") && s.contains("r1") && s.contains("HTTP 400"),
            "{s}"
        );
    }
}
