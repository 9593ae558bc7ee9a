//! One request to the API server within a deadline, with its failure sorted the way the
//! callers that keep state in the cluster (kept overrides, the audit chain) must treat it.

use std::time::Duration;

use tokio::time::Instant;

/// The most one request to the API server may take inside a caller's budget.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// How one request went wrong.
#[derive(Debug)]
pub enum Sent {
    /// 409: the object changed since it was read (or already exists).
    Conflict,
    /// Any other answer: the request was not carried out.
    Refused(String),
    /// No answer in time: the request may still be carried out.
    Unanswered,
}

/// Runs one request, giving up at `deadline` or after [`REQUEST_DEADLINE`], whichever comes
/// first.
pub async fn within<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Sent> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left.min(REQUEST_DEADLINE), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(Sent::Conflict),
        Ok(Err(e)) => Err(Sent::Refused(e.to_string())),
        Err(_) => Err(Sent::Unanswered),
    }
}
