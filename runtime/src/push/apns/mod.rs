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
//!  "caller_display_name":"Bob","deadline_unix_ms":1767225600000,
//!  "answer_token":"pa1.3f2a9c01d4e5b6a7.12.3.1767225632.0f1e2d3c4b5a69788796a5b4c3d2e1f0",
//!  "answer_url":"https://sip.example.com:5443/v1/calls/answer"}
//! ```
//!
//! | key | value |
//! |---|---|
//! | `kind` | `incoming_call` (the only kind sent as a VoIP push) |
//! | `push_id` | [`PushRequest::id`]: unique per push |
//! | `call_id` | the SIP Call-ID of the parked INVITE: the app matches the INVITE that follows by it |
//! | `callee_aor`, `caller_uri` | the callee's address-of-record, the caller's From URI |
//! | `caller_display_name` | the caller's display name; left out when the INVITE had none |
//! | `deadline_unix_ms` | when the parked call gives up (ms since the Unix epoch) |
//! | `answer_token`, `answer_url` | with the app API on (`[app_api]`): the app may POST `{"token": "<answer_token>", "answer": "busy"}` (or `decline`, `ringing`) to `answer_url` instead of waking its SIP stack (specs/parking.md §9); both left out otherwise |
//!
//! When the payload would exceed the limit, the display name is shortened (at a character
//! boundary, ending in `…`) or dropped; the ids, URIs, answer token and answer URL are never
//! cut. A payload that is still too large is refused locally (`PayloadTooLarge`, transient).
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
//!
//! # Layout
//!
//! This module holds the configuration and the provider (its clients, re-signing and
//! sending); its private submodules `credentials` read keys and certificates, `payload` builds
//! what is sent, and `classify` maps APNs's answers to outcomes.

mod classify;
mod credentials;
mod payload;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use self::classify::{classify, Verdict};
pub use self::classify::{CREDENTIALS_ERROR, REQUEST_BUILD_ERROR};
use self::credentials::Credentials;
pub use self::credentials::{ApnsAuth, KeySource};
pub use self::payload::MAX_VOIP_PAYLOAD_BYTES;
use self::payload::{
    fit_payload, parse_pn_param, ApnsRequest, PnParamProblem, TopicSource, VoipPayload,
};
use super::{reasons, redact_token, PushFuture, PushKind, PushOutcome, PushProvider, PushRequest};

/// The `pn-provider` value that selects the sandbox (development) environment.
pub const SANDBOX_PN_PROVIDER: &str = "apns.dev";

/// A client is not rebuilt to re-sign its JWT before it is this old (APNs's rule: update the
/// provider token at most once every 20 minutes).
const RESIGN_MIN_INTERVAL: Duration = Duration::from_secs(20 * 60);

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

impl PushProvider for ApnsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(self.push(request))
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
            answer_token: request.answer_token.clone(),
            answer_url: request.answer_url.clone(),
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::test_support::{cert_provider, request, token_config, token_provider};
    use super::*;

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

    // --- request building -----------------------------------------------------------------

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
