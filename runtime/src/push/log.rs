//! The `log` provider: accepts every push and logs it with `tracing`.
//!
//! For local use, demos and tests: nothing is sent anywhere. The token is redacted in the log.

use super::{redact_token, PushFuture, PushOutcome, PushProvider, PushRequest};

/// Accepts every push and logs it at `info` level (target `pushpark::push::log`).
#[derive(Debug, Clone)]
pub struct LogProvider {
    name: String,
}

impl LogProvider {
    /// A log provider named `log`.
    pub fn new() -> Self {
        Self::named("log")
    }

    /// A log provider with a custom name (as reported to metrics).
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl Default for LogProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl PushProvider for LogProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                target: "pushpark::push::log",
                provider = %self.name,
                push_id = %request.id,
                kind = request.kind.as_str(),
                callee = %request.callee_aor,
                pn_provider = %request.pn_provider,
                pn_prid = %redact_token(&request.pn_prid),
                pn_param = request.pn_param.as_deref().unwrap_or(""),
                caller = %request.caller_uri,
                caller_name = request.caller_display_name.as_deref().unwrap_or(""),
                call_id = %request.call_id,
                time_left_ms = request.time_left().map_or(0, |d| d.as_millis()),
                "push (log provider: not sent anywhere)"
            );
            PushOutcome::Accepted
        })
    }
}
