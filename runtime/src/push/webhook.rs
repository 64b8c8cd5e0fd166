//! The `webhook` provider: JSON POST of the [`PushRequest`] to an operator's own push gateway.
//!
//! # Wire contract
//!
//! `POST <url>` with `Content-Type: application/json` and the [`PushRequest`] as body (see its
//! docs for the field names; `answer_token` and `answer_url` are `null` unless the push is a
//! call's and the app API is on), plus the configured auth header if any. With
//! [`WebhookFormat::Gorush`] the body is gorush's instead. The gateway answers:
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | [`PushOutcome::Accepted`] |
//! | 404, 410 | permanent (token unknown / gone) |
//! | 400 with JSON `{"reason": "...", "permanent": bool}` | as the body says (`permanent` defaults to `true`) |
//! | 401, 403, 407 | **transient**: our credentials towards the gateway are wrong, not the token |
//! | other 4xx | permanent |
//! | 408, 425, 429, 5xx | transient |
//! | 1xx/3xx (redirects are not followed) | transient |
//! | connection refused, timeout, transport error | transient |
//!
//! For every non-2xx answer, a JSON body with a string `reason` supplies the reason name
//! reported in [`PushOutcome::Failed`] (sanitised, at most 64 characters); otherwise the reason
//! is `http <status>`. Only the first 4 KiB of a body are read.
//!
//! The 401/403/407 rule deviates from "other 4xx → permanent" on purpose: a wrong bearer token
//! in our configuration must not make the registrar forget every device token it pushes to.
//!
//! # Timeouts
//!
//! Each request's timeout (connect + send + whole response) is
//! `min(configured timeout, time left until the request's deadline)`; a request whose deadline
//! has already passed is not sent ([`reasons::DEADLINE_EXPIRED`]).
//!
//! # Why reqwest
//!
//! `reqwest` (0.13, `default-features = false`, features `json`, `rustls`, `http2`) is the
//! most widely used and maintained async HTTP client on hyper 1. It gives us, without code of our
//! own: a connection pool with keep-alive reuse (HTTP/1.1) and multiplexing (HTTP/2, negotiated
//! by ALPN over TLS or forced with prior knowledge for cleartext `h2c`), per-request timeouts
//! covering connect + response body, redirect and proxy control, and TLS via rustls (no system
//! OpenSSL). A bare hyper-util client would need us to assemble the TLS connector, timeouts and
//! body limits by hand for no gain. Proxies from the environment are ignored (`no_proxy`), and
//! redirects are not followed (a redirect could carry device tokens to another host).

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{reasons, redact_token, PushFuture, PushKind, PushOutcome, PushProvider, PushRequest};

/// Most bytes of a gateway answer body that are read.
const MAX_BODY: usize = 4096;
/// How the provider authenticates to the gateway.
#[derive(Clone)]
pub enum WebhookAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// A custom header, e.g. `X-Api-Key: <value>`.
    Header {
        /// Header name.
        name: String,
        /// Header value (kept out of logs).
        value: String,
    },
}

impl std::fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            WebhookAuth::Header { name, .. } => write!(f, "Header({name}: <redacted>)"),
        }
    }
}

/// Configuration of a [`WebhookProvider`].
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Name reported to logs and metrics (default `webhook`).
    pub name: String,
    /// Gateway URL, `http://` or `https://`.
    pub url: String,
    /// Upper bound for one request (connect + send + response); the request's deadline may
    /// shorten it. Default 5 s.
    pub timeout: Duration,
    /// Upper bound for establishing a connection (TCP + TLS). Default 2 s.
    pub connect_timeout: Duration,
    /// Optional authentication towards the gateway.
    pub auth: Option<WebhookAuth>,
    /// Speak HTTP/2 without negotiation (cleartext `h2c` gateways). Over `https`, HTTP/2 is
    /// negotiated by ALPN anyway, so leave this `false` there. Default `false`.
    pub http2_prior_knowledge: bool,
    /// How long an idle pooled connection is kept for reuse. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// The request body's shape. Default [`WebhookFormat::Pushpark`].
    pub format: WebhookFormat,
}

/// The shape of the JSON a webhook POSTs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The [`PushRequest`] itself.
    #[default]
    Pushpark,
    /// gorush's `/api/push` request (`{"notifications": [...]}`), so an operator can
    /// delegate to a gorush gateway it already runs: iOS pushes as VoIP with the topic
    /// from pn-param and an expiration at the deadline, Android as high-priority data.
    /// The notification's `data` (custom keys of the APNs payload, FCM data for Android)
    /// holds `kind`, `push_id`, `call_id`, `callee_aor`, `caller_uri`, and
    /// `caller_display_name`, `answer_token` and `answer_url` when the push has them.
    Gorush,
}

/// gorush's `/api/push` body for one push.
fn gorush_body(request: &PushRequest) -> serde_json::Value {
    let ios = matches!(
        request.pn_provider.to_ascii_lowercase().as_str(),
        "apns" | "apns.dev"
    );
    let time_left = request.time_left().map_or(0, |d| d.as_secs());
    let mut data = serde_json::json!({
        "kind": request.kind.as_str(),
        "push_id": request.id,
        "call_id": request.call_id,
        "callee_aor": request.callee_aor,
        "caller_uri": request.caller_uri,
    });
    // Only when present: gorush hands a `null` to an Android app as the string
    // "%!s(<nil>)" (it formats every data value with `%s`).
    for (key, value) in [
        ("caller_display_name", &request.caller_display_name),
        ("answer_token", &request.answer_token),
        ("answer_url", &request.answer_url),
    ] {
        if let Some(value) = value {
            data[key] = serde_json::json!(value);
        }
    }
    let call = request.kind == PushKind::IncomingCall;
    let mut notification = serde_json::json!({
        "tokens": [request.pn_prid],
        "platform": if ios { 1 } else { 2 },
        "message": "",
        "priority": if call { "high" } else { "normal" },
        "data": data,
    });
    if ios {
        // RFC 8599 §10: pn-param is <TeamID>.<bundle>.voip; the topic is what follows the team.
        let topic = request
            .pn_param
            .as_deref()
            .and_then(|p| p.split_once('.'))
            .map(|(_, topic)| topic.to_owned());
        notification["voip"] = serde_json::json!(true);
        notification["push_type"] = serde_json::json!("voip");
        notification["topic"] = serde_json::json!(topic);
        notification["expiration"] = serde_json::json!(request.deadline_unix_secs());
        notification["development"] =
            serde_json::json!(request.pn_provider.eq_ignore_ascii_case("apns.dev"));
    } else {
        notification["time_to_live"] = serde_json::json!(time_left);
    }
    serde_json::json!({ "notifications": [notification] })
}

impl WebhookConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            name: "webhook".to_owned(),
            url: url.into(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            auth: None,
            http2_prior_knowledge: false,
            pool_idle_timeout: Duration::from_secs(90),
            format: WebhookFormat::Pushpark,
        }
    }
}

/// A [`WebhookProvider`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL does not parse.
    #[error("invalid webhook URL {url:?}: {reason}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The URL's scheme is neither `http` nor `https`.
    #[error("webhook URL must be http or https, got scheme {0:?}")]
    UnsupportedScheme(String),
    /// The auth header name or value is not valid in HTTP.
    #[error("invalid webhook auth header: {0}")]
    InvalidAuthHeader(String),
    /// A timeout of zero was configured.
    #[error("webhook timeouts must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built (e.g. TLS initialisation).
    #[error("cannot build HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends pushes as JSON POSTs to an operator's push gateway. Cheap to share; one connection
/// pool for all pushes.
#[derive(Debug)]
pub struct WebhookProvider {
    name: String,
    url: Url,
    timeout: Duration,
    auth: Option<(HeaderName, HeaderValue)>,
    client: reqwest::Client,
    format: WebhookFormat,
}

impl WebhookProvider {
    /// Builds the provider and its HTTP client. Does no I/O.
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        let url = Url::parse(&config.url).map_err(|e| WebhookError::InvalidUrl {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(WebhookError::UnsupportedScheme(url.scheme().to_owned()));
        }
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(WebhookError::ZeroTimeout);
        }
        let auth = match config.auth {
            None => None,
            Some(WebhookAuth::Bearer(token)) => Some((AUTHORIZATION, format!("Bearer {token}"))),
            Some(WebhookAuth::Header { name, value }) => {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| WebhookError::InvalidAuthHeader(e.to_string()))?;
                Some((name, value))
            }
        };
        let auth = match auth {
            None => None,
            Some((name, value)) => {
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|e| WebhookError::InvalidAuthHeader(e.to_string()))?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };

        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("pushpark/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if config.http2_prior_knowledge {
            builder = builder.http2_prior_knowledge();
        }
        let client = builder.build()?;

        Ok(Self {
            name: config.name,
            url,
            timeout: config.timeout,
            auth,
            client,
            format: config.format,
        })
    }

    async fn post(&self, request: &PushRequest) -> PushOutcome {
        let Some(left) = request.time_left() else {
            return PushOutcome::transient(reasons::DEADLINE_EXPIRED);
        };
        let timeout = self.timeout.min(left);

        let builder = self.client.post(self.url.clone()).timeout(timeout);
        let mut builder = match self.format {
            WebhookFormat::Pushpark => builder.json(request),
            WebhookFormat::Gorush => builder.json(&gorush_body(request)),
        };
        if let Some((name, value)) = &self.auth {
            builder = builder.header(name.clone(), value.clone());
        }

        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(error) => return self.transport_failure(request, &error),
        };
        let status = response.status();

        // Read (a bounded prefix of) the body even on success, so an HTTP/1.1 connection can
        // go back to the pool. A body read error only loses the reason text.
        let body = read_body_prefix(&mut response).await;
        let outcome = classify(status, &body);
        if let PushOutcome::Failed { permanent, reason } = &outcome {
            tracing::debug!(
                provider = %self.name,
                push_id = %request.id,
                pn_prid = %redact_token(&request.pn_prid),
                status = status.as_u16(),
                permanent,
                reason = %reason,
                "webhook push refused"
            );
        }
        outcome
    }

    fn transport_failure(&self, request: &PushRequest, error: &reqwest::Error) -> PushOutcome {
        let reason = if error.is_timeout() {
            reasons::TIMEOUT
        } else if error.is_connect() {
            reasons::CONNECT_FAILED
        } else {
            reasons::TRANSPORT_ERROR
        };
        tracing::debug!(
            provider = %self.name,
            push_id = %request.id,
            error = %error,
            reason,
            "webhook push failed in transport"
        );
        PushOutcome::transient(reason)
    }
}

impl PushProvider for WebhookProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(self.post(request))
    }
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

/// The optional JSON error body of a gateway answer.
#[derive(Debug, Default, Deserialize)]
struct GatewayAnswer {
    reason: Option<String>,
    permanent: Option<bool>,
}

/// Maps a gateway answer (status + body prefix) to an outcome; see the module docs.
fn classify(status: StatusCode, body: &[u8]) -> PushOutcome {
    if status.is_success() {
        return PushOutcome::Accepted;
    }
    let answer: GatewayAnswer = serde_json::from_slice(body).unwrap_or_default();
    let code = status.as_u16();
    let reason = answer
        .reason
        .as_deref()
        .and_then(sanitise_reason)
        .unwrap_or_else(|| format!("http {code}"));
    let permanent = match code {
        404 | 410 => true,
        400 => answer.permanent.unwrap_or(true),
        // Our credentials towards the gateway, and "try again later" answers.
        401 | 403 | 407 | 408 | 425 | 429 => false,
        // Other 4xx are permanent; 1xx, 3xx and 5xx are transient.
        _ => (400..500).contains(&code),
    };
    PushOutcome::Failed { permanent, reason }
}

/// Keeps a gateway-supplied reason usable as a log field and metric label: printable ASCII
/// and spaces only.
fn sanitise_reason(raw: &str) -> Option<String> {
    super::clean_label(raw, |c| c.is_ascii_graphic() || c == ' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).expect("valid status")
    }

    const ANSWER_TOKEN: &str =
        "pa1.3f2a9c01d4e5b6a7.12.3.1767225632.0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const ANSWER_URL: &str = "https://sip.example.com:5443/v1/calls/answer";

    fn call_push(pn_provider: &str) -> PushRequest {
        PushRequest {
            id: "push-1".to_owned(),
            kind: PushKind::IncomingCall,
            callee_aor: "sip:alice@example.com".to_owned(),
            pn_provider: pn_provider.to_owned(),
            pn_prid: "00fc13ad".to_owned(),
            pn_param: Some("DEF123GHIJ.com.example.app.voip".to_owned()),
            caller_uri: "sip:bob@example.org".to_owned(),
            caller_display_name: Some("Bob".to_owned()),
            call_id: "call-1@example.org".to_owned(),
            deadline: std::time::SystemTime::now() + Duration::from_secs(30),
            answer_token: Some(ANSWER_TOKEN.to_owned()),
            answer_url: Some(ANSWER_URL.to_owned()),
        }
    }

    #[test]
    fn pushpark_format_carries_the_answer_fields_or_nulls() {
        let request = call_push("webhook");
        let body = serde_json::to_value(&request).expect("json");
        assert_eq!(body["answer_token"], ANSWER_TOKEN);
        assert_eq!(body["answer_url"], ANSWER_URL);
        assert_eq!(body.as_object().map(|o| o.len()), Some(12));

        let mut refresh = request;
        refresh.kind = PushKind::BindingRefresh;
        refresh.answer_token = None;
        refresh.answer_url = None;
        let body = serde_json::to_value(&refresh).expect("json");
        let object = body.as_object().expect("object");
        assert_eq!(object.get("answer_token"), Some(&serde_json::Value::Null));
        assert_eq!(object.get("answer_url"), Some(&serde_json::Value::Null));
        assert_eq!(object.len(), 12);
    }

    #[test]
    fn gorush_data_carries_the_answer_fields_for_ios_and_android() {
        for pn_provider in ["apns", "fcm"] {
            let body = gorush_body(&call_push(pn_provider));
            let data = body["notifications"][0]["data"]
                .as_object()
                .expect("data object");
            assert_eq!(data["answer_token"], ANSWER_TOKEN, "{pn_provider}");
            assert_eq!(data["answer_url"], ANSWER_URL, "{pn_provider}");
            assert_eq!(data["call_id"], "call-1@example.org", "{pn_provider}");
            assert_eq!(data.len(), 8, "{pn_provider}: {data:?}");
        }
    }

    #[test]
    fn gorush_data_has_no_answer_keys_without_them() {
        let mut request = call_push("apns");
        request.answer_token = None;
        request.answer_url = None;
        request.caller_display_name = None;
        let body = gorush_body(&request);
        let data = body["notifications"][0]["data"]
            .as_object()
            .expect("data object");
        for key in ["answer_token", "answer_url", "caller_display_name"] {
            assert!(!data.contains_key(key), "{key}: {data:?}");
        }
        assert_eq!(data.len(), 5, "{data:?}");
    }

    #[test]
    fn success_statuses_are_accepted() {
        for code in [200, 201, 202, 204] {
            assert_eq!(classify(status(code), b""), PushOutcome::Accepted, "{code}");
        }
    }

    #[test]
    fn gateway_credential_errors_do_not_kill_the_token() {
        for code in [401, 403, 407] {
            let outcome = classify(status(code), b"");
            assert!(!outcome.is_permanent(), "{code} must be transient");
        }
    }

    #[test]
    fn transient_4xx_and_5xx_are_transient() {
        for code in [408, 425, 429, 500, 502, 503, 504] {
            let outcome = classify(status(code), b"");
            assert_eq!(
                outcome,
                PushOutcome::transient(format!("http {code}")),
                "{code}"
            );
        }
    }

    #[test]
    fn other_4xx_are_permanent() {
        for code in [404, 405, 410, 413, 422] {
            assert!(classify(status(code), b"").is_permanent(), "{code}");
        }
    }

    #[test]
    fn redirects_are_transient() {
        assert!(!classify(status(302), b"").is_permanent());
    }

    #[test]
    fn bad_request_body_can_declare_transient() {
        let outcome = classify(status(400), br#"{"reason":"Busy","permanent":false}"#);
        assert_eq!(outcome, PushOutcome::transient("Busy"));
    }

    #[test]
    fn bad_request_without_body_is_permanent() {
        assert_eq!(
            classify(status(400), b"not json"),
            PushOutcome::permanent("http 400")
        );
    }

    #[test]
    fn body_permanent_flag_is_ignored_outside_400() {
        let outcome = classify(status(503), br#"{"reason":"Down","permanent":true}"#);
        assert_eq!(outcome, PushOutcome::transient("Down"));
    }

    #[test]
    fn reasons_are_sanitised_and_bounded() {
        let long = "x".repeat(500);
        let body = format!(r#"{{"reason":"{long}"}}"#);
        let outcome = classify(status(410), body.as_bytes());
        assert_eq!(
            outcome.reason().map(str::len),
            Some(super::super::MAX_LABEL_CHARS)
        );

        let outcome = classify(status(410), "{\"reason\":\"a\\nb\u{e9}\"}".as_bytes());
        assert_eq!(outcome.reason(), Some("a_b_"));

        let outcome = classify(status(410), br#"{"reason":"   "}"#);
        assert_eq!(outcome.reason(), Some("http 410"));
    }
}
