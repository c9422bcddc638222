//! The operator's one error type.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the session has no {0}")]
    MissingField(&'static str),
    #[error("serializing an object: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// Low-cardinality label for the errors metric.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => "rejected",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "connection",
            Error::MissingField(_) | Error::Serialize(_) => "invalid_object",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
