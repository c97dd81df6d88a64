//! A reply the filter sends itself, whichever step decided it.

/// A reply the filter sends itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Sent as `x-polaris-reason`.
    pub reason: &'static str,
    pub body: String,
    /// Headers beyond `x-polaris-reason` (`retry-after`, a circuit breaker's fallback response); a
    /// `content-type` among them replaces the default `text/plain`.
    pub headers: Vec<(String, String)>,
}
