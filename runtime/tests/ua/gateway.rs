//! [`PushGateway`]: a local HTTP server standing in for the push service the server's
//! `webhook` provider POSTs to.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::device::Device;
use super::{UaError, UaResult};

/// The JSON body the `webhook` provider POSTs (pushpark's `PushRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushBody {
    /// Unique per push (a retry has a new one).
    pub id: String,
    /// Why: `incoming_call`.
    pub kind: String,
    /// The callee's address-of-record.
    pub callee_aor: String,
    /// The binding's `pn-provider`.
    pub pn_provider: String,
    /// The binding's `pn-prid` (the token).
    pub pn_prid: String,
    /// The binding's `pn-param`.
    pub pn_param: Option<String>,
    /// The From URI of the parked INVITE.
    pub caller_uri: String,
    /// The From display name of the parked INVITE.
    pub caller_display_name: Option<String>,
    /// The Call-ID of the parked INVITE.
    pub call_id: String,
    /// When the push stops being useful, in ms since the Unix epoch.
    pub deadline_unix_ms: u64,
    /// The app API's answer token, with the app API on.
    #[serde(default)]
    pub answer_token: Option<String>,
    /// Where the app posts its answer, with the app API on.
    #[serde(default)]
    pub answer_url: Option<String>,
}

/// One push the gateway received.
#[derive(Debug, Clone)]
pub struct Push {
    /// The body, typed.
    pub body: PushBody,
    /// The body as JSON (to check for fields [`PushBody`] does not know).
    pub json: serde_json::Value,
    /// The request path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, in ms since the Unix epoch (to compare with `deadline_unix_ms`).
    pub at_unix_ms: u64,
    /// The status the gateway answered with.
    pub answered: u16,
}

/// How the gateway answers a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRule {
    /// The HTTP status.
    pub status: u16,
    /// How long to wait before answering.
    pub delay: Duration,
    /// The response body (e.g. `{"reason":"BadDeviceToken","permanent":true}`).
    pub body: String,
}

impl GatewayRule {
    /// Answer `status` at once with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            body: String::new(),
        }
    }

    /// 200: accepted (the default).
    pub fn accept() -> Self {
        Self::status(200)
    }

    /// 410: the token is gone (a permanent failure).
    pub fn gone() -> Self {
        Self::status(410)
    }

    /// 500: a transient failure.
    pub fn transient() -> Self {
        Self::status(500)
    }

    /// Answers only after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answers with `body`.
    pub fn with_body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }
}

#[derive(Default)]
struct Shared {
    pushes: Vec<Push>,
    returned: usize,
    malformed: Vec<String>,
    /// Per token: the rules for the next pushes; the last one stays.
    rules: HashMap<String, VecDeque<GatewayRule>>,
    default_rule: Option<GatewayRule>,
    /// Per token: the device to wake and after how long.
    devices: HashMap<String, (Device, Duration)>,
    wakes: Vec<(String, Result<u16, String>)>,
}

impl Shared {
    fn rule_for(&mut self, token: &str) -> GatewayRule {
        if let Some(queue) = self.rules.get_mut(token) {
            if queue.len() > 1 {
                if let Some(rule) = queue.pop_front() {
                    return rule;
                }
            }
            if let Some(rule) = queue.front() {
                return rule.clone();
            }
        }
        self.default_rule
            .clone()
            .unwrap_or_else(GatewayRule::accept)
    }
}

/// A push service on 127.0.0.1:0 (HTTP/1.1 and HTTP/2 without TLS). It records every push,
/// answers per token ([`Self::set_rule`]), and wakes attached devices after an accepted
/// push ([`Self::wake_on_push`]), the way APNs wakes an app.
pub struct PushGateway {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Drop for PushGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PushGateway {
    /// Starts the gateway.
    pub async fn start() -> UaResult<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The URL for the server's webhook provider (`http://127.0.0.1:PORT/push`).
    pub fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers pushes for `token` per `rule`.
    pub fn set_rule(&self, token: &str, rule: GatewayRule) {
        self.set_rules(token, vec![rule]);
    }

    /// Answers the next pushes for `token` with `rules` in turn; the last one then stays
    /// (e.g. `[transient(), accept()]`: fail once, then accept).
    pub fn set_rules(&self, token: &str, rules: Vec<GatewayRule>) {
        self.lock().rules.insert(token.to_owned(), rules.into());
    }

    /// Answers pushes for tokens without a rule per `rule` (200 when never set).
    pub fn set_default_rule(&self, rule: GatewayRule) {
        self.lock().default_rule = Some(rule);
    }

    /// After each accepted (2xx) push for `device`'s pn-prid, calls [`Device::wake`] once
    /// `after` has passed since the push arrived.
    pub fn wake_on_push(&self, device: &Device, after: Duration) {
        let token = device
            .pn_prid()
            .expect("wake_on_push: the device has no pn-prid")
            .to_owned();
        self.lock().devices.insert(token, (device.clone(), after));
    }

    /// Stops waking the device with this token.
    pub fn forget_device(&self, token: &str) {
        self.lock().devices.remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("gateway lock")
    }

    /// Every push received so far.
    pub fn pushes(&self) -> Vec<Push> {
        self.lock().pushes.clone()
    }

    /// Pushes received for `token`.
    pub fn pushes_for(&self, token: &str) -> Vec<Push> {
        self.lock()
            .pushes
            .iter()
            .filter(|p| p.body.pn_prid == token)
            .cloned()
            .collect()
    }

    /// Bodies that were not a valid push (answered 400).
    pub fn malformed(&self) -> Vec<String> {
        self.lock().malformed.clone()
    }

    /// The wakes done: token and the REGISTER's status (or the error).
    pub fn wakes(&self) -> Vec<(String, Result<u16, String>)> {
        self.lock().wakes.clone()
    }

    /// The next push not returned by an earlier call, waiting up to `timeout`.
    pub async fn wait_for_push(&self, timeout: Duration) -> UaResult<Push> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut shared = self.lock();
                if shared.returned < shared.pushes.len() {
                    shared.returned += 1;
                    return Ok(shared.pushes[shared.returned - 1].clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(UaError::Timeout(format!("a push ({timeout:?})")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` wakes have completed, up to `timeout`.
    pub async fn wait_for_wakes(&self, n: usize, timeout: Duration) -> UaResult<()> {
        let deadline = Instant::now() + timeout;
        while self.lock().wakes.len() < n {
            if Instant::now() >= deadline {
                return Err(UaError::Timeout(format!("{n} wakes ({timeout:?})")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn handle(
    shared: Arc<Mutex<Shared>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (at, at_unix_ms) = (Instant::now(), unix_ms());
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).and_then(|json| {
        serde_json::from_value::<PushBody>(json.clone()).map(|typed| (json, typed))
    });
    let (json, typed) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let text = String::from_utf8_lossy(&body).into_owned();
            shared
                .lock()
                .expect("gateway lock")
                .malformed
                .push(format!("{e}: {text}"));
            return Ok(respond(
                400,
                "{\"reason\":\"BadRequest\",\"permanent\":true}",
            ));
        }
    };
    let token = typed.pn_prid.clone();
    let (rule, wake) = {
        let mut shared = shared.lock().expect("gateway lock");
        let rule = shared.rule_for(&token);
        shared.pushes.push(Push {
            body: typed,
            json,
            path: parts.uri.path().to_owned(),
            authorization: parts
                .headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            at,
            at_unix_ms,
            answered: rule.status,
        });
        let wake = if (200..300).contains(&rule.status) {
            shared.devices.get(&token).cloned()
        } else {
            None
        };
        (rule, wake)
    };
    if let Some((device, after)) = wake {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let result = device
                .wake()
                .await
                .map(|r| r.status_code.code())
                .map_err(|e| e.to_string());
            shared
                .lock()
                .expect("gateway lock")
                .wakes
                .push((token, result));
        });
    }
    tokio::time::sleep(rule.delay).await;
    Ok(respond(rule.status, &rule.body))
}

fn respond(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if !body.is_empty() {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    response
}
