//! The `fcm` provider: Firebase Cloud Messaging HTTP v1, authenticated with a service account.
//!
//! # Wire contract
//!
//! For each push, `POST {api_base_url}/v1/projects/{project_id}/messages:send` with
//! `Authorization: Bearer <OAuth2 access token>` and a **data-only, high-priority** message:
//!
//! ```json
//! {"message": {
//!   "token": "<pn-prid>",
//!   "data": {"kind": "incoming_call", "push_id": "...", "call_id": "...",
//!            "callee_aor": "...", "caller_uri": "...", "caller_display_name": "...",
//!            "deadline_unix_ms": "...", "answer_token": "...", "answer_url": "..."},
//!   "android": {"priority": "HIGH", "ttl": "<whole seconds until the deadline>s"}
//! }}
//! ```
//!
//! `caller_display_name` is left out when the INVITE had none. `answer_token` and `answer_url`
//! are there only for a call push with the app API on (`[app_api]`): the app may POST
//! `{"token": "<answer_token>", "answer": "busy"}` (or `decline`, `ringing`) to `answer_url`
//! instead of waking its SIP stack (specs/parking.md §9). Every data value is a string (FCM
//! requires it) and is cut to [`MAX_DATA_VALUE_CHARS`] characters, so a huge display name
//! cannot push the message over FCM's 4 KiB limit and earn an `INVALID_ARGUMENT` (which would
//! make the registrar forget a good token); the answer token and URL are never cut, but left
//! out (with a warning) if longer. The TTL is the time left until the push's deadline,
//! rounded down (`0s` = "deliver now or drop", which is what a nearly expired push wants).
//! A binding-refresh push has `"kind": "binding_refresh"` and `"priority": "NORMAL"`.
//!
//! The project id is, in order: the binding's `pn-param` (RFC 8599 §11: for FCM it is the
//! Firebase project id), [`FcmConfig::project_id`], the key's `project_id`. A `pn-param` that
//! cannot be a project id (characters other than ASCII letters, digits, `-`, `.`, `:`, `_`)
//! is refused locally and permanently ([`INVALID_PN_PARAM`]): no push can ever succeed for that
//! binding.
//!
//! # OAuth2
//!
//! The provider mints access tokens with the JWT-bearer grant (RFC 7523): it signs an RS256
//! JWT with the service account's private key (`iss` = `client_email`, `scope` =
//! [`FCM_SCOPE`], `aud` = the token endpoint URL, `iat` = now, `exp` = now + 3600 s, header
//! `kid` = `private_key_id` when the key has one) and POSTs it as a form
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`) to the token
//! endpoint (the key's `token_uri` unless [`FcmConfig::token_url`] overrides it). The access
//! token is cached and shared by all pushes; it is refreshed
//! [`FcmConfig::token_refresh_margin`] (default 300 s) before it expires. Only one fetch runs at
//! a time; pushes that need a token meanwhile wait for it (bounded by their own deadline).
//!
//! A failed fetch is always **transient** (reasons `oauth2 <error>`, `oauth2 http <status>`,
//! `oauth2 timeout`, ...): a credential problem must never wipe device tokens. After a failed
//! fetch, pushes fail at once with the same reason for [`FcmConfig::token_failure_backoff`]
//! (default 5 s) instead of hammering the token endpoint.
//!
//! # Answer mapping
//!
//! The reason of a failure is FCM's own `errorCode` (from the `google.firebase.fcm.v1.FcmError`
//! entry of `error.details`), else the `error.status` (e.g. `UNAUTHENTICATED`), else
//! `http <status>`.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | [`PushOutcome::Accepted`] |
//! | `UNREGISTERED`, or 404 | permanent |
//! | `INVALID_ARGUMENT`, or 400 | permanent; FCM's message text is logged at `warn` |
//! | `SENDER_ID_MISMATCH` | permanent |
//! | 403 without `SENDER_ID_MISMATCH` (`PERMISSION_DENIED`: our service account's rights) | transient |
//! | `THIRD_PARTY_AUTH_ERROR` (APNs/web-push credentials in the Firebase project) | transient |
//! | 401 otherwise (`UNAUTHENTICATED`: our access token) | drop the cached token, fetch a new one and retry once if the deadline allows; else transient |
//! | `QUOTA_EXCEEDED`/429, `UNAVAILABLE`/503, `INTERNAL`/500, other 5xx | transient, see Retry-After below |
//! | anything else (other 4xx, 3xx: redirects are not followed) | transient |
//! | timeout, connection refused, transport error | transient ([`reasons`]) |
//!
//! The error code wins over the HTTP status when both are present.
//!
//! # Retry-After
//!
//! On 429 and 5xx, a `Retry-After` header in delay-seconds form is reported in the reason as
//! `<CODE> retry-after=<n>s` (e.g. `QUOTA_EXCEEDED retry-after=30s`) so that logs show it. If it
//! is at most [`FcmConfig::max_retry_after`] (default 2 s) and the deadline leaves room for a
//! second attempt after waiting it, the provider waits and retries **once**; a parked call
//! cannot wait for longer back-offs, so anything longer is reported at once. Without a
//! `Retry-After` nothing is retried here: the caller decides.
//!
//! # Timeouts
//!
//! Every HTTP request (token fetch and send) has the timeout
//! `min(FcmConfig::timeout, time left until the push's deadline)`; a push whose deadline has
//! passed is not sent ([`reasons::DEADLINE_EXPIRED`]).
//!
//! # Why `jsonwebtoken`
//!
//! `jsonwebtoken` (11, `default-features = false`, features `use_pem`, `aws_lc_rs`) is the most
//! used and maintained JWT crate; with `aws_lc_rs` it signs with the same `aws-lc-rs` that
//! reqwest's rustls already links, so no system OpenSSL and no second crypto stack. (Exactly
//! one of its `aws_lc_rs`/`rust_crypto` features may be enabled in the whole build, or its
//! provider must be installed by hand.) `gcp_auth` and `yup-oauth2` were not used: both bring
//! their own HTTP client stack (hyper-rustls, a second connection pool) on top of reqwest, and the
//! grant is one signed JWT and one form POST, which this module keeps under the same timeout,
//! deadline and transient-failure rules as the send itself.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{reasons, redact_token, PushFuture, PushKind, PushOutcome, PushProvider, PushRequest};

/// OAuth2 scope for sending with FCM HTTP v1.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Default FCM API base URL.
pub const DEFAULT_API_BASE_URL: &str = "https://fcm.googleapis.com";
/// Reason for a push whose `pn-param` cannot be a Firebase project id (permanent).
pub const INVALID_PN_PARAM: &str = "invalid pn-param";
/// Most characters of one `data` value sent to FCM.
pub const MAX_DATA_VALUE_CHARS: usize = 512;

/// JWT-bearer grant type (RFC 7523 §2.1), form-encoded.
const JWT_BEARER_GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime requested for the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Largest `android.ttl` FCM accepts (28 days).
const MAX_TTL_SECS: u64 = 2_419_200;
/// Most bytes of an answer body that are read.
const MAX_BODY: usize = 16 * 1024;
/// Most characters of FCM's error message that are logged.
const MAX_MESSAGE_CHARS: usize = 256;
/// Room a retry needs after its `Retry-After` wait, besides the wait itself.
const MIN_RETRY_ROOM: Duration = Duration::from_millis(250);

/// A Google service-account key (the JSON file downloaded from the Cloud console).
///
/// Only the fields the provider needs are read; others are ignored.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    /// Service account e-mail: the JWT's `iss`.
    pub client_email: String,
    /// PEM-encoded RSA private key (PKCS#8 `BEGIN PRIVATE KEY`, or PKCS#1).
    pub private_key: String,
    /// Id of the private key, sent as the JWT header's `kid` when present.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// OAuth2 token endpoint, e.g. `https://oauth2.googleapis.com/token`.
    pub token_uri: String,
    /// The Google Cloud / Firebase project the key belongs to.
    #[serde(default)]
    pub project_id: Option<String>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses the key from its JSON text.
    pub fn from_json(json: &str) -> Result<Self, FcmError> {
        serde_json::from_str(json).map_err(|e| FcmError::InvalidKey(e.to_string()))
    }
}

/// Where the service-account key comes from.
#[derive(Clone)]
pub enum ServiceAccountSource {
    /// Path of the JSON key file; read once, when the provider is built.
    Path(PathBuf),
    /// The JSON key's contents.
    Json(String),
    /// An already parsed key.
    Key(ServiceAccountKey),
}

impl fmt::Debug for ServiceAccountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceAccountSource::Path(path) => f.debug_tuple("Path").field(path).finish(),
            ServiceAccountSource::Json(_) => f.write_str("Json(<redacted>)"),
            ServiceAccountSource::Key(key) => f.debug_tuple("Key").field(key).finish(),
        }
    }
}

/// Configuration of an [`FcmProvider`].
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// Name reported to logs and metrics (default `fcm`).
    pub name: String,
    /// The service-account key.
    pub service_account: ServiceAccountSource,
    /// Project id used when a push has no `pn-param`, instead of the key's `project_id`.
    pub project_id: Option<String>,
    /// FCM API base URL (scheme, host, optional port and path prefix); default
    /// [`DEFAULT_API_BASE_URL`].
    pub api_base_url: String,
    /// OAuth2 token endpoint; default (`None`) the key's `token_uri`. Also the JWT's `aud`.
    pub token_url: Option<String>,
    /// Upper bound for one HTTP request (connect + send + response); the push's deadline may
    /// shorten it. Default 5 s.
    pub timeout: Duration,
    /// Upper bound for establishing a connection (TCP + TLS). Default 2 s.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept for reuse. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// An access token is refreshed this long before it expires. Default 300 s.
    pub token_refresh_margin: Duration,
    /// After a failed token fetch, pushes fail at once for this long. Default 5 s; zero
    /// disables it.
    pub token_failure_backoff: Duration,
    /// Longest `Retry-After` the provider waits for before its single retry. Default 2 s;
    /// zero disables the retry.
    pub max_retry_after: Duration,
}

impl FcmConfig {
    /// A configuration with defaults for everything but the key.
    pub fn new(service_account: ServiceAccountSource) -> Self {
        Self {
            name: "fcm".to_owned(),
            service_account,
            project_id: None,
            api_base_url: DEFAULT_API_BASE_URL.to_owned(),
            token_url: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(90),
            token_refresh_margin: Duration::from_secs(300),
            token_failure_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(2),
        }
    }
}

/// An [`FcmProvider`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    /// The key file could not be read.
    #[error("cannot read service-account key {path:?}: {source}")]
    ReadKey {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is not a usable service-account JSON key.
    #[error("invalid service-account key: {0}")]
    InvalidKey(String),
    /// The key's `private_key` is not an RSA private key in PEM form.
    #[error("invalid service-account private key: {0}")]
    InvalidPrivateKey(String),
    /// Neither the configuration nor the key names a project.
    #[error("no FCM project id: set one in the configuration or use a key with project_id")]
    MissingProjectId,
    /// The configured project id is not a valid project id.
    #[error("invalid FCM project id {0:?}")]
    InvalidProjectId(String),
    /// A URL does not parse or is not `http`/`https`.
    #[error("invalid {what} URL {url:?}: {reason}")]
    InvalidUrl {
        /// Which URL (`FCM API`, `token endpoint`).
        what: &'static str,
        /// The configured URL.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// A timeout of zero was configured.
    #[error("FCM timeouts must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built (e.g. TLS initialisation).
    #[error("cannot build HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A cached OAuth2 access token.
struct CachedToken {
    /// The bearer token.
    access_token: String,
    /// When to fetch a new one (expiry minus the refresh margin).
    refresh_at: Instant,
}

/// Access-token cache state.
#[derive(Default)]
struct TokenState {
    token: Option<CachedToken>,
    /// Last fetch failure: its reason and until when it is repeated without fetching.
    failure: Option<(String, Instant)>,
}

/// Sends pushes with FCM HTTP v1. Cheap to share; one connection pool and one access token
/// for all pushes. Building it does no network I/O.
pub struct FcmProvider {
    name: String,
    client: reqwest::Client,
    api_base: Url,
    token_url: Url,
    client_email: String,
    key_id: Option<String>,
    signing_key: EncodingKey,
    default_project: String,
    timeout: Duration,
    refresh_margin: Duration,
    failure_backoff: Duration,
    max_retry_after: Duration,
    token: Mutex<TokenState>,
}

impl fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmProvider")
            .field("name", &self.name)
            .field("api_base", &self.api_base.as_str())
            .field("token_url", &self.token_url.as_str())
            .field("client_email", &self.client_email)
            .field("default_project", &self.default_project)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Outcome of one HTTP exchange with the send endpoint, before retry decisions.
enum Attempt {
    Done(PushOutcome),
    /// 401 without `THIRD_PARTY_AUTH_ERROR`: our access token was refused.
    Unauthenticated(PushOutcome),
    /// Transient answer with a `Retry-After` of this long.
    RetryAfter(PushOutcome, Duration),
}

impl FcmProvider {
    /// Builds the provider: reads and parses the key, checks the URLs, builds the HTTP
    /// client. Reads the key file if configured by path; no network I/O.
    pub fn new(config: FcmConfig) -> Result<Self, FcmError> {
        let key = match config.service_account {
            ServiceAccountSource::Key(key) => key,
            ServiceAccountSource::Json(json) => ServiceAccountKey::from_json(&json)?,
            ServiceAccountSource::Path(path) => {
                let json = std::fs::read_to_string(&path)
                    .map_err(|source| FcmError::ReadKey { path, source })?;
                ServiceAccountKey::from_json(&json)?
            }
        };
        if key.client_email.trim().is_empty() {
            return Err(FcmError::InvalidKey("empty client_email".to_owned()));
        }
        let signing_key = EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|e| FcmError::InvalidPrivateKey(e.to_string()))?;

        let default_project = config
            .project_id
            .or(key.project_id)
            .ok_or(FcmError::MissingProjectId)?;
        if !is_project_id(&default_project) {
            return Err(FcmError::InvalidProjectId(default_project));
        }

        let api_base = parse_http_url("FCM API", &config.api_base_url)?;
        let token_url = parse_http_url(
            "token endpoint",
            config.token_url.as_deref().unwrap_or(&key.token_uri),
        )?;
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(FcmError::ZeroTimeout);
        }

        let client = reqwest::Client::builder()
            .user_agent(concat!("pushpark/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;

        Ok(Self {
            name: config.name,
            client,
            api_base,
            token_url,
            client_email: key.client_email,
            key_id: key.private_key_id,
            signing_key,
            default_project,
            timeout: config.timeout,
            refresh_margin: config.token_refresh_margin,
            failure_backoff: config.token_failure_backoff,
            max_retry_after: config.max_retry_after,
            token: Mutex::new(TokenState::default()),
        })
    }

    /// The project a push goes to, or `None` if its `pn-param` cannot be a project id.
    fn project_for<'r>(&'r self, request: &'r PushRequest) -> Option<&'r str> {
        match request.pn_param.as_deref().map(str::trim) {
            None | Some("") => Some(&self.default_project),
            Some(param) => is_project_id(param).then_some(param),
        }
    }

    async fn push(&self, request: &PushRequest) -> PushOutcome {
        let Some(project) = self.project_for(request) else {
            tracing::debug!(
                provider = %self.name,
                push_id = %request.id,
                pn_param = ?request.pn_param,
                "FCM push refused: pn-param is not a project id"
            );
            return PushOutcome::permanent(INVALID_PN_PARAM);
        };
        let mut url = self.api_base.clone();
        url.set_path(&format!(
            "{}/v1/projects/{project}/messages:send",
            self.api_base.path().trim_end_matches('/')
        ));
        let body = message_body(request);

        let mut retried_auth = false;
        let mut retried_after = false;
        loop {
            let token = match self.access_token(request).await {
                Ok(token) => token,
                Err(outcome) => return outcome,
            };
            match self.send_once(request, &url, &body, &token).await {
                Attempt::Done(outcome) => return outcome,
                Attempt::Unauthenticated(outcome) => {
                    self.forget_token(&token).await;
                    if retried_auth || request.time_left().is_none() {
                        return outcome;
                    }
                    retried_auth = true;
                }
                Attempt::RetryAfter(outcome, wait) => {
                    let room = request.time_left().unwrap_or_default();
                    if retried_after || wait > self.max_retry_after || room <= wait + MIN_RETRY_ROOM
                    {
                        return outcome;
                    }
                    retried_after = true;
                    tracing::debug!(
                        provider = %self.name,
                        push_id = %request.id,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "FCM asked to retry after a short wait; retrying once"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One POST to the send endpoint.
    async fn send_once(
        &self,
        request: &PushRequest,
        url: &Url,
        body: &serde_json::Value,
        token: &str,
    ) -> Attempt {
        let Some(left) = request.time_left() else {
            return Attempt::Done(PushOutcome::transient(reasons::DEADLINE_EXPIRED));
        };
        let response = self
            .client
            .post(url.clone())
            .timeout(self.timeout.min(left))
            .header(AUTHORIZATION, bearer(token))
            .json(body)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) => {
                let reason = transport_reason(&error);
                tracing::debug!(
                    provider = %self.name,
                    push_id = %request.id,
                    error = %error,
                    reason,
                    "FCM push failed in transport"
                );
                return Attempt::Done(PushOutcome::transient(reason));
            }
        };
        let status = response.status();
        let retry_after = retry_after_secs(response.headers());
        let body = read_body_prefix(&mut response).await;
        if status.is_success() {
            return Attempt::Done(PushOutcome::Accepted);
        }

        let error = FcmErrorBody::parse(&body);
        let class = classify(status, error.code.as_deref());
        let code = error
            .code
            .clone()
            .or_else(|| error.status.clone())
            .unwrap_or_else(|| format!("http {}", status.as_u16()));
        let retryable = class == Class::Transient
            && (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error());
        let reason = match retry_after {
            Some(secs) if retryable => format!("{code} retry-after={secs}s"),
            _ => code,
        };
        let message = error.message.as_deref().unwrap_or("");
        if error.code.as_deref() == Some("INVALID_ARGUMENT") || status == StatusCode::BAD_REQUEST {
            tracing::warn!(
                provider = %self.name,
                push_id = %request.id,
                pn_prid = %redact_token(&request.pn_prid),
                status = status.as_u16(),
                reason = %reason,
                message,
                "FCM refused the message as invalid; dropping the token"
            );
        } else {
            tracing::debug!(
                provider = %self.name,
                push_id = %request.id,
                pn_prid = %redact_token(&request.pn_prid),
                status = status.as_u16(),
                reason = %reason,
                message,
                "FCM push refused"
            );
        }
        match class {
            Class::Permanent => Attempt::Done(PushOutcome::permanent(reason)),
            Class::Unauthenticated => Attempt::Unauthenticated(PushOutcome::transient(reason)),
            Class::Transient => match retry_after {
                Some(secs) if retryable => {
                    Attempt::RetryAfter(PushOutcome::transient(reason), Duration::from_secs(secs))
                }
                _ => Attempt::Done(PushOutcome::transient(reason)),
            },
        }
    }

    /// A valid access token (cached or freshly fetched), or the transient outcome to report.
    async fn access_token(&self, request: &PushRequest) -> Result<String, PushOutcome> {
        let Some(left) = request.time_left() else {
            return Err(PushOutcome::transient(reasons::DEADLINE_EXPIRED));
        };
        // Waiting for the lock (another push fetching) counts against this push's deadline.
        let Ok(mut state) = tokio::time::timeout(left, self.token.lock()).await else {
            return Err(PushOutcome::transient(format!(
                "oauth2 {}",
                reasons::TIMEOUT
            )));
        };
        let now = Instant::now();
        if let Some(cached) = &state.token {
            if now < cached.refresh_at {
                return Ok(cached.access_token.clone());
            }
        }
        if let Some((reason, until)) = &state.failure {
            if now < *until {
                return Err(PushOutcome::transient(reason.clone()));
            }
        }
        match self.fetch_token(request).await {
            Ok((access_token, expires_in)) => {
                let refresh_at = Instant::now()
                    + expires_in
                        .checked_sub(self.refresh_margin)
                        .unwrap_or_default();
                state.token = Some(CachedToken {
                    access_token: access_token.clone(),
                    refresh_at,
                });
                state.failure = None;
                Ok(access_token)
            }
            Err(reason) => {
                tracing::warn!(
                    provider = %self.name,
                    push_id = %request.id,
                    token_url = %self.token_url,
                    reason = %reason,
                    "cannot get an FCM access token"
                );
                if !self.failure_backoff.is_zero() {
                    state.failure = Some((reason.clone(), Instant::now() + self.failure_backoff));
                }
                Err(PushOutcome::transient(reason))
            }
        }
    }

    /// Drops the cached access token if it is still `token` (FCM refused it).
    async fn forget_token(&self, token: &str) {
        let mut state = self.token.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|cached| cached.access_token == token)
        {
            state.token = None;
        }
    }

    /// Signs the assertion and exchanges it for an access token. Errors are reason strings.
    async fn fetch_token(&self, request: &PushRequest) -> Result<(String, Duration), String> {
        let Some(left) = request.time_left() else {
            return Err(reasons::DEADLINE_EXPIRED.to_owned());
        };
        let assertion = self.sign_assertion()?;
        let form = format!("grant_type={JWT_BEARER_GRANT}&assertion={assertion}");
        let response = self
            .client
            .post(self.token_url.clone())
            .timeout(self.timeout.min(left))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(
                    provider = %self.name,
                    error = %error,
                    "OAuth2 token request failed in transport"
                );
                return Err(format!("oauth2 {}", transport_reason(&error)));
            }
        };
        let status = response.status();
        let body = read_body_prefix(&mut response).await;
        let answer: TokenAnswer = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            let code = answer
                .error
                .as_deref()
                .and_then(sanitise)
                .unwrap_or_else(|| format!("http {}", status.as_u16()));
            tracing::debug!(
                provider = %self.name,
                status = status.as_u16(),
                error = %code,
                description = answer.error_description.as_deref().unwrap_or(""),
                "OAuth2 token endpoint refused the assertion"
            );
            return Err(format!("oauth2 {code}"));
        }
        match answer.access_token {
            Some(token) if !token.is_empty() && is_header_safe(&token) => {
                let expires_in = Duration::from_secs(answer.expires_in.unwrap_or(3600));
                Ok((token, expires_in))
            }
            _ => Err("oauth2 invalid token response".to_owned()),
        }
    }

    /// The signed RS256 JWT-bearer assertion.
    fn sign_assertion(&self) -> Result<String, String> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: self.token_url.as_str(),
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        jsonwebtoken::encode(&header, &claims, &self.signing_key).map_err(|e| {
            tracing::warn!(provider = %self.name, error = %e, "cannot sign OAuth2 assertion");
            "oauth2 signing failed".to_owned()
        })
    }
}

impl PushProvider for FcmProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(self.push(request))
    }
}

/// Claims of the JWT-bearer assertion (RFC 7523 §3, Google's `scope` extension).
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The token endpoint's JSON answer (success or RFC 6749 §5.2 error).
#[derive(Debug, Default, Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

/// How an FCM error answer is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The token (or the message for it) is bad: forget the token.
    Permanent,
    /// Anything worth trying again later.
    Transient,
    /// Our access token was refused: refresh it and retry once.
    Unauthenticated,
}

/// Maps an FCM error answer to its class; see the module docs. The error code wins.
fn classify(status: StatusCode, code: Option<&str>) -> Class {
    match code {
        Some("UNREGISTERED" | "INVALID_ARGUMENT" | "SENDER_ID_MISMATCH") => Class::Permanent,
        Some("THIRD_PARTY_AUTH_ERROR" | "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => {
            Class::Transient
        }
        _ => match status.as_u16() {
            400 | 404 => Class::Permanent,
            401 => Class::Unauthenticated,
            _ => Class::Transient,
        },
    }
}

/// The parts of an FCM error body (`google.rpc.Status`) that matter.
#[derive(Debug, Default)]
struct FcmErrorBody {
    /// `errorCode` of the `FcmError` detail, sanitised.
    code: Option<String>,
    /// `error.status`, e.g. `UNAUTHENTICATED`, sanitised.
    status: Option<String>,
    /// `error.message`, sanitised and bounded.
    message: Option<String>,
}

impl FcmErrorBody {
    fn parse(body: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Self::default();
        };
        let error = &value["error"];
        let code = error["details"].as_array().and_then(|details| {
            details
                .iter()
                .filter_map(|d| d["errorCode"].as_str())
                .find_map(sanitise)
        });
        let message = error["message"].as_str().map(|m| {
            m.chars()
                .take(MAX_MESSAGE_CHARS)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        });
        Self {
            code,
            status: error["status"].as_str().and_then(sanitise),
            message,
        }
    }
}

/// The `message` object sent to FCM; see the module docs.
fn message_body(request: &PushRequest) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    let mut put = |key: &str, value: &str| {
        let value: String = value.chars().take(MAX_DATA_VALUE_CHARS).collect();
        data.insert(key.to_owned(), serde_json::Value::String(value));
    };
    put("kind", request.kind.as_str());
    put("push_id", &request.id);
    put("call_id", &request.call_id);
    put("callee_aor", &request.callee_aor);
    put("caller_uri", &request.caller_uri);
    if let Some(name) = &request.caller_display_name {
        put("caller_display_name", name);
    }
    let deadline_ms = request
        .deadline
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    put("deadline_unix_ms", &deadline_ms.to_string());
    // A cut token or URL is useless: whole, or left out (the call still wakes the app).
    for (key, value) in [
        ("answer_token", &request.answer_token),
        ("answer_url", &request.answer_url),
    ] {
        let Some(value) = value else { continue };
        if value.chars().count() <= MAX_DATA_VALUE_CHARS {
            data.insert(key.to_owned(), serde_json::Value::String(value.clone()));
        } else {
            tracing::warn!(
                push_id = %request.id,
                chars = value.chars().count(),
                "{key} longer than {MAX_DATA_VALUE_CHARS} characters: left out of the FCM push"
            );
        }
    }

    let ttl = request
        .time_left()
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .min(MAX_TTL_SECS);
    // A call must wake the phone at once; a binding refresh can wait for the next window.
    let priority = match request.kind {
        PushKind::IncomingCall => "HIGH",
        PushKind::BindingRefresh => "NORMAL",
    };
    serde_json::json!({
        "message": {
            "token": request.pn_prid,
            "data": data,
            "android": {"priority": priority, "ttl": format!("{ttl}s")},
        }
    })
}

/// `Bearer <token>`, marked sensitive so it stays out of debug output.
fn bearer(token: &str) -> reqwest::header::HeaderValue {
    // Tokens are checked with `is_header_safe` before they are cached.
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer"));
    value.set_sensitive(true);
    value
}

/// `true` if the token can go in an HTTP header (visible ASCII).
fn is_header_safe(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

/// `true` if `id` can be a Firebase / Google Cloud project id and is safe in a URL path.
///
/// Project ids are lowercase letters, digits and hyphens; older domain-scoped ids look like
/// `example.com:project`. Upper case and `_` are tolerated; nothing else is.
fn is_project_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
        && !id.starts_with('.')
}

/// Parses a configured base URL; only `http` and `https` are accepted.
fn parse_http_url(what: &'static str, raw: &str) -> Result<Url, FcmError> {
    let url = Url::parse(raw).map_err(|e| FcmError::InvalidUrl {
        what,
        url: raw.to_owned(),
        reason: e.to_string(),
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(FcmError::InvalidUrl {
            what,
            url: raw.to_owned(),
            reason: "scheme must be http or https".to_owned(),
        });
    }
    Ok(url)
}

/// Stable reason for a reqwest transport error.
fn transport_reason(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        reasons::TIMEOUT
    } else if error.is_connect() {
        reasons::CONNECT_FAILED
    } else {
        reasons::TRANSPORT_ERROR
    }
}

/// `Retry-After` in delay-seconds form (an HTTP-date is ignored).
fn retry_after_secs(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

/// Reads at most [`MAX_BODY`] bytes of the body; stops quietly on error or timeout.
async fn read_body_prefix(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// Keeps a service-supplied code usable as a metric label: `[A-Za-z0-9_.-]` only.
fn sanitise(raw: &str) -> Option<String> {
    super::clean_label(raw, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).expect("valid status")
    }

    #[test]
    fn error_codes_win_over_statuses() {
        assert_eq!(
            classify(status(404), Some("UNREGISTERED")),
            Class::Permanent
        );
        assert_eq!(
            classify(status(400), Some("UNREGISTERED")),
            Class::Permanent
        );
        assert_eq!(
            classify(status(403), Some("SENDER_ID_MISMATCH")),
            Class::Permanent
        );
        assert_eq!(
            classify(status(401), Some("THIRD_PARTY_AUTH_ERROR")),
            Class::Transient
        );
        assert_eq!(classify(status(400), Some("INTERNAL")), Class::Transient);
    }

    #[test]
    fn statuses_without_codes() {
        assert_eq!(classify(status(404), None), Class::Permanent);
        assert_eq!(classify(status(400), None), Class::Permanent);
        assert_eq!(classify(status(401), None), Class::Unauthenticated);
        for code in [403, 408, 429, 500, 502, 503, 302] {
            assert_eq!(classify(status(code), None), Class::Transient, "{code}");
        }
    }

    #[test]
    fn error_body_is_parsed() {
        let body = br#"{"error":{"code":404,"message":"Requested entity\nwas not found.",
            "status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest"},
            {"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError",
             "errorCode":"UNREGISTERED"}]}}"#;
        let parsed = FcmErrorBody::parse(body);
        assert_eq!(parsed.code.as_deref(), Some("UNREGISTERED"));
        assert_eq!(parsed.status.as_deref(), Some("NOT_FOUND"));
        assert_eq!(
            parsed.message.as_deref(),
            Some("Requested entity was not found.")
        );
        assert!(FcmErrorBody::parse(b"<html>").code.is_none());
    }

    #[test]
    fn project_ids_are_checked() {
        for ok in ["my-project-123", "example.com:proj", "Legacy_Id"] {
            assert!(is_project_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "../x", "a b", "p?x", "p#x", "p%2F", ".hidden"] {
            assert!(!is_project_id(bad), "{bad}");
        }
    }

    const ANSWER_TOKEN: &str =
        "pa1.3f2a9c01d4e5b6a7.12.3.1767225632.0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const ANSWER_URL: &str = "https://sip.example.com:5443/v1/calls/answer";

    fn call_push() -> PushRequest {
        PushRequest {
            id: "push-1".to_owned(),
            kind: PushKind::IncomingCall,
            callee_aor: "sip:alice@example.com".to_owned(),
            pn_provider: "fcm".to_owned(),
            pn_prid: "fcm-device-token".to_owned(),
            pn_param: None,
            caller_uri: "sip:bob@example.org".to_owned(),
            caller_display_name: Some("Bob".to_owned()),
            call_id: "call-1@example.org".to_owned(),
            deadline: SystemTime::now() + Duration::from_secs(30),
            answer_token: Some(ANSWER_TOKEN.to_owned()),
            answer_url: Some(ANSWER_URL.to_owned()),
        }
    }

    #[test]
    fn answer_token_and_url_are_data_strings_beside_the_call_id() {
        let body = message_body(&call_push());
        let data = body["message"]["data"].as_object().expect("data object");
        assert_eq!(data["answer_token"], serde_json::json!(ANSWER_TOKEN));
        assert_eq!(data["answer_url"], serde_json::json!(ANSWER_URL));
        assert_eq!(data["call_id"], serde_json::json!("call-1@example.org"));
        assert_eq!(data.len(), 9, "{data:?}");
        assert!(data.values().all(serde_json::Value::is_string));
    }

    #[test]
    fn answer_keys_are_absent_without_the_app_api() {
        let mut request = call_push();
        request.answer_token = None;
        request.answer_url = None;
        let body = message_body(&request);
        let data = body["message"]["data"].as_object().expect("data object");
        assert!(!data.contains_key("answer_token"), "{data:?}");
        assert!(!data.contains_key("answer_url"), "{data:?}");
        assert_eq!(data.len(), 7, "{data:?}");
    }

    #[test]
    fn an_answer_value_too_long_for_fcm_is_left_out_not_cut() {
        let mut request = call_push();
        let long_url = format!(
            "https://sip.example.com/{}",
            "a".repeat(MAX_DATA_VALUE_CHARS)
        );
        request.answer_url = Some(long_url);
        let body = message_body(&request);
        let data = &body["message"]["data"];
        assert!(data.get("answer_url").is_none(), "{data}");
        assert_eq!(data["answer_token"], ANSWER_TOKEN);

        // Exactly at the limit it is sent whole.
        let url = format!(
            "https://{}",
            "a".repeat(MAX_DATA_VALUE_CHARS - "https://".len())
        );
        request.answer_url = Some(url.clone());
        let body = message_body(&request);
        assert_eq!(body["message"]["data"]["answer_url"], url.as_str());
    }

    #[test]
    fn sanitise_bounds_and_cleans() {
        assert_eq!(sanitise(" UNREGISTERED ").as_deref(), Some("UNREGISTERED"));
        assert_eq!(sanitise("a b\n").as_deref(), Some("a_b"));
        assert_eq!(sanitise(&"x".repeat(100)).map(|s| s.len()), Some(64));
        assert_eq!(sanitise("  "), None);
    }
}
