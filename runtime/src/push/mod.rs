//! Push layer: wake a sleeping mobile app so that it re-REGISTERs and can take a parked call.
//!
//! When an INVITE arrives for a binding whose Contact carries RFC 8599 `pn-*` parameters and
//! the device has no live flow, the SIP core parks the request and asks this module to send a
//! push. The module has three parts:
//!
//! * [`PushRequest`] / [`PushOutcome`]: what the core asks for and what it gets back.
//! * [`PushProvider`]: one trait per push service. This module ships [`webhook::WebhookProvider`]
//!   (JSON POST to an operator's own push gateway) and [`log::LogProvider`] (accepts and logs,
//!   for local use and demos). APNs (HTTP/2, JWT or certificate auth) and FCM (HTTP v1, OAuth2)
//!   providers will implement the same trait later.
//! * [`dispatcher::Dispatcher`]: keeps push I/O off the SIP hot path. `submit` never blocks and
//!   never awaits; each configured provider has its own bounded queue and its own concurrency
//!   limit, and every submitted push produces exactly one [`dispatcher::PushReport`] on a channel
//!   the runtime reads.
//!
//! # How the later APNs and FCM providers fit the trait
//!
//! * **Connection reuse / HTTP/2**: a provider is a long-lived object shared as
//!   `Arc<dyn PushProvider>`; it owns its HTTP client (and so its connection pool or HTTP/2
//!   connection) and its credentials. `send` takes `&self`, so many pushes run concurrently over
//!   the same connection(s).
//! * **Per-push deadline**: [`PushRequest::deadline`] is an absolute wall-clock time. Providers
//!   bound their own request timeout by [`PushRequest::time_left`] and derive message lifetimes
//!   from it (APNs `apns-expiration` is epoch seconds; FCM `android.ttl` is a duration). The
//!   dispatcher additionally guards every send with the deadline, so a provider that hangs cannot
//!   hold a concurrency slot forever.
//! * **Permanent vs transient**: [`PushOutcome::Failed`] carries `permanent: true` only when the
//!   *token* is dead (APNs 410 `Unregistered`, 400 `BadDeviceToken`; FCM 404 `UNREGISTERED`), so
//!   the registrar may forget the binding's pn-prid. Everything else (server errors, throttling,
//!   timeouts, our own credential or configuration problems) is transient: the call fails but
//!   the token is kept.
//! * **"Re-sign credentials"** (APNs 403 `ExpiredProviderToken`, FCM 401 on a stale OAuth
//!   token): only the provider knows how to mint a new JWT / access token, so it handles this
//!   inside `send` — refresh the credential it caches, retry once if
//!   [`PushRequest::time_left`] allows — and reports a transient failure if that is not
//!   possible. The core never sees a third outcome kind; it has nothing to do with it.
//! * **Reason names**: the `reason` string is the provider's own vocabulary (APNs
//!   `Unregistered`, FCM `UNREGISTERED`, the gateway's `reason` field, or one of the
//!   [`reasons`] constants for failures raised locally), so logs and metrics keep the exact
//!   name the service gave.

pub mod apns;
pub mod dispatcher;
pub mod fcm;
pub mod log;
pub mod rate;
pub mod setup;
pub mod webhook;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use self::apns::{ApnsAuth, ApnsConfig, ApnsEnvironment, ApnsError, ApnsProvider, KeySource};
pub use self::dispatcher::{
    Dispatcher, DispatcherBuilder, DispatcherError, ProviderLimits, PushReport, PushReports,
    Submission,
};
pub use self::fcm::{FcmConfig, FcmError, FcmProvider, ServiceAccountKey, ServiceAccountSource};
pub use self::log::LogProvider;
pub use self::rate::PushBudget;
pub use self::webhook::{WebhookAuth, WebhookConfig, WebhookError, WebhookFormat, WebhookProvider};

/// Most characters kept of a service-supplied reason or code.
const MAX_LABEL_CHARS: usize = 64;

/// A service-supplied reason or code made safe as a log field and metric label: trimmed,
/// at most [`MAX_LABEL_CHARS`] characters, each character `keep` refuses replaced by `_`. `None` if empty.
fn clean_label(raw: &str, keep: impl Fn(char) -> bool) -> Option<String> {
    let cleaned: String = raw
        .trim()
        .chars()
        .take(MAX_LABEL_CHARS)
        .map(|c| if keep(c) { c } else { '_' })
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

/// Reason strings for failures raised by this module itself (not by a push service).
///
/// They are stable so they can be used as metric labels.
pub mod reasons {
    /// The request's `pn-provider` has no configured provider (permanent).
    pub const PROVIDER_NOT_CONFIGURED: &str = "provider not configured";
    /// The provider's queue was full; the push was not attempted (transient).
    pub const QUEUE_FULL: &str = "queue full";
    /// The deadline had already passed before the push could be sent (transient).
    pub const DEADLINE_EXPIRED: &str = "deadline expired";
    /// The push service did not answer before the request timeout / deadline (transient).
    pub const TIMEOUT: &str = "timeout";
    /// The connection to the push service could not be established (transient).
    pub const CONNECT_FAILED: &str = "connect failed";
    /// Any other transport-level error (reset connection, protocol error...) (transient).
    pub const TRANSPORT_ERROR: &str = "transport error";
    /// The provider's send task panicked (transient).
    pub const PROVIDER_PANICKED: &str = "provider panicked";
    /// The dispatcher is shutting down and no longer accepts pushes (transient).
    pub const DISPATCHER_STOPPED: &str = "dispatcher stopped";
}

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PushKind {
    /// A call (INVITE) is parked for the device; wake it so it re-REGISTERs and takes the call.
    IncomingCall,
    /// The binding expires soon and the app has not refreshed it (RFC 8599 §5.5): wake it so
    /// it REGISTERs again. Never sent to APNs VoIP tokens: iOS kills an app that gets a
    /// VoIP push it does not report to CallKit as a call.
    BindingRefresh,
}

impl PushKind {
    /// Stable snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::IncomingCall => "incoming_call",
            PushKind::BindingRefresh => "binding_refresh",
        }
    }
}

/// One push to one device, as requested by the SIP core.
///
/// Serialised (JSON) as the body of the [`webhook`] provider's POST; field names are the
/// snake_case field names below, except `deadline`, which is sent as `deadline_unix_ms`
/// (milliseconds since the Unix epoch). Optional fields are sent as `null` when absent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Unique id of this push (unique per push, not per call: a retry gets a new id).
    pub id: String,
    /// Why the push is sent.
    pub kind: PushKind,
    /// Address-of-record of the callee, e.g. `sip:alice@example.com`.
    pub callee_aor: String,
    /// RFC 8599 `pn-provider` value from the binding (e.g. `apns`, `fcm`, or an operator name).
    pub pn_provider: String,
    /// RFC 8599 `pn-prid`: the device token / registration token. Never logged in full.
    pub pn_prid: String,
    /// RFC 8599 `pn-param` (APNs: `<TeamID>.<bundle-id>.voip`; FCM: project id), if any.
    pub pn_param: Option<String>,
    /// URI of the caller (From URI of the parked INVITE).
    pub caller_uri: String,
    /// Display name of the caller, if the INVITE had one.
    pub caller_display_name: Option<String>,
    /// SIP Call-ID of the parked INVITE, so the app can correlate push and INVITE.
    pub call_id: String,
    /// Absolute time after which the push is useless (the parked call will have been answered
    /// 480 by then). Providers bound request timeouts and message lifetimes by it.
    #[serde(rename = "deadline_unix_ms", with = "unix_ms")]
    pub deadline: SystemTime,
    /// The answer token of a call push when the app API is on (`[app_api]`): the app may
    /// post it with `busy`, `decline` or `ringing` to [`Self::answer_url`] instead of
    /// waking its SIP stack (specs/parking.md §9). Opaque to the app; `None` for refresh
    /// pushes and without an app API.
    pub answer_token: Option<String>,
    /// Where the app posts its answer: the app API's `/v1/calls/answer` as apps reach it.
    pub answer_url: Option<String>,
}

impl PushRequest {
    /// Time left until [`Self::deadline`], or `None` if the deadline has passed.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .duration_since(SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// The deadline as whole seconds since the Unix epoch (APNs `apns-expiration` format).
    pub fn deadline_unix_secs(&self) -> u64 {
        self.deadline
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

impl fmt::Debug for PushRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushRequest")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("callee_aor", &self.callee_aor)
            .field("pn_provider", &self.pn_provider)
            .field("pn_prid", &redact_token(&self.pn_prid))
            .field("pn_param", &self.pn_param)
            .field("caller_uri", &self.caller_uri)
            .field("caller_display_name", &self.caller_display_name)
            .field("call_id", &self.call_id)
            .field("deadline", &self.deadline)
            .field(
                "answer_token",
                &self.answer_token.as_deref().map(redact_token),
            )
            .field("answer_url", &self.answer_url)
            .finish()
    }
}

/// Shortens a push token for logs: the first 6 characters and the length.
pub fn redact_token(token: &str) -> String {
    let prefix: String = token.chars().take(6).collect();
    format!("{prefix}…({} chars)", token.chars().count())
}

/// (De)serialises a `SystemTime` as integer milliseconds since the Unix epoch.
mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        s.serialize_u64(ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| serde::de::Error::custom("deadline out of range"))
    }
}

/// Result of one push attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushOutcome {
    /// The push service accepted the push (this does not mean the device got it).
    Accepted,
    /// The push was not accepted.
    Failed {
        /// `true` only when the token is dead (unknown, unregistered, expired): the binding's
        /// pn-prid should be forgotten. `false` for anything worth trying again later.
        permanent: bool,
        /// The provider's own reason name (e.g. `Unregistered`, `http 503`) or one of
        /// [`reasons`]; suitable for logs and as a metric label.
        reason: String,
    },
}

impl PushOutcome {
    /// A failure that means the token is dead.
    pub fn permanent(reason: impl Into<String>) -> Self {
        PushOutcome::Failed {
            permanent: true,
            reason: reason.into(),
        }
    }

    /// A failure that does not say anything about the token.
    pub fn transient(reason: impl Into<String>) -> Self {
        PushOutcome::Failed {
            permanent: false,
            reason: reason.into(),
        }
    }

    /// `true` for [`PushOutcome::Accepted`].
    pub fn is_accepted(&self) -> bool {
        matches!(self, PushOutcome::Accepted)
    }

    /// `true` for a permanent failure (the token should be forgotten).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PushOutcome::Failed {
                permanent: true,
                ..
            }
        )
    }

    /// The failure reason, or `None` when accepted.
    pub fn reason(&self) -> Option<&str> {
        match self {
            PushOutcome::Accepted => None,
            PushOutcome::Failed { reason, .. } => Some(reason),
        }
    }
}

/// The future returned by [`PushProvider::send`]: boxed so the trait stays object-safe
/// (`Arc<dyn PushProvider>`), and `Send` so it can run on a multi-threaded tokio runtime.
pub type PushFuture<'a> = Pin<Box<dyn Future<Output = PushOutcome> + Send + 'a>>;

/// A push service (APNs, FCM, an operator's webhook gateway, ...).
///
/// Implementations are shared as `Arc<dyn PushProvider>` and called concurrently; they own
/// their connections and credentials. `send` must:
///
/// * finish by [`PushRequest::deadline`] (bound any request timeout by
///   [`PushRequest::time_left`]); the dispatcher aborts sends that overrun it;
/// * never panic on anything the network returns;
/// * classify failures as permanent only when the token is dead (see [`PushOutcome`]);
/// * handle credential refresh itself (see the module docs).
pub trait PushProvider: Send + Sync {
    /// Short, stable name for logs and metrics (e.g. `webhook`, `apns`).
    fn name(&self) -> &str;

    /// Sends one push and reports what the push service said.
    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a>;
}
