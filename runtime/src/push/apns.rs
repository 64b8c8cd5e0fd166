//! The `apns` provider: Apple PushKit VoIP pushes over the APNs HTTP/2 provider API, on the
//! [`a2`] crate.
//!
//! # Request
//!
//! One `POST /3/device/<pn-prid>` per push, to `api.push.apple.com` (production) or
//! `api.development.push.apple.com` (sandbox), with:
//!
//! | header | value |
//! |---|---|
//! | `apns-push-type` | `voip` |
//! | `apns-topic` | from the binding's `pn-param` (RFC 8599 §10: `<TeamID>.<bundle-id>.voip`, the topic is everything after the first `.`), else `<fallback_bundle_id>.voip` |
//! | `apns-priority` | `10` (immediate) |
//! | `apns-expiration` | [`PushRequest::deadline_unix_secs`]: APNs may store and retry the push until the parked call gives up, never longer |
//! | `apns-id`, `apns-collapse-id` | not sent (APNs generates the `apns-id`; it is logged) |
//! | `authorization` | `bearer <JWT>` with token auth; nothing with certificate auth (TLS client certificate) |
//!
//! **Environment**: a binding whose `pn-provider` is `apns.dev` (the de-facto value for
//! development builds, as used by Flexisip) is pushed to the sandbox; any other `pn-provider`
//! routed to this provider (normally `apns`) goes to [`ApnsConfig::environment`] (production by
//! default). a2 fixes the endpoint per client, so the provider keeps one a2 client (one
//! HTTP/2 connection pool) per environment, built on first use.
//!
//! **Topic**: when the `pn-param` is absent or malformed (no `.`, empty team or topic), the
//! configured [`ApnsConfig::fallback_bundle_id`] gives the topic `<bundle>.voip`; without a
//! fallback the push fails (see the table below). The team id before the first `.` is only
//! compared (for a log line) with the configured team id under token auth.
//!
//! **Device token**: the `pn-prid` must be hexadecimal (RFC 8599 §10: the hex-encoded APNs
//! token); anything else is refused locally as `BadDeviceToken`, which is what APNs would say.
//!
//! # Payload
//!
//! A JSON object of at most [`MAX_VOIP_PAYLOAD_BYTES`] bytes, with no `aps` dictionary (VoIP
//! pushes show no alert; the app must report the call to CallKit as soon as it gets the push):
//!
//! ```json
//! {"kind":"incoming_call","push_id":"7-3-12","call_id":"a84b4c76e66710@pc33",
//!  "callee_aor":"sip:alice@example.com","caller_uri":"sip:bob@example.org",
//!  "caller_display_name":"Bob","deadline_unix_ms":1767225600000}
//! ```
//!
//! `caller_display_name` is left out when the INVITE had none. When the payload would exceed
//! the limit, the display name is shortened (at a character boundary, ending in `…`) or dropped;
//! the ids and URIs are never cut. A payload that is still too large is refused locally
//! (`PayloadTooLarge`, transient). The app matches the INVITE that follows by `call_id`.
//!
//! # Outcomes
//!
//! `reason` is APNs's own reason name (the JSON `reason` of the error body), or `http <status>`
//! when a2 could not parse the body: a2 0.10's `ErrorReason` lacks the newer `ExpiredToken` and
//! `InvalidPushType`, so those arrive without a reason and are classified by status alone.
//! "loud" means logged at `error` level: a configuration or code problem that an operator must
//! fix, and that must **not** make the registrar forget device tokens.
//!
//! | status / reason | outcome | why |
//! |---|---|---|
//! | 200 | accepted | |
//! | 410 `Unregistered`, 410 without a known reason (`ExpiredToken`) | **permanent** | the token is dead |
//! | 400 `BadDeviceToken` | **permanent** | bad token, or a token of the other environment (the binding's `pn-provider` is wrong): it can never work for this binding |
//! | 400 `DeviceTokenNotForTopic` | **permanent** | the token does not belong to the binding's topic |
//! | 400 `BadTopic`, topic from the binding's `pn-param` | **permanent** | the binding's push parameters are unusable; it must re-register with good ones |
//! | 400 `BadTopic`, topic from the fallback bundle id | transient, loud | our configuration |
//! | 403 `ExpiredProviderToken` | re-sign, retry once | see below; transient `ExpiredProviderToken` if the retry is impossible or fails the same way |
//! | 403 `InvalidProviderToken`, `MissingProviderToken`, `BadCertificate`, `BadCertificateEnvironment`, `Forbidden`; 403 without a known reason | transient, loud | our credentials |
//! | 400 `TopicDisallowed` | transient, loud | our credentials do not cover the topic: adding the app's key or certificate fixes it, so its tokens are kept |
//! | 429 `TooManyProviderTokenUpdates` | transient, loud | we re-signed too often |
//! | 400 `BadCollapseId`, `BadExpirationDate`, `BadMessageId`, `BadPriority`, `DuplicateHeaders`, `MissingTopic`, `MissingDeviceToken`, `PayloadEmpty`; 404 `BadPath`; 405 `MethodNotAllowed`; 413 `PayloadTooLarge`; 400 or 413 without a known reason (`InvalidPushType`) | transient, loud | our request is malformed: the same request cannot succeed, but the token is not at fault |
//! | 429 `TooManyRequests` | transient | back off for this token (the core's retry delay) |
//! | 400 `IdleTimeout`, 500 `InternalServerError`, 503 `ServiceUnavailable`, 503 `Shutdown`, other statuses | transient | APNs side; the connection is replaced by hyper when it closes |
//! | no answer before `min(timeout, deadline)` | transient [`reasons::TIMEOUT`] | |
//! | connection not established / other transport error | transient [`reasons::CONNECT_FAILED`] / [`reasons::TRANSPORT_ERROR`] | |
//! | request could not be signed / built by a2 | transient, loud, [`CREDENTIALS_ERROR`] / [`REQUEST_BUILD_ERROR`] | |
//!
//! Refused locally, before anything is sent:
//!
//! | condition | outcome |
//! |---|---|
//! | deadline already passed | transient [`reasons::DEADLINE_EXPIRED`] |
//! | `pn-prid` empty or not hexadecimal | **permanent** `BadDeviceToken` |
//! | `pn-param` malformed and no fallback bundle id | **permanent** `BadTopic` |
//! | `pn-param` absent and no fallback bundle id | transient, loud, `MissingTopic` (configure the fallback) |
//! | payload over the limit even without a display name | transient `PayloadTooLarge` |
//!
//! # Re-signing (token auth)
//!
//! a2 mints the JWT when a client is built and renews it itself after 55 minutes (APNs rejects
//! tokens older than 60 minutes), so `ExpiredProviderToken` should only follow a clock problem.
//! a2 has no call to force a new JWT, so on `ExpiredProviderToken` the provider replaces that
//! environment's client with a newly built one (which signs a fresh JWT with `iat` = now, on a
//! new connection) and retries the push once, if the deadline has not passed. Concurrent pushes
//! that hit the same expired client share one rebuild. A client younger than 20 minutes is not
//! replaced (APNs answers `TooManyProviderTokenUpdates` to more frequent updates, and a fresh
//! token that is already "expired" means our clock is wrong): the push then fails transiently
//! and the problem is logged loudly.
//!
//! # Credentials
//!
//! * Token (`.p8`): the PKCS#8 PEM of an ES256 key, its 10-character key id, the team id.
//! * Certificate, PKCS#12 (`.p12` as exported from Keychain, legacy 3DES/RC2 or AES): parsed
//!   in pure Rust (`p12-keystore`), the first key with its certificate chain is used.
//! * Certificate, PEM: certificate chain and private key, in one file or two. The key must be
//!   PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 RSA (`BEGIN RSA PRIVATE KEY`, converted here);
//!   encrypted and SEC1 EC keys are refused with a hint.
//!
//! Files are read once, when the provider is built; the credentials are checked then by
//! building the client of the default environment (no network I/O). TLS is rustls with the
//! compiled-in webpki roots: no system OpenSSL.
//!
//! # Timeouts
//!
//! Each attempt is bounded by `min(ApnsConfig::timeout, time left until the deadline)` with
//! `tokio::time::timeout` (a2's own per-request timeout, in whole seconds, is set to the
//! configured timeout as a backstop).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use a2::request::payload::PayloadLike;
use a2::{ErrorReason, NotificationOptions, Priority, PushType};
use base64::Engine as _;
use serde::Serialize;

use super::{reasons, redact_token, PushFuture, PushKind, PushOutcome, PushProvider, PushRequest};

/// Largest VoIP payload APNs accepts, in bytes (other push types: 4096).
pub const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;

/// The `pn-provider` value that selects the sandbox (development) environment.
pub const SANDBOX_PN_PROVIDER: &str = "apns.dev";

/// Reason for a transient failure: a2 could not sign the request or build its client (bad key,
/// certificate, TLS configuration). Logged loudly.
pub const CREDENTIALS_ERROR: &str = "credentials error";

/// Reason for a transient failure: a2 could not build the HTTP request (e.g. a header value
/// that is not valid in HTTP). Logged loudly.
pub const REQUEST_BUILD_ERROR: &str = "request build error";

/// A client is not rebuilt to re-sign its JWT before it is this old (APNs's rule: update the
/// provider token at most once every 20 minutes).
const RESIGN_MIN_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// How long an idle connection to APNs is kept (a2's default).
const POOL_IDLE_TIMEOUT_SECS: u64 = 600;

/// The APNs environment a push is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ApnsEnvironment {
    /// `api.push.apple.com`: App Store, TestFlight and ad-hoc builds.
    #[default]
    Production,
    /// `api.development.push.apple.com`: builds signed for development.
    Sandbox,
}

impl ApnsEnvironment {
    /// Stable lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ApnsEnvironment::Production => "production",
            ApnsEnvironment::Sandbox => "sandbox",
        }
    }

    fn endpoint(self) -> a2::Endpoint {
        match self {
            ApnsEnvironment::Production => a2::Endpoint::Production,
            ApnsEnvironment::Sandbox => a2::Endpoint::Sandbox,
        }
    }
}

/// Where key or certificate material comes from.
#[derive(Clone)]
pub enum KeySource {
    /// The file's content, already in memory.
    Bytes(Vec<u8>),
    /// A file, read once when the provider is built.
    Path(PathBuf),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Bytes(bytes) => write!(f, "Bytes(<{} bytes>)", bytes.len()),
            KeySource::Path(path) => f.debug_tuple("Path").field(path).finish(),
        }
    }
}

impl KeySource {
    fn load(&self) -> Result<Vec<u8>, ApnsError> {
        match self {
            KeySource::Bytes(bytes) => Ok(bytes.clone()),
            KeySource::Path(path) => std::fs::read(path).map_err(|source| ApnsError::Read {
                path: path.clone(),
                source,
            }),
        }
    }
}

/// How the provider authenticates to APNs.
#[derive(Clone)]
pub enum ApnsAuth {
    /// Token-based (JWT, ES256) authentication with a `.p8` key from the developer account.
    Token {
        /// The `.p8` file: a PKCS#8 PEM EC P-256 private key.
        key: KeySource,
        /// The key's 10-character key id (JWT `kid`).
        key_id: String,
        /// The 10-character team id (JWT `iss`).
        team_id: String,
    },
    /// A VoIP Services certificate exported as PKCS#12 (`.p12`).
    Pkcs12 {
        /// The `.p12` file.
        file: KeySource,
        /// Its password (may be empty).
        password: String,
    },
    /// A VoIP Services certificate as PEM.
    Pem {
        /// The certificate chain (leaf first); may also hold the private key.
        cert: KeySource,
        /// The private key, when it is not in `cert`.
        key: Option<KeySource>,
    },
}

impl fmt::Debug for ApnsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApnsAuth::Token {
                key,
                key_id,
                team_id,
            } => f
                .debug_struct("Token")
                .field("key", key)
                .field("key_id", key_id)
                .field("team_id", team_id)
                .finish(),
            ApnsAuth::Pkcs12 { file, .. } => f
                .debug_struct("Pkcs12")
                .field("file", file)
                .field("password", &"<redacted>")
                .finish(),
            ApnsAuth::Pem { cert, key } => f
                .debug_struct("Pem")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

/// Configuration of an [`ApnsProvider`].
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// Name reported to logs and metrics (default `apns`).
    pub name: String,
    /// Credentials.
    pub auth: ApnsAuth,
    /// Environment for every `pn-provider` except [`SANDBOX_PN_PROVIDER`] (default production).
    pub environment: ApnsEnvironment,
    /// Bundle id (e.g. `com.example.app`) whose `<bundle>.voip` topic is used when a binding's
    /// `pn-param` is absent or malformed. A value already ending in `.voip` is used as is.
    pub fallback_bundle_id: Option<String>,
    /// Upper bound for one attempt (connect + send + answer); the request's deadline may
    /// shorten it. Default 10 s.
    pub timeout: Duration,
}

impl ApnsConfig {
    /// A configuration with defaults for everything but the credentials.
    pub fn new(auth: ApnsAuth) -> Self {
        Self {
            name: "apns".to_owned(),
            auth,
            environment: ApnsEnvironment::Production,
            fallback_bundle_id: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Token-based authentication with a `.p8` key.
    pub fn token(key: KeySource, key_id: impl Into<String>, team_id: impl Into<String>) -> Self {
        Self::new(ApnsAuth::Token {
            key,
            key_id: key_id.into(),
            team_id: team_id.into(),
        })
    }

    /// Certificate authentication with a PKCS#12 file.
    pub fn pkcs12(file: KeySource, password: impl Into<String>) -> Self {
        Self::new(ApnsAuth::Pkcs12 {
            file,
            password: password.into(),
        })
    }

    /// Certificate authentication with PEM files (`key` `None`: the key is in `cert`).
    pub fn pem(cert: KeySource, key: Option<KeySource>) -> Self {
        Self::new(ApnsAuth::Pem { cert, key })
    }
}

/// An [`ApnsProvider`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    /// A key or certificate file could not be read.
    #[error("cannot read {path:?}: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A required setting is empty.
    #[error("APNs setting {0} must not be empty")]
    Empty(&'static str),
    /// A timeout of zero was configured.
    #[error("APNs timeout must be greater than zero")]
    ZeroTimeout,
    /// The PKCS#12 file could not be decoded (wrong password, unsupported algorithm...).
    #[error("cannot read PKCS#12 file: {0}")]
    Pkcs12(String),
    /// The PKCS#12 file or PEM has no usable private key.
    #[error("no private key found: {0}")]
    NoPrivateKey(&'static str),
    /// The PKCS#12 file or PEM has no certificate.
    #[error("no certificate found")]
    NoCertificate,
    /// The private key is in a form this provider does not read.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(&'static str),
    /// a2 refused the credentials (bad key, certificate, TLS configuration).
    #[error("cannot build the APNs client: {0}")]
    Client(#[from] a2::Error),
}

/// Credentials as a2 takes them.
enum Credentials {
    Token {
        key_pem: Vec<u8>,
        key_id: String,
        team_id: String,
    },
    Certificate {
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token {
                key_id, team_id, ..
            } => write!(f, "Token {{ key_id: {key_id:?}, team_id: {team_id:?} }}"),
            Credentials::Certificate { .. } => f.write_str("Certificate"),
        }
    }
}

impl Credentials {
    fn load(auth: &ApnsAuth) -> Result<Self, ApnsError> {
        match auth {
            ApnsAuth::Token {
                key,
                key_id,
                team_id,
            } => {
                if key_id.trim().is_empty() {
                    return Err(ApnsError::Empty("key_id"));
                }
                if team_id.trim().is_empty() {
                    return Err(ApnsError::Empty("team_id"));
                }
                Ok(Credentials::Token {
                    key_pem: key.load()?,
                    key_id: key_id.trim().to_owned(),
                    team_id: team_id.trim().to_owned(),
                })
            }
            ApnsAuth::Pkcs12 { file, password } => {
                let (cert_pem, key_pem) = pkcs12_to_pem(&file.load()?, password)?;
                Ok(Credentials::Certificate { cert_pem, key_pem })
            }
            ApnsAuth::Pem { cert, key } => {
                let cert_pem = cert.load()?;
                let key_pem = match key {
                    Some(key) => key.load()?,
                    None => cert_pem.clone(),
                };
                if !contains(&cert_pem, b"-----BEGIN CERTIFICATE-----") {
                    return Err(ApnsError::NoCertificate);
                }
                let key_pem = pkcs8_key_pem(&key_pem)?;
                Ok(Credentials::Certificate { cert_pem, key_pem })
            }
        }
    }

    fn team_id(&self) -> Option<&str> {
        match self {
            Credentials::Token { team_id, .. } => Some(team_id),
            Credentials::Certificate { .. } => None,
        }
    }

    /// Builds an a2 client: no I/O; with token auth, signs a fresh JWT (`iat` = now).
    fn client(
        &self,
        environment: ApnsEnvironment,
        timeout: Duration,
    ) -> Result<a2::Client, a2::Error> {
        let mut config = a2::ClientConfig::new(environment.endpoint());
        // a2's own timeout, whole seconds, as a backstop to ours.
        config.request_timeout_secs = Some(timeout.as_secs_f64().ceil().max(1.0) as u64);
        config.pool_idle_timeout_secs = Some(POOL_IDLE_TIMEOUT_SECS);
        match self {
            Credentials::Token {
                key_pem,
                key_id,
                team_id,
            } => a2::Client::token(
                key_pem.as_slice(),
                key_id.as_str(),
                team_id.as_str(),
                config,
            ),
            Credentials::Certificate { cert_pem, key_pem } => {
                a2::Client::certificate_parts(cert_pem, key_pem, config)
            }
        }
    }
}

/// One a2 client (and so one HTTP/2 connection pool and, with token auth, one JWT).
struct ClientSlot {
    client: a2::Client,
    built: Instant,
}

/// Sends PushKit VoIP pushes through APNs. Cheap to share; one HTTP/2 connection pool per
/// environment. See the module docs for the request, payload and outcome rules.
pub struct ApnsProvider {
    name: String,
    credentials: Credentials,
    default_environment: ApnsEnvironment,
    fallback_topic: Option<String>,
    timeout: Duration,
    /// [`RESIGN_MIN_INTERVAL`]; a field so tests can shorten it.
    resign_min_interval: Duration,
    production: Mutex<Option<Arc<ClientSlot>>>,
    sandbox: Mutex<Option<Arc<ClientSlot>>>,
}

impl fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("name", &self.name)
            .field("credentials", &self.credentials)
            .field("default_environment", &self.default_environment)
            .field("fallback_topic", &self.fallback_topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ApnsProvider {
    /// Reads the credentials and checks them by building the client of the configured
    /// environment. Does no network I/O.
    pub fn new(config: ApnsConfig) -> Result<Self, ApnsError> {
        if config.timeout.is_zero() {
            return Err(ApnsError::ZeroTimeout);
        }
        let fallback_topic = match config.fallback_bundle_id.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(ApnsError::Empty("fallback_bundle_id")),
            Some(bundle) if bundle.ends_with(".voip") => Some(bundle.to_owned()),
            Some(bundle) => Some(format!("{bundle}.voip")),
        };
        let credentials = Credentials::load(&config.auth)?;
        let provider = Self {
            name: config.name,
            credentials,
            default_environment: config.environment,
            fallback_topic,
            timeout: config.timeout,
            resign_min_interval: RESIGN_MIN_INTERVAL,
            production: Mutex::new(None),
            sandbox: Mutex::new(None),
        };
        provider.client(provider.default_environment)?;
        Ok(provider)
    }

    /// The environment a request goes to: sandbox for `pn-provider` `apns.dev`, else the
    /// configured one.
    pub fn environment_for(&self, request: &PushRequest) -> ApnsEnvironment {
        if request
            .pn_provider
            .eq_ignore_ascii_case(SANDBOX_PN_PROVIDER)
        {
            ApnsEnvironment::Sandbox
        } else {
            self.default_environment
        }
    }

    fn slot(&self, environment: ApnsEnvironment) -> &Mutex<Option<Arc<ClientSlot>>> {
        match environment {
            ApnsEnvironment::Production => &self.production,
            ApnsEnvironment::Sandbox => &self.sandbox,
        }
    }

    /// The environment's client, built on first use.
    fn client(&self, environment: ApnsEnvironment) -> Result<Arc<ClientSlot>, a2::Error> {
        let mut slot = self
            .slot(environment)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = slot.as_ref() {
            return Ok(Arc::clone(current));
        }
        let fresh = Arc::new(ClientSlot {
            client: self.credentials.client(environment, self.timeout)?,
            built: Instant::now(),
        });
        *slot = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Replaces `used` (a client whose JWT APNs called expired) by a newly built client with a
    /// fresh JWT. Returns the client to retry with, or why not.
    fn resign(
        &self,
        environment: ApnsEnvironment,
        used: &Arc<ClientSlot>,
    ) -> Result<Arc<ClientSlot>, &'static str> {
        if !matches!(self.credentials, Credentials::Token { .. }) {
            return Err("certificate auth has no provider token to renew");
        }
        let mut slot = self
            .slot(environment)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = slot.as_ref() {
            if !Arc::ptr_eq(current, used) {
                // Another push already re-signed.
                return Ok(Arc::clone(current));
            }
        }
        if used.built.elapsed() < self.resign_min_interval {
            return Err("the token was signed less than 20 minutes ago: check the system clock");
        }
        let client = self
            .credentials
            .client(environment, self.timeout)
            .map_err(|_| "the key could not sign a new token")?;
        let fresh = Arc::new(ClientSlot {
            client,
            built: Instant::now(),
        });
        *slot = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Builds what is sent for `request` (pure: no I/O, no client needed).
    fn prepare(&self, request: &PushRequest) -> Result<ApnsRequest, Verdict> {
        // iOS 13+ kills apps that get a VoIP push they do not report to CallKit as a call:
        // a new push kind must be mapped to another push type here, never sent as `voip`.
        match request.kind {
            PushKind::IncomingCall => {}
            // A refresh is no call: as a VoIP push it would get the app killed.
            PushKind::BindingRefresh => {
                return Err(Verdict::Misconfigured(
                    "refresh push to a VoIP token".into(),
                ))
            }
        }
        let token = request.pn_prid.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Verdict::TokenDead("BadDeviceToken".to_owned()));
        }

        let (topic, topic_source) = match parse_pn_param(request.pn_param.as_deref()) {
            Ok((team, topic)) => {
                if let Some(ours) = self.credentials.team_id() {
                    if !team.eq_ignore_ascii_case(ours) {
                        tracing::debug!(
                            provider = %self.name,
                            push_id = %request.id,
                            pn_param_team = team,
                            team_id = ours,
                            "pn-param team id differs from the configured team id"
                        );
                    }
                }
                (topic.to_owned(), TopicSource::PnParam)
            }
            Err(problem) => match &self.fallback_topic {
                Some(fallback) => (fallback.clone(), TopicSource::Fallback),
                None => {
                    return Err(match problem {
                        PnParamProblem::Missing => Verdict::Misconfigured("MissingTopic".into()),
                        PnParamProblem::Malformed => Verdict::TokenDead("BadTopic".into()),
                    })
                }
            },
        };

        let deadline_unix_ms = request
            .deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let payload = VoipPayload {
            kind: request.kind.as_str(),
            push_id: request.id.clone(),
            call_id: request.call_id.clone(),
            callee_aor: request.callee_aor.clone(),
            caller_uri: request.caller_uri.clone(),
            caller_display_name: request.caller_display_name.clone(),
            deadline_unix_ms,
        };
        let (payload, payload_json) = fit_payload(payload, MAX_VOIP_PAYLOAD_BYTES)
            .ok_or_else(|| Verdict::Transient("PayloadTooLarge".to_owned()))?;

        Ok(ApnsRequest {
            environment: self.environment_for(request),
            device_token: token.to_owned(),
            topic,
            topic_source,
            expiration: request.deadline_unix_secs(),
            payload,
            payload_json,
        })
    }

    async fn push(&self, request: &PushRequest) -> PushOutcome {
        if request.time_left().is_none() {
            return PushOutcome::transient(reasons::DEADLINE_EXPIRED);
        }
        let prepared = match self.prepare(request) {
            Ok(prepared) => prepared,
            Err(verdict) => return self.report(request, None, verdict),
        };
        let environment = prepared.environment;
        let mut slot = match self.client(environment) {
            Ok(slot) => slot,
            Err(error) => {
                tracing::error!(provider = %self.name, %error, "cannot build the APNs client");
                return PushOutcome::transient(CREDENTIALS_ERROR);
            }
        };
        let mut resigned = false;
        loop {
            let Some(left) = request.time_left() else {
                return PushOutcome::transient(reasons::TIMEOUT);
            };
            let sent = tokio::time::timeout(
                self.timeout.min(left),
                slot.client.send(prepared.notification()),
            )
            .await;
            let verdict = match sent {
                Ok(result) => classify(&result, prepared.topic_source),
                Err(_elapsed) => Verdict::Transient(reasons::TIMEOUT.to_owned()),
            };
            if verdict != Verdict::Resign || resigned {
                return self.report(request, Some(&prepared), verdict);
            }
            resigned = true;
            match self.resign(environment, &slot) {
                Ok(fresh) => {
                    tracing::info!(
                        provider = %self.name,
                        environment = environment.as_str(),
                        push_id = %request.id,
                        "APNs said ExpiredProviderToken: retrying with a freshly signed token"
                    );
                    slot = fresh;
                }
                Err(why) => {
                    tracing::error!(
                        provider = %self.name,
                        environment = environment.as_str(),
                        push_id = %request.id,
                        why,
                        "APNs said ExpiredProviderToken and the token cannot be renewed now"
                    );
                    return PushOutcome::transient("ExpiredProviderToken");
                }
            }
        }
    }

    /// Logs a verdict at the level it deserves and turns it into an outcome.
    fn report(
        &self,
        request: &PushRequest,
        prepared: Option<&ApnsRequest>,
        verdict: Verdict,
    ) -> PushOutcome {
        let environment = prepared.map_or("", |p| p.environment.as_str());
        let topic = prepared.map_or("", |p| p.topic.as_str());
        let prid = redact_token(&request.pn_prid);
        match &verdict {
            Verdict::Accepted => {}
            Verdict::TokenDead(reason) => tracing::info!(
                provider = %self.name, push_id = %request.id, pn_prid = %prid, environment,
                topic, reason = %reason, "APNs push refused: token or binding unusable"
            ),
            Verdict::Transient(reason) => tracing::debug!(
                provider = %self.name, push_id = %request.id, pn_prid = %prid, environment,
                topic, reason = %reason, "APNs push failed (transient)"
            ),
            Verdict::Misconfigured(reason) => tracing::error!(
                provider = %self.name, push_id = %request.id, pn_prid = %prid, environment,
                topic, reason = %reason,
                "APNs push refused because of our credentials, configuration or request; \
                 the device token is kept"
            ),
            Verdict::Resign => tracing::error!(
                provider = %self.name, push_id = %request.id, environment,
                "APNs said ExpiredProviderToken again after re-signing: check the system clock"
            ),
        }
        verdict.into_outcome()
    }
}

impl PushProvider for ApnsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(self.push(request))
    }
}

/// Where the `apns-topic` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicSource {
    /// The binding's `pn-param`.
    PnParam,
    /// [`ApnsConfig::fallback_bundle_id`].
    Fallback,
}

/// What a response (or failure) means for the push.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// 200.
    Accepted,
    /// Permanent: the token (or the binding's push parameters) can never work.
    TokenDead(String),
    /// Transient, nothing for an operator to do.
    Transient(String),
    /// Transient, and an operator must fix our credentials, configuration or request.
    Misconfigured(String),
    /// `ExpiredProviderToken`: sign a new JWT and retry once.
    Resign,
}

impl Verdict {
    fn into_outcome(self) -> PushOutcome {
        match self {
            Verdict::Accepted => PushOutcome::Accepted,
            Verdict::TokenDead(reason) => PushOutcome::permanent(reason),
            Verdict::Transient(reason) | Verdict::Misconfigured(reason) => {
                PushOutcome::transient(reason)
            }
            Verdict::Resign => PushOutcome::transient("ExpiredProviderToken"),
        }
    }
}

/// Maps what a2 returned to a verdict; see the table in the module docs.
fn classify(result: &Result<a2::Response, a2::Error>, topic_source: TopicSource) -> Verdict {
    let response = match result {
        Ok(response) if response.code == 200 => return Verdict::Accepted,
        Ok(response) => response,
        Err(a2::Error::ResponseError(response)) => response,
        Err(a2::Error::RequestTimeout(_)) => return Verdict::Transient(reasons::TIMEOUT.into()),
        Err(a2::Error::ClientError(error)) => {
            let reason = if error.is_connect() {
                reasons::CONNECT_FAILED
            } else {
                reasons::TRANSPORT_ERROR
            };
            return Verdict::Transient(reason.into());
        }
        Err(a2::Error::ConnectionError(_)) => {
            return Verdict::Transient(reasons::TRANSPORT_ERROR.into())
        }
        Err(
            a2::Error::SignerError(_)
            | a2::Error::ReadError(_)
            | a2::Error::Tls(_)
            | a2::Error::UnexpectedKey(_)
            | a2::Error::InvalidCertificate,
        ) => return Verdict::Misconfigured(CREDENTIALS_ERROR.into()),
        Err(
            a2::Error::SerializeError(_)
            | a2::Error::InvalidOptions(_)
            | a2::Error::BuildRequestError(_),
        ) => return Verdict::Misconfigured(REQUEST_BUILD_ERROR.into()),
    };

    let Some(body) = &response.error else {
        let reason = format!("http {}", response.code);
        return match response.code {
            // 410's reasons are Unregistered (parsed) and ExpiredToken (unknown to a2).
            410 => Verdict::TokenDead(reason),
            // An unknown 400 reason is more likely a new request error (InvalidPushType)
            // than a token error; 403 is always about our credentials.
            400 | 403 | 404 | 405 | 413 => Verdict::Misconfigured(reason),
            _ => Verdict::Transient(reason),
        };
    };
    let reason = reason_name(&body.reason);
    match body.reason {
        ErrorReason::Unregistered
        | ErrorReason::BadDeviceToken
        | ErrorReason::DeviceTokenNotForTopic => Verdict::TokenDead(reason),
        ErrorReason::BadTopic => match topic_source {
            TopicSource::PnParam => Verdict::TokenDead(reason),
            TopicSource::Fallback => Verdict::Misconfigured(reason),
        },
        ErrorReason::ExpiredProviderToken => Verdict::Resign,
        ErrorReason::InvalidProviderToken
        | ErrorReason::MissingProviderToken
        | ErrorReason::BadCertificate
        | ErrorReason::BadCertificateEnvironment
        | ErrorReason::Forbidden
        | ErrorReason::TopicDisallowed
        | ErrorReason::TooManyProviderTokenUpdates
        | ErrorReason::BadCollapseId
        | ErrorReason::BadExpirationDate
        | ErrorReason::BadMessageId
        | ErrorReason::BadPriority
        | ErrorReason::DuplicateHeaders
        | ErrorReason::MissingDeviceToken
        | ErrorReason::MissingTopic
        | ErrorReason::PayloadEmpty
        | ErrorReason::BadPath
        | ErrorReason::MethodNotAllowed
        | ErrorReason::PayloadTooLarge => Verdict::Misconfigured(reason),
        ErrorReason::TooManyRequests
        | ErrorReason::IdleTimeout
        | ErrorReason::InternalServerError
        | ErrorReason::ServiceUnavailable
        | ErrorReason::Shutdown => Verdict::Transient(reason),
    }
}

/// APNs's own name of a reason: a2's variant names are the JSON strings it deserialises
/// (`Display` gives a description instead).
fn reason_name(reason: &ErrorReason) -> String {
    format!("{reason:?}")
}

/// Why a `pn-param` gives no topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PnParamProblem {
    Missing,
    Malformed,
}

/// Splits an RFC 8599 §10 APNs `pn-param` into (team id, topic).
fn parse_pn_param(pn_param: Option<&str>) -> Result<(&str, &str), PnParamProblem> {
    let param = pn_param.map(str::trim).unwrap_or("");
    if param.is_empty() {
        return Err(PnParamProblem::Missing);
    }
    let (team, topic) = param.split_once('.').ok_or(PnParamProblem::Malformed)?;
    let valid_topic = !topic.is_empty()
        && !topic.starts_with('.')
        && !topic.ends_with('.')
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if team.is_empty() || !valid_topic {
        return Err(PnParamProblem::Malformed);
    }
    Ok((team, topic))
}

/// The JSON payload of a VoIP push (no `aps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct VoipPayload {
    kind: &'static str,
    push_id: String,
    call_id: String,
    callee_aor: String,
    caller_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller_display_name: Option<String>,
    deadline_unix_ms: u64,
}

/// Serialises `payload`, shortening (then dropping) the display name until it fits in `cap`
/// bytes. `None` if it does not fit even without a display name.
fn fit_payload(mut payload: VoipPayload, cap: usize) -> Option<(VoipPayload, String)> {
    let json = serde_json::to_string(&payload).ok()?;
    if json.len() <= cap {
        return Some((payload, json));
    }
    let name = payload.caller_display_name.take()?;
    let with = |chars: usize, payload: &mut VoipPayload| -> Option<String> {
        payload.caller_display_name = (chars > 0).then(|| {
            let end = name
                .char_indices()
                .nth(chars)
                .map_or(name.len(), |(i, _)| i);
            format!("{}…", &name[..end])
        });
        serde_json::to_string(payload).ok()
    };
    // Largest number of kept characters that fits: fits(lo) holds, fits(hi) does not.
    let (mut lo, mut hi) = (0, name.chars().count());
    if with(0, &mut payload)?.len() > cap {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if with(mid, &mut payload)?.len() <= cap {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let json = with(lo, &mut payload)?;
    Some((payload, json))
}

/// Everything sent for one push, built by [`ApnsProvider::prepare`].
#[derive(Debug, Clone)]
struct ApnsRequest {
    environment: ApnsEnvironment,
    device_token: String,
    topic: String,
    topic_source: TopicSource,
    expiration: u64,
    payload: VoipPayload,
    payload_json: String,
}

impl ApnsRequest {
    /// The APNs headers, as a2 takes them.
    fn options(&self) -> NotificationOptions<'_> {
        NotificationOptions {
            apns_id: None,
            apns_push_type: Some(PushType::Voip),
            apns_expiration: Some(self.expiration),
            apns_priority: Some(Priority::High),
            apns_topic: Some(&self.topic),
            apns_collapse_id: None,
        }
    }

    /// What a2 sends.
    fn notification(&self) -> Notification<'_> {
        Notification {
            options: self.options(),
            request: self,
        }
    }
}

/// An [`ApnsRequest`] as an a2 payload; its JSON is exactly the size-checked
/// [`ApnsRequest::payload_json`].
struct Notification<'a> {
    options: NotificationOptions<'a>,
    request: &'a ApnsRequest,
}

impl fmt::Debug for Notification<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("device_token", &redact_token(&self.request.device_token))
            .field("options", &self.options)
            .field("payload", &self.request.payload)
            .finish()
    }
}

impl Serialize for Notification<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.request.payload.serialize(serializer)
    }
}

impl PayloadLike for Notification<'_> {
    fn to_json_string(&self) -> Result<String, a2::Error> {
        Ok(self.request.payload_json.clone())
    }

    fn get_device_token(&self) -> &str {
        &self.request.device_token
    }

    fn get_options(&self) -> &NotificationOptions<'_> {
        &self.options
    }
}

// --- Credentials material ---------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn pem_encode(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem.into_bytes()
}

/// The base64 body of the first `label` PEM block, decoded. `None` if absent or not plain
/// base64 (e.g. an encrypted legacy PEM with `Proc-Type` headers).
fn pem_block(pem: &[u8], label: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The private key of `pem` as a PKCS#8 PEM (what a2 reads), converting PKCS#1 RSA keys.
fn pkcs8_key_pem(pem: &[u8]) -> Result<Vec<u8>, ApnsError> {
    if contains(pem, b"-----BEGIN PRIVATE KEY-----") {
        return Ok(pem.to_vec());
    }
    if contains(pem, b"-----BEGIN RSA PRIVATE KEY-----") {
        let pkcs1 = pem_block(pem, "RSA PRIVATE KEY").ok_or(ApnsError::UnsupportedKey(
            "encrypted or unreadable RSA key: decrypt it with `openssl pkcs8 -topk8 -nocrypt`",
        ))?;
        return Ok(pem_encode("PRIVATE KEY", &rsa_pkcs1_to_pkcs8(&pkcs1)));
    }
    if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(ApnsError::UnsupportedKey(
            "encrypted PKCS#8 key: decrypt it with `openssl pkcs8 -nocrypt`",
        ));
    }
    if contains(pem, b"-----BEGIN EC PRIVATE KEY-----") {
        return Err(ApnsError::UnsupportedKey(
            "SEC1 EC key: convert it with `openssl pkcs8 -topk8 -nocrypt`",
        ));
    }
    Err(ApnsError::NoPrivateKey("no PEM private key block"))
}

/// Wraps a PKCS#1 `RSAPrivateKey` in a PKCS#8 `PrivateKeyInfo` (RFC 5208).
fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend_from_slice(&RSA_ALGORITHM);
    body.extend(der_tlv(0x04, pkcs1));
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Extracts (certificate chain PEM, PKCS#8 key PEM) from a PKCS#12 file.
fn pkcs12_to_pem(der: &[u8], password: &str) -> Result<(Vec<u8>, Vec<u8>), ApnsError> {
    use p12_keystore::{KeyStore, Pkcs12ImportPolicy};

    let store = KeyStore::from_pkcs12(der, password, Pkcs12ImportPolicy::Strict)
        .map_err(|e| ApnsError::Pkcs12(e.to_string()))?;
    let (_alias, chain) = store.private_key_chain().ok_or(ApnsError::NoPrivateKey(
        "no key with a matching certificate",
    ))?;
    if chain.certs().is_empty() {
        return Err(ApnsError::NoCertificate);
    }
    let cert_pem = chain
        .certs()
        .iter()
        .flat_map(|cert| pem_encode("CERTIFICATE", cert.as_der()))
        .collect();
    let key_pem = pem_encode("PRIVATE KEY", chain.key().as_der());
    Ok((cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use base64::Engine as _;

    use super::*;

    // Throwaway test credentials, generated once with OpenSSL 3 for these tests only:
    // `openssl ecparam -genkey -name prime256v1 -noout | openssl pkcs8 -topk8 -nocrypt`, and a
    // self-signed RSA 2048 certificate exported as PKCS#12 (password `s3cret`) with the
    // default (AES/PBES2) and the legacy (3DES, SHA-1 MAC, as Keychain exports) algorithms.

    /// A P-256 `.p8`-style key.
    const TOKEN_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgD21lMJ48jkYwWvvI
Qh8SbGNZylGLUazhPyKajBsEQaGhRANCAAQ+B9L5BlYbCFlehjWKc4P4OGmL13R+
eK+Df9RkSZCaoHiAs+iYC5DvkSXtA1490Eldi2YCVGufXQPbgZdWomaR
-----END PRIVATE KEY-----
";

    /// The self-signed test certificate.
    const CERT_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIDoTCCAomgAwIBAgIUEUDLvkG2F3DAjmLXnJh3TmQFq6YwDQYJKoZIhvcNAQEL
BQAwXzEkMCIGCgmSJomT8ixkAQEMFGNvbS5leGFtcGxlLmFwcC52b2lwMTcwNQYD
VQQDDC5Wb0lQIFNlcnZpY2VzOiBjb20uZXhhbXBsZS5hcHAgKHB1c2hwYXJrIHRl
c3QpMCAXDTI2MTEyNzE5NDg0NFoYDzIxMjYxMTAzMTk0ODQ0WjBfMSQwIgYKCZIm
iZPyLGQBAQwUY29tLmV4YW1wbGUuYXBwLnZvaXAxNzA1BgNVBAMMLlZvSVAgU2Vy
dmljZXM6IGNvbS5leGFtcGxlLmFwcCAocHVzaHBhcmsgdGVzdCkwggEiMA0GCSqG
SIb3DQEBAQUAA4IBDwAwggEKAoIBAQDjaI4MX8xun9Dn7x3bbzgfbienVl2A/s8C
HAHA6TFFSUy9VBD9d+06Sp9ybbnVNGMTixK85TM7v48vglWS+8XY/cqNTST+tDQu
z2BY0FsVDS5zm8OWwz9FuGGfLMkUVgBUOwZTQ1U3TDjlosU9u8g6pNF/kb1/zMM2
d8FvtXLsFy6zGAQ1XFqPyRWX/KCwvX6mARr8X/8/NCbbldQ5uXUXmldwMjRdlHgk
1yM5lq1E/IXYfqQA6KhpYQrN085juRm0JqPpH0Csk6wdZhT6oeM24jvBG44e4jZE
69UAxR9M8EIBCS66iC9qt//vJYywT8/LP/o0nIiCDmkiOae/Mx67AgMBAAGjUzBR
MB0GA1UdDgQWBBSvx+iG7rK9cKk/gPhCn5IB/uKkHzAfBgNVHSMEGDAWgBSvx+iG
7rK9cKk/gPhCn5IB/uKkHzAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUA
A4IBAQAk+jsSPcRoXtPH+uJyARLLytg52ZSEvI5jypnBMn7yFE+jacBRtgaZRdnk
hMuTGLV+kgzGIuoEM19PjYhJClSbdHXBhazJrl60eZrOZReo7aPw1sQzQzYAiU99
1DkmADhox+rqjto2J9SY8nrLAXeyrJsJWCR2ER+zwM9Rs2jomV/dVGPfSNTvunlS
OapVgk3lhT4pvgCQ29ZBLpkQMUjOKjMXvOUIbKjMfue0U0skP8+ZBaBVAOaGfAbG
BsIeEjNf4DHDBenBUtA6C6g6ohDq/oi9Y05rHjkVammTs2HAtaHSN79KLEeY6MLF
gN9fEhFj0hktoEgL+VVgoYIZMZ+7
-----END CERTIFICATE-----
";

    /// Its key, PKCS#8.
    const KEY_PKCS8_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDjaI4MX8xun9Dn
7x3bbzgfbienVl2A/s8CHAHA6TFFSUy9VBD9d+06Sp9ybbnVNGMTixK85TM7v48v
glWS+8XY/cqNTST+tDQuz2BY0FsVDS5zm8OWwz9FuGGfLMkUVgBUOwZTQ1U3TDjl
osU9u8g6pNF/kb1/zMM2d8FvtXLsFy6zGAQ1XFqPyRWX/KCwvX6mARr8X/8/NCbb
ldQ5uXUXmldwMjRdlHgk1yM5lq1E/IXYfqQA6KhpYQrN085juRm0JqPpH0Csk6wd
ZhT6oeM24jvBG44e4jZE69UAxR9M8EIBCS66iC9qt//vJYywT8/LP/o0nIiCDmki
Oae/Mx67AgMBAAECggEAb3w1j2lzrpQY9WurpoU67WWyeP4FLxU8ZRtX3Lw11HLf
9T1+atTdbyNgUdfrL9PT8qPOlt6CpHr/9lmeHEXkM8IQB//W8CtmHcC6yi+zR3nD
2Rd25rVnkoWXDlMFbTvQQ3sAWdd7snViu2l16xLhUaa1siW/0iSPW2eQZHR/F7BF
Je6zvnqUBwJtgFyFScqGpr1ThTxW6XUsFo6ZVLqtgDU6NB1hzHk3iblwDKtDubHw
QhKQAKaNruuZHThMkOQRPxB3dogS+7bNiB9uMC8ateFSdKywLPJAEvZu/Kklt2KE
t0mEVPrwc0i4XnF8OtirmEDvgl6M+8fgZ8mbScEiAQKBgQD3Sw2EQD2RN/1LTC9E
hcwOVRkeu7JYtYfC1MuckkK7y/eZVqlfbbo7fAzdq4Z2xCJ5XFYJdMWBpGddaJ6D
SfNj4y/sHk4RsTi5igbeM0n9svblOtFUYKySO5DHRYIaqAx1LxhDpUpy3F29dvqN
HyHFYv2oDae2l2UbmprmAJ1FAQKBgQDrakXxWtwLIxOyPiUjEUOdrNDcSfxlWquS
2xzMIgqjP846XTN28OVqcXgmCHy/iw+wXDuVJLvUTFDCDK6GvygSldIJn1UGH89d
QhmQc8goJptw/m+7R5y6obq3ZhWGyYY3bo5NicDYNfap9n/2YKPsAqoUnSKsHUhK
3Prdaf63uwKBgBZiKLsLxYbbdoXWQ4EES1AQy9FIVABLjhpIgJWPd5LgB21Nts74
c57mv5Ng7y7Y2fX6MZ9xfl8ZrnF6Ar8HdoxYCAJrS822KNhCchSyt8PK6yYciM4G
YhhqY9Rlqj0XcOk6dgvJbk+vOpznpA4Z/0iKiUMo2UFhurkg6VxgOdwBAoGAclCY
xiqoz3+pANTMk8q+WsKgaVhEB7OPvTBJO5cMM1m4ev7nDsrLnHSdM1rLuPd+FtWy
2SmNS/oC/TfLSANrIhs+cw27681mlJKUd2DBwT1+HdBv0TFlGfuO/5/CtEEHu8Mj
tuM9kcAil0XrvWgQMXrZvEjRnWJayH+mEf52giECgYBQsH8dMGyuZtW+8bRiXnBq
moxelkgwoVOVnzOkJUJTy6sKr0BO3mKW4+Itv5twYMVKLeLhnqYCuPsRB6ygdzk2
/kvXuvIbdntRCLnh9evkAYsnI3ubGOc1MOyWZGGsFXAA0oA7EfestwGLPQAyGqgb
bB0r/c2cVgJ3UBqEHkPdxg==
-----END PRIVATE KEY-----
";

    /// The same key, PKCS#1 (`openssl rsa -traditional`).
    const KEY_PKCS1_PEM: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEA42iODF/Mbp/Q5+8d2284H24np1ZdgP7PAhwBwOkxRUlMvVQQ
/XftOkqfcm251TRjE4sSvOUzO7+PL4JVkvvF2P3KjU0k/rQ0Ls9gWNBbFQ0uc5vD
lsM/RbhhnyzJFFYAVDsGU0NVN0w45aLFPbvIOqTRf5G9f8zDNnfBb7Vy7BcusxgE
NVxaj8kVl/ygsL1+pgEa/F//PzQm25XUObl1F5pXcDI0XZR4JNcjOZatRPyF2H6k
AOioaWEKzdPOY7kZtCaj6R9ArJOsHWYU+qHjNuI7wRuOHuI2ROvVAMUfTPBCAQku
uogvarf/7yWMsE/Pyz/6NJyIgg5pIjmnvzMeuwIDAQABAoIBAG98NY9pc66UGPVr
q6aFOu1lsnj+BS8VPGUbV9y8NdRy3/U9fmrU3W8jYFHX6y/T0/KjzpbegqR6//ZZ
nhxF5DPCEAf/1vArZh3Ausovs0d5w9kXdua1Z5KFlw5TBW070EN7AFnXe7J1Yrtp
desS4VGmtbIlv9Ikj1tnkGR0fxewRSXus756lAcCbYBchUnKhqa9U4U8Vul1LBaO
mVS6rYA1OjQdYcx5N4m5cAyrQ7mx8EISkACmja7rmR04TJDkET8Qd3aIEvu2zYgf
bjAvGrXhUnSssCzyQBL2bvypJbdihLdJhFT68HNIuF5xfDrYq5hA74JejPvH4GfJ
m0nBIgECgYEA90sNhEA9kTf9S0wvRIXMDlUZHruyWLWHwtTLnJJCu8v3mVapX226
O3wM3auGdsQieVxWCXTFgaRnXWieg0nzY+Mv7B5OEbE4uYoG3jNJ/bL25TrRVGCs
kjuQx0WCGqgMdS8YQ6VKctxdvXb6jR8hxWL9qA2ntpdlG5qa5gCdRQECgYEA62pF
8VrcCyMTsj4lIxFDnazQ3En8ZVqrktsczCIKoz/OOl0zdvDlanF4Jgh8v4sPsFw7
lSS71ExQwgyuhr8oEpXSCZ9VBh/PXUIZkHPIKCabcP5vu0ecuqG6t2YVhsmGN26O
TYnA2DX2qfZ/9mCj7AKqFJ0irB1IStz63Wn+t7sCgYAWYii7C8WG23aF1kOBBEtQ
EMvRSFQAS44aSICVj3eS4AdtTbbO+HOe5r+TYO8u2Nn1+jGfcX5fGa5xegK/B3aM
WAgCa0vNtijYQnIUsrfDyusmHIjOBmIYamPUZao9F3DpOnYLyW5Przqc56QOGf9I
iolDKNlBYbq5IOlcYDncAQKBgHJQmMYqqM9/qQDUzJPKvlrCoGlYRAezj70wSTuX
DDNZuHr+5w7Ky5x0nTNay7j3fhbVstkpjUv6Av03y0gDayIbPnMNu+vNZpSSlHdg
wcE9fh3Qb9ExZRn7jv+fwrRBB7vDI7bjPZHAIpdF671oEDF62bxI0Z1iWsh/phH+
doIhAoGAULB/HTBsrmbVvvG0Yl5wapqMXpZIMKFTlZ8zpCVCU8urCq9ATt5iluPi
Lb+bcGDFSi3i4Z6mArj7EQesoHc5Nv5L17ryG3Z7UQi54fXr5AGLJyN7mxjnNTDs
lmRhrBVwANKAOxH3rLcBiz0AMhqoG2wdK/3NnFYCd1AahB5D3cY=
-----END RSA PRIVATE KEY-----
";

    /// Certificate + key as PKCS#12, OpenSSL 3 defaults (PBES2, AES-256-CBC).
    const P12_MODERN_B64: &str = "\
MIIKbwIBAzCCCiUGCSqGSIb3DQEHAaCCChYEggoSMIIKDjCCBIIGCSqGSIb3DQEHBqCCBHMwggRv\
AgEAMIIEaAYJKoZIhvcNAQcBMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAi0pibKl5gg\
ZgICCAAwDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEMq49Hwts9Vpn2rUDUGX3xSAggQAVGWy\
xur9hRVH7VU1AFpeeuV//hCBmTnbnMyclgcqDChGSXM3EcLRNozfDX+Won31/xCdzfPSx/RWqWIf\
H+2ZM9th7etvM0cfhrHqUwgM3nHvXy9RTqPdqu2CTIq5dLh3ua+lyHusuSK9qCA3V16cRYD7cVz+\
Hg65chduPitgx++OOYbtn73069oAEDO3e8eWhc0S/cisXgqKYdoj8tVY1z/7bjgsjrqL0VvRyZVC\
P7fWVUoK1SLoUHK69cRapaukhqDDANFEoe8JwrKrDQG9CDI4gx6mzISOgOv036AM72b5tzo/cwzT\
UfR7p7UvGkfZzTb0MYkOJTXza4p4KlHU4qKnGIn4p1oh2xxNCUej1kcwcm2Ru1DHxY+AxAqL7fqz\
NgIrEwa7+mjtejeFw2BblEp/H5X9OgkdDIRaa4Wu2aOWyVcelMpREz1V9hk1++XaJiDrqoLCs3jL\
uPrP967ultd1O60g/pg1P6iWdc3BtLQmkZndKNQfuuN2D+krIekxkallLYZJRGmJcyXZHS2kajtV\
q9YAwBsbi5OQPgMYOXHWF2guNYjshP9KQ077EIc6wH+XnEMeVA83VSOZeq1FnDPoPI2lCoHETyo/\
MIZoi2EJGu7OEuPGqDCR+JhR8SD1usApD0gWp0++okaIyYVCziHzAYcdoqSa7e1DRvG6lXlxz/tR\
PQgwQzFjLsy4Xyy+Vj5C+g2B5EOk4osVXvrSbJXggw9bHtjhaii71PiCn3fxPcxGTvFqKvae/4kJ\
a1hXKOY7Be48BEK1hHbqPtsGiqYBya2EGHJsBJ67L94pQz63+WxIk76C6ju0E86DL76FTRDlQdoG\
toyEQHqptfuR/aWjFcYOqCZs1NqL9cWdbSe5IXEwQsBn/irQafl5E2StPFZCn+peszCYvCZhskci\
biLF6DbR3v4pLvlPmAc+NJAYWhKMM5z/UtEDW1NYHrEqeYc1m4KA9KDpUI8JuOpzcKdFVssSa4uv\
UcQ4mmvgl+hPnAy+U1YH7GaBVH0yK5WKaPJXVowY7MGMWU29GeI0Ca25szI+F/e4Ag6Qh4otpNsS\
CjM338DONpWO8JLrKLY9aoefp8uUBkvXL1cBNKmnkVz74F3UhmaF+wQ6oHtUoF4+H1ClbdvXsL5P\
8YNXRzOkiOqnVsjZYvG3nWwZlyyn2CzoYRx6LmOsY/tjax+5ca2kxbL/hO7CEa9h0yKs9ohQxOzm\
Hrmd1IgWhiiCtzYJ3Men5S/gGNPtphTbyiOTgqwmgNNF1fNV8+srATysiMeNW55Xz5+27E1ZO5W2\
4zoXAOCTbd/SP27yOCxRnnYneCLt9DKnnCfy3QQABFGRo1Va6GD4jvyl2ZFkZBepCazsNTCCBYQG\
CSqGSIb3DQEHAaCCBXUEggVxMIIFbTCCBWkGCyqGSIb3DQEMCgECoIIFMTCCBS0wVwYJKoZIhvcN\
AQUNMEowKQYJKoZIhvcNAQUMMBwECI0pHcboiJPKAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFl\
AwQBKgQQkHkSb8iIjNwwk73yDCViHQSCBNBkgk5+2g+/gqoCsDRaKphnISvn+NbCF3WsvkDAFphB\
8VKMjHeMvMaIB+d5X8910TG4truGKEY8PYKrtM/pysN8zlNJTkmgicbd9Py37vpcOAbrP6TFBM7C\
hzra3gGTiq3mmEdnE67d+ZG7QE4zYyuUysZId7I9+94+u7oHKImO+ZU4hpqSFvizT4pluzFh3tod\
mpzRFkRAJWoOZzeM+EBO7Cg0n6HonU0XG0RYFi1CPspJHOtGq0ZLQXen1uFqw/6XciPaWch4CEKq\
wYOY54mslOH6Z78Yc/25IDzPQvXUezNAK4k/XiY3ocWf7y/J9F8TKZNpG0kBVMAXMzUrg+w/v3+T\
nDbNLvxm5YdwQaVWUwxsn3zGRMGDq2zLtkr+9+y8QuyCOMe3OzdEHl/63sUgtmPUTABc0f+DLx0d\
px359xKHVwrQ8+YIR0i5fPmy2VSTzUyavYYGkV/S+c3Io841GfSv5Dy1lUAFzwpeA0dJTxduIUwO\
LCCFjoYQjsEQ4rcSsEN5DRgZYSZCDOB2X3g4HFOqbAp+wqYykJqWdJdAVc6RIvyvn0R5tGdLAaT5\
620EsIuJsoKRDsXOlqBCbq+gvhSDS6YWdATu94tVF1RDSOLFAABgl8Cl67yvsZOzcQoWoNSWVvNS\
yVOoeychAWORB2ddkEKQ90jgdfY3h1tOKpVGjI7TRSHVeozln9wRRAWN/r3bBni2qFSYd69/LakE\
9OemPiF24fcwLbHaIEJTMbqGEzcINC92pGfm9ZrCrmi4Gv6YLwgY/RvdPfF5n5JtC1lJPasyTt4g\
aOyAisJaKNRpOfV4VRKy8rR95ogrpVaB4OqQ+sj3nl0SVkpOjWEFUSp7NeY7pgDFNh9iSG1ZdATP\
UyLcESPjCUG4w4iZ6U0FiBg+cJ/JeHBZS+O1PYIf1QABtiJPaPp+qwJmeBG9pH8iMx4/7JDKa1pX\
NPxR2mUr6XYTPY6ubP4Bv/fp+f3CLdKznrwkw42lNvQ0J9h7W5/Xk1vKjgQVrHtDc4FPpfu9on1P\
oU06NY8l8k0yhVTB3T/IvIYiJEMTZOBMzhqkrA0JxmCM3cA2En5vLFoYuxPHxWyR/leGrqCmF5Lp\
JS1XLk2WqC6/n7I9zLlf7egzCH/H850pPg2JH/L2N2IyCqt3f/5LnapY6QbGNcjWQY+/5wn+EGik\
1a+tuN6FHur6Qd7Z7o/WTYDkBuJ6j3PM9I58q79gqlKXPQSU0OrVK22RcIl84Qb62evTpp9Xlp0R\
pZ8D2Vn2YkrywxeisFFd//2MPSTpK+dg0HF7V7lktyLWuL51LJhHvUcQp6ypkoe7ArYMGCjIrZ/y\
Hw0s/TabJjN2xS+k/S5be7t3CCyLy4l6Qcd5Ji2eHLwVhL2ddoKTGCV9aH+xn6U//CTba5n0usSz\
JC2uSbGg/5pjjOSLx4c4CQnqE6xWhOLCtHGz4emICFJTRKVdmYHasDAzkrth5rNJ+62OiRxZqIX1\
PeFGYSZj6Mnsx8dzj/UFOUdAubOz61wBEAre0SFixBaRO3KO9JAC8OuPgzykWYUfH+rM0lzSpIRR\
tfE47uYrCOXnK32arzs/H0YfNEt9apEtiy5hzoLB+ct5EpFGaPHJktBh8m7ioRh6t7WtFYGjRzeR\
XOskizElMCMGCSqGSIb3DQEJFTEWBBTVegkLkytrjZgwuFVQ3iRXOEJCrjBBMDEwDQYJYIZIAWUD\
BAIBBQAEIAELgaO6p9pgo3COjnEhNrbSF4Qk1W7o1JjJVKLCZFDFBAjlI/kANMcHkAICCAA=\
";

    /// Certificate + key as PKCS#12, legacy 3DES with a SHA-1 MAC.
    const P12_LEGACY_B64: &str = "\
MIIJ4QIBAzCCCacGCSqGSIb3DQEHAaCCCZgEggmUMIIJkDCCBEcGCSqGSIb3DQEHBqCCBDgwggQ0\
AgEAMIIELQYJKoZIhvcNAQcBMBwGCiqGSIb3DQEMAQMwDgQIoiYqilSIDqQCAggAgIIEAJjiniLd\
FzvxSpoVeGotPGPvLG5eRW1sAIePsgfyk2uzYOykV+PadJgOP3uyPGSCrX6H6lEyHuLE7SyCRL5G\
/sCFzCg7XyV0/Wl34U4FuKS2kIwvwZ6B/JrUNN47ozjAEk7QPvXtByzRCond1Dq782XDOISWjbOp\
XN4OZIPiCeHH4sP8Y+279WiHVneE/sOrwS1X7kPZXPNMQbDkH2A0uCV2HWzOMgCXJykfY2Aaea11\
51l3saaEY3oixLeySuirU1MfAeS35Q1MLaxde42HGSog9Mwmnel72cck3vejc25kKuCE2DIoga63\
rrIZEBS64FTdbCOF5wM+Y2iskWpa+jhNq5ya3R11d33C9OIb88kY6hJxDbIQkBG+xa4NzXjqspqF\
LL1aBTj61hOvp6yyBSbYhL1Y52nBDgV3cCdez5jPYHdJq0eLaEnBqQS9njNPWmwr1t5yWNR24+ur\
8e9ZHJtKIlVnXv4hbpWvDl0tkI7cKIXHRg/7uRck8M5eUWb7XrzQ/snQfFKaJe+iCCzfU7pQLQvK\
QiSG3FyAtPdOHMmdqVl24IC6qCntbnc0Vj8fiTC/EuQxZkaSPmjSDo0n8IrJ31jEetybY59Hhtf2\
zEXubu4IHzXgT8ckJBSCVtrIsDQvGPHbqo/hBV3Ovx4qrffT2eeeD7Lhey9V3J21rTrJL3R+n3he\
IA52ds8XC+3dr0TZ2SgauOoYbQoxKppg0AefJ6nf3tvYX5AL84YfWXVYBjf459Fbljc2t9TdCXUY\
KB7vHrvrWSHH3cDfY1nHf8pb8jygXNnzg3v0etcr5ROSdvd2c0Ui8/aaSVzfca187DEW6VqwwqSI\
rANWljtySSal+ODll3scPmJfxlrcduSdkr/9Dw1sdGqE9q6kJyS63prQv23gwd1dz0z0Rh2/EZEY\
yOGjnpXl5ttu/vQtWhTEBPzPvGMaMTpJwxh4UpMTL1Y53PmWCt7jHxP7eCQRJSk+GD3GKonC/RoL\
HpuSvLzqSUT08ZEGx5JGy4i0eWOKFsa8p2aJL0+8jpoq3jPQZZh1k4JSUGG8rzvb7ln1K0/tYaAV\
IKiOsZv9O7bsjyq5gHlYEhJHsMfP4I8e0DNmvBZlLSbojMT1g6mkmY9EwBclYK2HbBgzrSjgTUaf\
6SuEjOzuXKw5yXKKTTwGtZxMFDA5xmgdM2nkchX+CDEK5MZbqypGB7egmQpxQSeb8i9NLz0c67PF\
H0Fg5Du+uhNEB2GGuek51mgKUQUyhJKxpOo5mC8M1JjLBFswn4A+vpmNlDKcXT7+HaE0aMNxklAJ\
zZjxPdAMMlF1mScxoppxsPGm901FCLUwyLGxC8LadGAXMujqR15kt79TQN1rj8hiNM8wggVBBgkq\
hkiG9w0BBwGgggUyBIIFLjCCBSowggUmBgsqhkiG9w0BDAoBAqCCBO4wggTqMBwGCiqGSIb3DQEM\
AQMwDgQIRDueg8qQv4UCAggABIIEyDaZrfIQPCt8GAfsEt21lUzCcAPFRfnCYqnUnN/8VU6QmmCU\
BvzBylwgtRmgS3uOJcOgJhWlkOSvHU/gh12eRw7e6iAYT1wCRXL6r+Nwf9g/2ggT6iGuILtms4xS\
BvGDm8KTanESiwbOJzhiR65g7amXoBHwWJTZMCCu0ca5DbzLaYjaRgoaNt4aXtb1KtREfLmEI/yz\
bWNoEyfUeU6ZEf0CPCm/bOG/TFTNqX6cUDUT7WKlZOQH6nCXuLMsVdxqZAe5lNUE8/6kZUFBWghJ\
jzl5dYq3xNJRcqrTNNgs00t042fjX1FM6uOAI9bWWVNs0AXgXbXSWRApUNExoy+1vUX6xQqcVwdf\
elsT7JV8HgmMNCGdV2OOPx+OSg6LRp9PN1wag4n4nTd9Fmg920SiW8drltzD3Fz1QoszgVdgrXnB\
H/7jXzeZWKKsVtxE7MFXnyzI+VGdo/wQ2EfW2sC+Yu8kJeGikry+LjvfHya99obkGv5DAynzCUNT\
7XvkHwjVMvvK6PF/7rA7Bjiayd6v8XEmUXIaM2C3rzNXVY8U1N8aG/HoU6XQDHbBRr4b7tilyzro\
Axr5PGzsfIG4AWnZEgwkaleXp6bBshFywTz2CynsvSje2dvOhkpnKS/Up8/mNW6Rutb4+GzRYVCQ\
044orXZGia3Kho/2lVKU/mBxwkq/wioYQWvgVodTXrMLOx7dfjs0lbLWbNPK9eTmhhzIC+JngtPs\
OigjLkkoMF9z2DK33SU7HY/MjY5CYhjjFuOKJUh7LvEDEk5eTPKf17yoHoWi1rXQn1FlzzlmmFfm\
p7SELDxpce0X043gq25XR6XOqjx8JalFbadIpe6fPaEjCvHA8uEagdrJx9mrOnHBSjra5DCLotm6\
MmeFuuI7GIISQ09V2Pt58N62XW5StoKi1WuUprp++ZALANAi5XFOArQaht1kV2Mxmpaaq63zfUaa\
LA+VTattHtHt2dMvzWMsJzCq0gEb8NLqnLfQ95BBlNQpS8wvglu0HTLcfqtPsmcwftXuBa2q1CNb\
7eTDHCo/9Ly4f6ZV2Zhrs9Bj0chMuS16cqg2zWOzGZQtlfWR/7tjhSJTFVaWpY9GMXb6e1OWn3lO\
APy2s75paQ+tk4OsCp4ZtcLKp47UAq7hD5ur0ZVz/XIlTf48U/JFIZW2NRQJsjKbdwaQ2p1bu2CM\
asgadHS4D7sWQCe5oSnqIzF2r1RXJZJOdTlG5J2reImZOeIDAC9gO9zNDkA3sWVTYiTWtMg4FjX/\
SnOLOMmcQ6b0QUwybyyoG/DA8wBKkDTVlaAp+BE7uTvkwhpYjtAR0Kzr8wsobLPijxeVeaP65vUJ\
WWd13nvaEHcc+9XWYaojF73rXM8eV9r662pPHZfRdU8Gf94Z1zY92qeWrCfjLutERbBtVg0ZbRe3\
MF+KvFWRLrvzlEbQJRIzv1HhK0aqXFsTiCXQ+B2EricOfuQnufdfDcZ9twTVbQMmE15M5DHF+rE3\
nEBvkPulkBk4LY9E5iKCemkAVrT+cAMrUdvio8wjmsqgmXe6tn2Irbl+WGtPML3bYZlqGeKgFnLq\
PIXSDeUNXLxsHaxGja1f2XjpH4+/o2/1hDV9ioLYhKKj2jN672cx4aEJYXF3IbhekjElMCMGCSqG\
SIb3DQEJFTEWBBTVegkLkytrjZgwuFVQ3iRXOEJCrjAxMCEwCQYFKw4DAhoFAAQUsEd8JTT+6ySv\
tpoX7RtLdlNxFFgECKVvXkCSYvw0AgIIAA==\
";

    const TEAM: &str = "ABCD1234EF";
    const KEY_ID: &str = "KEY1234567";
    const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn b64(data: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("test base64")
    }

    fn token_config() -> ApnsConfig {
        ApnsConfig::token(KeySource::Bytes(TOKEN_KEY.into()), KEY_ID, TEAM)
    }

    fn token_provider() -> ApnsProvider {
        ApnsProvider::new(token_config()).expect("token provider")
    }

    fn cert_provider() -> ApnsProvider {
        ApnsProvider::new(ApnsConfig::pem(
            KeySource::Bytes(CERT_PEM.into()),
            Some(KeySource::Bytes(KEY_PKCS8_PEM.into())),
        ))
        .expect("certificate provider")
    }

    fn request() -> PushRequest {
        PushRequest {
            id: "7-3-12".to_owned(),
            kind: PushKind::IncomingCall,
            callee_aor: "sip:alice@example.com".to_owned(),
            pn_provider: "apns".to_owned(),
            pn_prid: DEVICE.to_owned(),
            pn_param: Some(format!("{TEAM}.com.example.app.voip")),
            caller_uri: "sip:bob@example.org".to_owned(),
            caller_display_name: Some("Bob".to_owned()),
            call_id: "a84b4c76e66710@pc33.example.org".to_owned(),
            deadline: SystemTime::now() + Duration::from_secs(30),
        }
    }

    fn response(code: u16, reason: Option<ErrorReason>) -> Result<a2::Response, a2::Error> {
        Err(a2::Error::ResponseError(a2::Response {
            error: reason.map(|reason| a2::ErrorBody {
                reason,
                timestamp: None,
            }),
            apns_id: None,
            code,
        }))
    }

    fn verdict(code: u16, reason: ErrorReason) -> Verdict {
        classify(&response(code, Some(reason)), TopicSource::PnParam)
    }

    #[test]
    fn a_binding_refresh_is_never_sent_as_a_voip_push() {
        let provider = token_provider();
        let refresh = PushRequest {
            kind: PushKind::BindingRefresh,
            ..request()
        };
        assert!(
            matches!(provider.prepare(&refresh), Err(Verdict::Misconfigured(_))),
            "a refresh push to a VoIP token must be refused, and not as a dead token"
        );
        assert!(provider.prepare(&request()).is_ok());
    }

    // --- credentials ----------------------------------------------------------------------

    #[test]
    fn token_client_builds_offline_per_environment() {
        let provider = token_provider();
        let production = provider.client(ApnsEnvironment::Production).expect("prod");
        let sandbox = provider.client(ApnsEnvironment::Sandbox).expect("sandbox");
        assert!(
            !Arc::ptr_eq(&production, &sandbox),
            "one client per environment"
        );
        let again = provider.client(ApnsEnvironment::Sandbox).expect("sandbox");
        assert!(
            Arc::ptr_eq(&sandbox, &again),
            "a client is built once and reused"
        );
    }

    #[test]
    fn token_key_that_is_not_an_ec_key_is_refused() {
        let config = ApnsConfig::token(KeySource::Bytes(KEY_PKCS8_PEM.into()), KEY_ID, TEAM);
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Client(_))
        ));
        let config = ApnsConfig::token(KeySource::Bytes(b"not a key".to_vec()), KEY_ID, TEAM);
        assert!(ApnsProvider::new(config).is_err());
    }

    #[test]
    fn token_auth_requires_key_id_and_team_id() {
        let config = ApnsConfig::token(KeySource::Bytes(TOKEN_KEY.into()), " ", TEAM);
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Empty("key_id"))
        ));
        let config = ApnsConfig::token(KeySource::Bytes(TOKEN_KEY.into()), KEY_ID, "");
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Empty("team_id"))
        ));
    }

    #[test]
    fn key_is_read_from_a_path() {
        let path = std::env::temp_dir().join(format!("pushpark-apns-{}.p8", std::process::id()));
        std::fs::write(&path, TOKEN_KEY).expect("write key");
        let result = ApnsProvider::new(ApnsConfig::token(
            KeySource::Path(path.clone()),
            KEY_ID,
            TEAM,
        ));
        let _ = std::fs::remove_file(&path);
        result.expect("provider from a key file");

        let missing = ApnsConfig::token(KeySource::Path(path.clone()), KEY_ID, TEAM);
        assert!(matches!(
            ApnsProvider::new(missing),
            Err(ApnsError::Read { path: p, .. }) if p == path
        ));
    }

    #[test]
    fn pem_certificate_builds_from_one_or_two_files() {
        cert_provider();
        let combined = format!("{CERT_PEM}{KEY_PKCS8_PEM}");
        ApnsProvider::new(ApnsConfig::pem(KeySource::Bytes(combined.into()), None))
            .expect("cert and key in one PEM file");
    }

    #[test]
    fn pem_without_certificate_or_key_is_refused() {
        let no_cert = ApnsConfig::pem(KeySource::Bytes(KEY_PKCS8_PEM.into()), None);
        assert!(matches!(
            ApnsProvider::new(no_cert),
            Err(ApnsError::NoCertificate)
        ));
        let no_key = ApnsConfig::pem(KeySource::Bytes(CERT_PEM.into()), None);
        assert!(matches!(
            ApnsProvider::new(no_key),
            Err(ApnsError::NoPrivateKey(_))
        ));
    }

    #[test]
    fn pkcs1_rsa_key_becomes_the_pkcs8_key_openssl_writes() {
        let pkcs1 = pem_block(KEY_PKCS1_PEM.as_bytes(), "RSA PRIVATE KEY").expect("pkcs1");
        let pkcs8 = pem_block(KEY_PKCS8_PEM.as_bytes(), "PRIVATE KEY").expect("pkcs8");
        assert_eq!(rsa_pkcs1_to_pkcs8(&pkcs1), pkcs8);
        ApnsProvider::new(ApnsConfig::pem(
            KeySource::Bytes(CERT_PEM.into()),
            Some(KeySource::Bytes(KEY_PKCS1_PEM.into())),
        ))
        .expect("certificate with a PKCS#1 key");
    }

    #[test]
    fn encrypted_and_sec1_keys_are_refused_with_a_hint() {
        for label in ["ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY"] {
            let key = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            let config = ApnsConfig::pem(
                KeySource::Bytes(CERT_PEM.into()),
                Some(KeySource::Bytes(key.into())),
            );
            match ApnsProvider::new(config) {
                Err(ApnsError::UnsupportedKey(hint)) => assert!(hint.contains("openssl"), "{hint}"),
                other => panic!("{label}: {other:?}"),
            }
        }
    }

    #[test]
    fn pkcs12_modern_and_legacy_yield_the_certificate_and_key() {
        let cert_der = pem_block(CERT_PEM.as_bytes(), "CERTIFICATE").expect("cert");
        let key_der = pem_block(KEY_PKCS8_PEM.as_bytes(), "PRIVATE KEY").expect("key");
        for (name, p12) in [("modern", P12_MODERN_B64), ("legacy", P12_LEGACY_B64)] {
            let (cert_pem, key_pem) = pkcs12_to_pem(&b64(p12), "s3cret").expect(name);
            assert_eq!(
                pem_block(&cert_pem, "CERTIFICATE").as_deref(),
                Some(&cert_der[..]),
                "{name}"
            );
            assert_eq!(
                pem_block(&key_pem, "PRIVATE KEY").as_deref(),
                Some(&key_der[..]),
                "{name}"
            );
            ApnsProvider::new(ApnsConfig::pkcs12(KeySource::Bytes(b64(p12)), "s3cret"))
                .expect(name);
        }
    }

    #[test]
    fn pkcs12_with_wrong_password_is_refused() {
        let config = ApnsConfig::pkcs12(KeySource::Bytes(b64(P12_LEGACY_B64)), "wrong");
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Pkcs12(_))
        ));
    }

    #[test]
    fn zero_timeout_and_empty_fallback_are_refused() {
        let mut config = token_config();
        config.timeout = Duration::ZERO;
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::ZeroTimeout)
        ));
        let mut config = token_config();
        config.fallback_bundle_id = Some(" ".into());
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Empty("fallback_bundle_id"))
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = ApnsConfig::pkcs12(KeySource::Bytes(b64(P12_LEGACY_B64)), "s3cret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = format!("{:?}", token_provider());
        assert!(!shown.contains("BEGIN"), "{shown}");
    }

    // --- request building -----------------------------------------------------------------

    #[test]
    fn voip_headers_for_token_and_certificate_setups() {
        let request = request();
        for provider in [token_provider(), cert_provider()] {
            let prepared = provider.prepare(&request).expect("prepared");
            let options = prepared.options();
            assert_eq!(options.apns_push_type, Some(PushType::Voip));
            assert!(matches!(options.apns_priority, Some(Priority::High)));
            assert_eq!(
                options.apns_priority.as_ref().map(ToString::to_string),
                Some("10".to_owned())
            );
            assert_eq!(options.apns_topic, Some("com.example.app.voip"));
            assert_eq!(options.apns_expiration, Some(request.deadline_unix_secs()));
            assert!(options.apns_expiration > Some(0));
            assert!(options.apns_id.is_none());
            assert!(options.apns_collapse_id.is_none());
            assert_eq!(prepared.device_token, DEVICE);
            assert_eq!(prepared.environment, ApnsEnvironment::Production);
        }
    }

    #[test]
    fn topic_is_everything_after_the_first_dot_of_pn_param() {
        assert_eq!(
            parse_pn_param(Some("ABCD1234.com.example.app.voip")),
            Ok(("ABCD1234", "com.example.app.voip"))
        );
        let mut request = request();
        request.pn_param = Some("ABCD1234.com.example.app.voip".into());
        let prepared = token_provider().prepare(&request).expect("prepared");
        assert_eq!(prepared.topic, "com.example.app.voip");
        assert_eq!(prepared.topic_source, TopicSource::PnParam);
    }

    #[test]
    fn malformed_pn_params_are_recognised() {
        assert_eq!(parse_pn_param(None), Err(PnParamProblem::Missing));
        assert_eq!(parse_pn_param(Some("  ")), Err(PnParamProblem::Missing));
        for bad in [
            "ABCD1234",
            ".com.example.app.voip",
            "ABCD1234.",
            "ABCD1234..voip",
            "ABCD1234.com.example.",
            "ABCD1234.com example",
        ] {
            assert_eq!(
                parse_pn_param(Some(bad)),
                Err(PnParamProblem::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn apns_dev_goes_to_the_sandbox_and_everything_else_to_the_configured_environment() {
        let provider = token_provider();
        let mut request = request();
        for (pn_provider, expected) in [
            ("apns.dev", ApnsEnvironment::Sandbox),
            ("APNS.DEV", ApnsEnvironment::Sandbox),
            ("apns", ApnsEnvironment::Production),
            ("apple", ApnsEnvironment::Production),
        ] {
            request.pn_provider = pn_provider.into();
            let prepared = provider.prepare(&request).expect("prepared");
            assert_eq!(prepared.environment, expected, "{pn_provider}");
        }

        let mut config = token_config();
        config.environment = ApnsEnvironment::Sandbox;
        let sandbox_only = ApnsProvider::new(config).expect("provider");
        request.pn_provider = "apns".into();
        assert_eq!(
            sandbox_only
                .prepare(&request)
                .expect("prepared")
                .environment,
            ApnsEnvironment::Sandbox
        );
    }

    #[test]
    fn fallback_bundle_gives_the_topic_when_pn_param_is_missing_or_malformed() {
        for bundle in ["com.example.app", "com.example.app.voip"] {
            let mut config = token_config();
            config.fallback_bundle_id = Some(bundle.into());
            let provider = ApnsProvider::new(config).expect("provider");
            for pn_param in [None, Some("nodot".to_owned())] {
                let mut request = request();
                request.pn_param = pn_param;
                let prepared = provider.prepare(&request).expect("prepared");
                assert_eq!(prepared.topic, "com.example.app.voip", "{bundle}");
                assert_eq!(prepared.topic_source, TopicSource::Fallback);
            }
            // A good pn-param wins over the fallback.
            let mut request = request();
            request.pn_param = Some("T.org.other.app.voip".into());
            let prepared = provider.prepare(&request).expect("prepared");
            assert_eq!(prepared.topic, "org.other.app.voip");
        }
    }

    #[test]
    fn without_fallback_missing_pn_param_is_transient_and_malformed_is_permanent() {
        let provider = token_provider();
        let mut request = request();
        request.pn_param = None;
        let verdict = provider.prepare(&request).expect_err("no topic");
        assert_eq!(verdict, Verdict::Misconfigured("MissingTopic".into()));
        assert!(!verdict.into_outcome().is_permanent());

        request.pn_param = Some("nodot".into());
        let verdict = provider.prepare(&request).expect_err("bad topic");
        assert_eq!(verdict.into_outcome(), PushOutcome::permanent("BadTopic"));
    }

    #[test]
    fn non_hex_device_token_is_refused_as_bad_device_token() {
        let provider = token_provider();
        for prid in ["", "  ", "zz11", "a1b2/../x", "a1 b2"] {
            let mut request = request();
            request.pn_prid = prid.into();
            let verdict = provider.prepare(&request).expect_err(prid);
            assert_eq!(
                verdict.into_outcome(),
                PushOutcome::permanent("BadDeviceToken"),
                "{prid:?}"
            );
        }
    }

    #[test]
    fn payload_carries_the_call_and_no_aps() {
        let request = request();
        let prepared = token_provider().prepare(&request).expect("prepared");
        let json: serde_json::Value =
            serde_json::from_str(&prepared.payload_json).expect("payload is JSON");
        assert_eq!(json["kind"], "incoming_call");
        assert_eq!(json["push_id"], "7-3-12");
        assert_eq!(json["call_id"], "a84b4c76e66710@pc33.example.org");
        assert_eq!(json["callee_aor"], "sip:alice@example.com");
        assert_eq!(json["caller_uri"], "sip:bob@example.org");
        assert_eq!(json["caller_display_name"], "Bob");
        let deadline_ms = request
            .deadline
            .duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_millis();
        assert_eq!(
            json["deadline_unix_ms"].as_u64().map(u128::from),
            Some(deadline_ms)
        );
        assert!(json.get("aps").is_none(), "VoIP pushes carry no aps");

        let mut anonymous = request.clone();
        anonymous.caller_display_name = None;
        let prepared = token_provider().prepare(&anonymous).expect("prepared");
        assert!(!prepared.payload_json.contains("caller_display_name"));
    }

    #[test]
    fn what_a2_sends_is_the_size_checked_json() {
        let prepared = token_provider().prepare(&request()).expect("prepared");
        let notification = prepared.notification();
        assert_eq!(
            notification.to_json_string().expect("json"),
            prepared.payload_json
        );
        assert_eq!(
            serde_json::to_string(&notification).expect("json"),
            prepared.payload_json
        );
        assert_eq!(notification.get_device_token(), DEVICE);
        assert_eq!(
            notification.get_options().apns_push_type,
            Some(PushType::Voip)
        );
        assert!(
            !format!("{notification:?}").contains(DEVICE),
            "token redacted"
        );
    }

    #[test]
    fn huge_display_name_is_cut_to_fit_and_the_ids_are_kept() {
        for unit in ["x", "é", "😀", "\""] {
            let mut request = request();
            request.caller_display_name = Some(unit.repeat(20_000));
            let prepared = token_provider().prepare(&request).expect("prepared");
            assert!(
                prepared.payload_json.len() <= MAX_VOIP_PAYLOAD_BYTES,
                "{unit}: {} bytes",
                prepared.payload_json.len()
            );
            // Not cut more than needed: one more character would not fit.
            assert!(
                prepared.payload_json.len() + 8 > MAX_VOIP_PAYLOAD_BYTES,
                "{unit}: {} bytes",
                prepared.payload_json.len()
            );
            let json: serde_json::Value =
                serde_json::from_str(&prepared.payload_json).expect("payload is JSON");
            let name = json["caller_display_name"].as_str().expect("name kept");
            assert!(name.ends_with('…'), "{unit}");
            assert!(name
                .trim_end_matches('…')
                .chars()
                .all(|c| c.to_string() == unit));
            assert_eq!(json["push_id"], request.id);
            assert_eq!(json["call_id"], request.call_id);
            assert_eq!(json["callee_aor"], request.callee_aor);
            assert_eq!(json["caller_uri"], request.caller_uri);
        }
    }

    #[test]
    fn name_is_dropped_when_nothing_else_fits_and_oversize_ids_fail_transiently() {
        let mut request = request();
        request.caller_display_name = Some("Bob".into());
        // Leave room for the payload without the name, but not for "B…".
        let bare = serde_json::to_string(&VoipPayload {
            kind: "incoming_call",
            push_id: request.id.clone(),
            call_id: request.call_id.clone(),
            callee_aor: request.callee_aor.clone(),
            caller_uri: request.caller_uri.clone(),
            caller_display_name: None,
            deadline_unix_ms: 1,
        })
        .expect("json");
        let payload = VoipPayload {
            kind: "incoming_call",
            push_id: request.id.clone(),
            call_id: request.call_id.clone(),
            callee_aor: request.callee_aor.clone(),
            caller_uri: request.caller_uri.clone(),
            caller_display_name: Some("Bob".into()),
            deadline_unix_ms: 1,
        };
        let (fitted, json) = fit_payload(payload.clone(), bare.len()).expect("fits bare");
        assert_eq!(fitted.caller_display_name, None);
        assert_eq!(json, bare);
        assert!(fit_payload(payload, bare.len() - 1).is_none());

        request.caller_uri = format!("sip:{}@example.org", "b".repeat(6000));
        let verdict = token_provider().prepare(&request).expect_err("too large");
        assert_eq!(
            verdict.into_outcome(),
            PushOutcome::transient("PayloadTooLarge")
        );
    }

    // --- response mapping ----------------------------------------------------------------

    #[test]
    fn ok_is_accepted() {
        let ok = Ok(a2::Response {
            error: None,
            apns_id: Some("5C0B1F46-D4E4-4AE5-A3FD-0B1E1CF6C3F8".into()),
            code: 200,
        });
        assert_eq!(classify(&ok, TopicSource::PnParam), Verdict::Accepted);
        assert_eq!(
            classify(&ok, TopicSource::PnParam).into_outcome(),
            PushOutcome::Accepted
        );
    }

    #[test]
    fn dead_tokens_are_permanent_with_apns_reason_names() {
        for (code, reason, name) in [
            (410, ErrorReason::Unregistered, "Unregistered"),
            (400, ErrorReason::BadDeviceToken, "BadDeviceToken"),
            (
                400,
                ErrorReason::DeviceTokenNotForTopic,
                "DeviceTokenNotForTopic",
            ),
        ] {
            assert_eq!(
                verdict(code, reason).into_outcome(),
                PushOutcome::permanent(name)
            );
        }
    }

    #[test]
    fn gone_without_a_known_reason_is_permanent() {
        // ExpiredToken: a2 0.10 does not know it, so the body does not parse.
        let verdict = classify(&response(410, None), TopicSource::PnParam);
        assert_eq!(verdict.into_outcome(), PushOutcome::permanent("http 410"));
    }

    #[test]
    fn apns_side_and_throttling_failures_are_transient() {
        for (code, reason, name) in [
            (429, ErrorReason::TooManyRequests, "TooManyRequests"),
            (500, ErrorReason::InternalServerError, "InternalServerError"),
            (503, ErrorReason::ServiceUnavailable, "ServiceUnavailable"),
            (503, ErrorReason::Shutdown, "Shutdown"),
            (400, ErrorReason::IdleTimeout, "IdleTimeout"),
        ] {
            assert_eq!(verdict(code, reason), Verdict::Transient(name.into()));
        }
        for code in [429, 500, 502, 503, 504] {
            assert_eq!(
                classify(&response(code, None), TopicSource::PnParam),
                Verdict::Transient(format!("http {code}"))
            );
        }
    }

    #[test]
    fn timeouts_are_transient() {
        let verdict = classify(&Err(a2::Error::RequestTimeout(10)), TopicSource::PnParam);
        assert_eq!(
            verdict.into_outcome(),
            PushOutcome::transient(reasons::TIMEOUT)
        );
    }

    #[test]
    fn expired_provider_token_asks_for_a_new_signature() {
        assert_eq!(
            verdict(403, ErrorReason::ExpiredProviderToken),
            Verdict::Resign
        );
        // If it gets as far as an outcome, it is transient.
        assert_eq!(
            Verdict::Resign.into_outcome(),
            PushOutcome::transient("ExpiredProviderToken")
        );
    }

    #[test]
    fn credential_problems_are_transient_and_loud() {
        for (code, reason, name) in [
            (
                403,
                ErrorReason::InvalidProviderToken,
                "InvalidProviderToken",
            ),
            (
                403,
                ErrorReason::MissingProviderToken,
                "MissingProviderToken",
            ),
            (403, ErrorReason::BadCertificate, "BadCertificate"),
            (
                403,
                ErrorReason::BadCertificateEnvironment,
                "BadCertificateEnvironment",
            ),
            (403, ErrorReason::Forbidden, "Forbidden"),
            (400, ErrorReason::TopicDisallowed, "TopicDisallowed"),
            (
                429,
                ErrorReason::TooManyProviderTokenUpdates,
                "TooManyProviderTokenUpdates",
            ),
        ] {
            assert_eq!(verdict(code, reason), Verdict::Misconfigured(name.into()));
        }
        assert_eq!(
            classify(&response(403, None), TopicSource::PnParam),
            Verdict::Misconfigured("http 403".into())
        );
    }

    #[test]
    fn malformed_requests_are_transient_and_loud() {
        for (code, reason, name) in [
            (400, ErrorReason::BadCollapseId, "BadCollapseId"),
            (400, ErrorReason::BadExpirationDate, "BadExpirationDate"),
            (400, ErrorReason::BadMessageId, "BadMessageId"),
            (400, ErrorReason::BadPriority, "BadPriority"),
            (400, ErrorReason::DuplicateHeaders, "DuplicateHeaders"),
            (400, ErrorReason::MissingDeviceToken, "MissingDeviceToken"),
            (400, ErrorReason::MissingTopic, "MissingTopic"),
            (400, ErrorReason::PayloadEmpty, "PayloadEmpty"),
            (404, ErrorReason::BadPath, "BadPath"),
            (405, ErrorReason::MethodNotAllowed, "MethodNotAllowed"),
            (413, ErrorReason::PayloadTooLarge, "PayloadTooLarge"),
        ] {
            assert_eq!(verdict(code, reason), Verdict::Misconfigured(name.into()));
        }
        // InvalidPushType and other reasons a2 does not know.
        for code in [400, 413] {
            assert_eq!(
                classify(&response(code, None), TopicSource::PnParam),
                Verdict::Misconfigured(format!("http {code}"))
            );
        }
    }

    #[test]
    fn bad_topic_is_permanent_only_when_the_binding_chose_it() {
        assert_eq!(
            classify(
                &response(400, Some(ErrorReason::BadTopic)),
                TopicSource::PnParam
            )
            .into_outcome(),
            PushOutcome::permanent("BadTopic")
        );
        assert_eq!(
            classify(
                &response(400, Some(ErrorReason::BadTopic)),
                TopicSource::Fallback
            ),
            Verdict::Misconfigured("BadTopic".into())
        );
    }

    #[test]
    fn local_a2_errors_are_transient() {
        let io = std::io::Error::other("boom");
        assert_eq!(
            classify(&Err(a2::Error::ReadError(io)), TopicSource::PnParam),
            Verdict::Misconfigured(CREDENTIALS_ERROR.into())
        );
        assert_eq!(
            classify(&Err(a2::Error::InvalidCertificate), TopicSource::PnParam),
            Verdict::Misconfigured(CREDENTIALS_ERROR.into())
        );
        assert_eq!(
            classify(
                &Err(a2::Error::InvalidOptions("x".into())),
                TopicSource::PnParam
            ),
            Verdict::Misconfigured(REQUEST_BUILD_ERROR.into())
        );
    }

    // --- re-signing ----------------------------------------------------------------------

    #[test]
    fn resign_replaces_an_old_client_once_for_all_concurrent_pushes() {
        let mut provider = token_provider();
        provider.resign_min_interval = Duration::ZERO;
        let env = ApnsEnvironment::Production;
        let used = provider.client(env).expect("client");

        let fresh = provider.resign(env, &used).expect("re-signed");
        assert!(!Arc::ptr_eq(&fresh, &used), "a new client, so a new JWT");
        assert!(Arc::ptr_eq(&provider.client(env).expect("client"), &fresh));

        // A concurrent push that also used the old client gets the new one, no rebuild.
        let shared = provider.resign(env, &used).expect("already re-signed");
        assert!(Arc::ptr_eq(&shared, &fresh));
    }

    #[test]
    fn resign_refuses_a_client_signed_less_than_twenty_minutes_ago() {
        let provider = token_provider();
        let env = ApnsEnvironment::Production;
        let used = provider.client(env).expect("client");
        assert!(provider.resign(env, &used).is_err());
        assert!(Arc::ptr_eq(&provider.client(env).expect("client"), &used));
    }

    #[test]
    fn resign_is_refused_for_certificate_auth() {
        let mut provider = cert_provider();
        provider.resign_min_interval = Duration::ZERO;
        let used = provider
            .client(ApnsEnvironment::Production)
            .expect("client");
        assert!(provider.resign(ApnsEnvironment::Production, &used).is_err());
    }

    // --- send without network ------------------------------------------------------------

    #[tokio::test]
    async fn send_refuses_a_passed_deadline_without_sending() {
        let provider = token_provider();
        let mut request = request();
        request.deadline = SystemTime::now() - Duration::from_secs(1);
        assert_eq!(
            provider.send(&request).await,
            PushOutcome::transient(reasons::DEADLINE_EXPIRED)
        );
    }

    #[tokio::test]
    async fn send_refuses_a_bad_token_without_sending() {
        let provider = token_provider();
        let mut request = request();
        request.pn_prid = "not-hex".into();
        assert_eq!(
            provider.send(&request).await,
            PushOutcome::permanent("BadDeviceToken")
        );
        assert_eq!(provider.name(), "apns");
    }
}
