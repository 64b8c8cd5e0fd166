//! Push layer tests against real HTTP servers on 127.0.0.1 (started here; nothing leaves
//! loopback), plus dispatcher tests with in-process providers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use pushpark::push::dispatcher::{
    Dispatcher, DispatcherError, ProviderLimits, PushReports, Submission,
};
use pushpark::push::log::LogProvider;
use pushpark::push::webhook::{WebhookAuth, WebhookConfig, WebhookProvider};
use pushpark::push::{reasons, PushFuture, PushKind, PushOutcome, PushProvider, PushRequest};

// ---------------------------------------------------------------------------------------------
// A small recording HTTP server (HTTP/1.1 and HTTP/2) on 127.0.0.1.

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self {
            status,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    fn with_body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl TestServer {
    /// Starts a server answering every request with `handler`'s reply.
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));

        let (seen2, conns2, max2) = (seen.clone(), connections.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, in_flight, max) = (
                    handler.clone(),
                    seen2.clone(),
                    in_flight.clone(),
                    max2.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, seen, in_flight, max) = (
                            handler.clone(),
                            seen.clone(),
                            in_flight.clone(),
                            max.clone(),
                        );
                        async move {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let request = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            let reply = handler(&request);
                            seen.lock().expect("lock").push(request);
                            tokio::time::sleep(reply.delay).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            let mut response = Response::new(Full::new(Bytes::from(reply.body)));
                            *response.status_mut() =
                                StatusCode::from_u16(reply.status).expect("status");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });

        Self {
            addr,
            seen,
            connections,
            max_in_flight,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn request(id: &str, pn_provider: &str, prid: &str, deadline_in: Duration) -> PushRequest {
    PushRequest {
        id: id.to_owned(),
        kind: PushKind::IncomingCall,
        callee_aor: "sip:alice@example.com".to_owned(),
        pn_provider: pn_provider.to_owned(),
        pn_prid: prid.to_owned(),
        pn_param: Some("DEF123GHIJ.com.example.app.voip".to_owned()),
        caller_uri: "sip:bob@example.org".to_owned(),
        caller_display_name: Some("Bob".to_owned()),
        call_id: format!("call-{id}@example.org"),
        deadline: SystemTime::now() + deadline_in,
        answer_token: None,
        answer_url: None,
    }
}

fn webhook(url: String) -> WebhookProvider {
    WebhookProvider::new(WebhookConfig::new(url)).expect("webhook provider")
}

async fn push_once(provider: &WebhookProvider, deadline_in: Duration) -> PushOutcome {
    provider
        .send(&request("p1", "webhook", "tok-1", deadline_in))
        .await
}

/// An address on 127.0.0.1 with nothing listening.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

async fn next_report<T>(reports: &mut PushReports<T>) -> pushpark::push::PushReport<T> {
    tokio::time::timeout(Duration::from_secs(5), reports.recv())
        .await
        .expect("a report within 5 s")
        .expect("report channel open")
}

const LONG: Duration = Duration::from_secs(10);

/// An answer token as the app API mints them, and where the app posts it.
const ANSWER_TOKEN: &str = "pa1.3f2a9c01d4e5b6a7.12.3.1767225632.0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ANSWER_URL: &str = "https://sip.example.com:5443/v1/calls/answer";

// ---------------------------------------------------------------------------------------------
// Webhook provider.

#[tokio::test]
async fn webhook_2xx_is_accepted_and_posts_every_request_field_as_json() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let provider = webhook(server.url());
    let mut req = request("push-42", "webhook", "device-token-abc", LONG);
    req.answer_token = Some(ANSWER_TOKEN.to_owned());
    req.answer_url = Some(ANSWER_URL.to_owned());

    let outcome = provider.send(&req).await;

    assert_eq!(outcome, PushOutcome::Accepted);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/push");
    assert_eq!(
        seen[0]
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body = seen[0].json();
    let object = body.as_object().expect("JSON object");
    let expected_deadline = req
        .deadline
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_millis() as u64;
    let expected = serde_json::json!({
        "id": "push-42",
        "kind": "incoming_call",
        "callee_aor": "sip:alice@example.com",
        "pn_provider": "webhook",
        "pn_prid": "device-token-abc",
        "pn_param": "DEF123GHIJ.com.example.app.voip",
        "caller_uri": "sip:bob@example.org",
        "caller_display_name": "Bob",
        "call_id": "call-push-42@example.org",
        "deadline_unix_ms": expected_deadline,
        "answer_token": ANSWER_TOKEN,
        "answer_url": ANSWER_URL,
    });
    assert_eq!(&body, &expected, "every field, nothing else");
    assert_eq!(object.len(), 12);

    // The body round-trips to the same request (millisecond deadline precision).
    let back: PushRequest = serde_json::from_value(body).expect("deserialises");
    assert_eq!(back.id, req.id);
    assert_eq!(back.deadline_unix_secs(), req.deadline_unix_secs());
    assert_eq!(back.answer_token.as_deref(), Some(ANSWER_TOKEN));
    assert_eq!(back.answer_url.as_deref(), Some(ANSWER_URL));
}

#[tokio::test]
async fn webhook_absent_optional_fields_are_sent_as_null() {
    let server = TestServer::start(|_| Reply::status(204)).await;
    let provider = webhook(server.url());
    let mut req = request("p", "webhook", "t", LONG);
    req.pn_param = None;
    req.caller_display_name = None;

    assert_eq!(provider.send(&req).await, PushOutcome::Accepted);
    let body = server.seen()[0].json();
    let object = body.as_object().expect("JSON object");
    for key in [
        "pn_param",
        "caller_display_name",
        "answer_token",
        "answer_url",
    ] {
        assert_eq!(
            object.get(key),
            Some(&serde_json::Value::Null),
            "{key} present as null"
        );
    }
    assert_eq!(object.len(), 12);
}

#[tokio::test]
async fn webhook_410_is_permanent() {
    let server = TestServer::start(|_| Reply::status(410)).await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::permanent("http 410"));
}

#[tokio::test]
async fn webhook_404_is_permanent_and_keeps_the_gateways_reason_name() {
    let server =
        TestServer::start(|_| Reply::status(404).with_body(r#"{"reason":"UNREGISTERED"}"#)).await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::permanent("UNREGISTERED"));
}

#[tokio::test]
async fn webhook_500_is_transient() {
    let server = TestServer::start(|_| Reply::status(500)).await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::transient("http 500"));
}

#[tokio::test]
async fn webhook_429_is_transient() {
    let server = TestServer::start(|_| Reply::status(429)).await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::transient("http 429"));
}

#[tokio::test]
async fn webhook_400_with_reason_body_is_permanent_with_that_reason() {
    let server = TestServer::start(|_| {
        Reply::status(400).with_body(r#"{"reason":"BadDeviceToken","permanent":true}"#)
    })
    .await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::permanent("BadDeviceToken"));
}

#[tokio::test]
async fn webhook_400_body_can_declare_the_failure_transient() {
    let server = TestServer::start(|_| {
        Reply::status(400).with_body(r#"{"reason":"TryLater","permanent":false}"#)
    })
    .await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::transient("TryLater"));
}

#[tokio::test]
async fn webhook_401_is_transient_so_bad_gateway_credentials_do_not_kill_tokens() {
    let server = TestServer::start(|_| Reply::status(401)).await;
    let outcome = push_once(&webhook(server.url()), LONG).await;
    assert_eq!(outcome, PushOutcome::transient("http 401"));
}

#[tokio::test]
async fn webhook_server_slower_than_deadline_is_transient_timeout_at_the_deadline() {
    let server = TestServer::start(|_| Reply::status(200).after(Duration::from_secs(5))).await;
    let mut config = WebhookConfig::new(server.url());
    config.timeout = Duration::from_secs(30);
    let provider = WebhookProvider::new(config).expect("provider");

    let started = Instant::now();
    let outcome = push_once(&provider, Duration::from_millis(300)).await;
    let took = started.elapsed();

    assert_eq!(outcome, PushOutcome::transient(reasons::TIMEOUT));
    assert_eq!(server.seen().len(), 1, "the request did reach the server");
    assert!(
        took >= Duration::from_millis(250),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "deadline ignored: {took:?}"
    );
}

#[tokio::test]
async fn webhook_configured_timeout_applies_when_deadline_is_far() {
    let server = TestServer::start(|_| Reply::status(200).after(Duration::from_secs(5))).await;
    let mut config = WebhookConfig::new(server.url());
    config.timeout = Duration::from_millis(200);
    let provider = WebhookProvider::new(config).expect("provider");

    let started = Instant::now();
    let outcome = push_once(&provider, Duration::from_secs(30)).await;

    assert_eq!(outcome, PushOutcome::transient(reasons::TIMEOUT));
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn webhook_connection_refused_is_transient() {
    let addr = closed_port().await;
    let provider = webhook(format!("http://{addr}/push"));
    let outcome = push_once(&provider, LONG).await;
    assert_eq!(outcome, PushOutcome::transient(reasons::CONNECT_FAILED));
}

#[tokio::test]
async fn webhook_does_not_send_a_push_whose_deadline_has_passed() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let provider = webhook(server.url());
    let mut req = request("late", "webhook", "t", LONG);
    req.deadline = SystemTime::now() - Duration::from_secs(1);

    let outcome = provider.send(&req).await;

    assert_eq!(outcome, PushOutcome::transient(reasons::DEADLINE_EXPIRED));
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn webhook_sends_bearer_token() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let mut config = WebhookConfig::new(server.url());
    config.auth = Some(WebhookAuth::Bearer("s3cret".to_owned()));
    let provider = WebhookProvider::new(config).expect("provider");

    assert_eq!(push_once(&provider, LONG).await, PushOutcome::Accepted);
    let seen = server.seen();
    assert_eq!(
        seen[0]
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer s3cret")
    );
}

#[tokio::test]
async fn webhook_sends_custom_auth_header() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let mut config = WebhookConfig::new(server.url());
    config.auth = Some(WebhookAuth::Header {
        name: "X-Api-Key".to_owned(),
        value: "k-123".to_owned(),
    });
    let provider = WebhookProvider::new(config).expect("provider");

    assert_eq!(push_once(&provider, LONG).await, PushOutcome::Accepted);
    let seen = server.seen();
    assert_eq!(
        seen[0]
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok()),
        Some("k-123")
    );
    assert!(seen[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn webhook_reuses_one_connection_for_sequential_pushes() {
    let server = TestServer::start(|_| Reply::status(200).with_body("{}")).await;
    let provider = webhook(server.url());
    for _ in 0..3 {
        assert_eq!(push_once(&provider, LONG).await, PushOutcome::Accepted);
    }
    assert_eq!(server.seen().len(), 3);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn webhook_speaks_http2_with_prior_knowledge() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let mut config = WebhookConfig::new(server.url());
    config.http2_prior_knowledge = true;
    let provider = WebhookProvider::new(config).expect("provider");

    assert_eq!(push_once(&provider, LONG).await, PushOutcome::Accepted);
    assert_eq!(server.seen()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn webhook_defaults_to_http1() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    assert_eq!(
        push_once(&webhook(server.url()), LONG).await,
        PushOutcome::Accepted
    );
    assert_eq!(server.seen()[0].version, Version::HTTP_11);
}

#[test]
fn webhook_rejects_bad_configuration() {
    assert!(WebhookProvider::new(WebhookConfig::new("not a url")).is_err());
    assert!(WebhookProvider::new(WebhookConfig::new("ftp://127.0.0.1/x")).is_err());
    let mut config = WebhookConfig::new("http://127.0.0.1/x");
    config.auth = Some(WebhookAuth::Header {
        name: "bad header".to_owned(),
        value: "v".to_owned(),
    });
    assert!(WebhookProvider::new(config).is_err());
}

// ---------------------------------------------------------------------------------------------
// Log provider.

#[tokio::test]
async fn log_provider_accepts_every_push() {
    let provider = LogProvider::new();
    assert_eq!(provider.name(), "log");
    let outcome = provider.send(&request("p", "log", "t", LONG)).await;
    assert_eq!(outcome, PushOutcome::Accepted);
}

// ---------------------------------------------------------------------------------------------
// Dispatcher.

/// A provider whose sends block until released; announces each started send.
struct GateProvider {
    started: mpsc::UnboundedSender<String>,
    release: Arc<Notify>,
}

impl PushProvider for GateProvider {
    fn name(&self) -> &str {
        "gate"
    }

    fn send<'a>(&'a self, request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(async move {
            let _ = self.started.send(request.id.clone());
            self.release.notified().await;
            PushOutcome::Accepted
        })
    }
}

/// A provider that never answers.
struct HangingProvider;

impl PushProvider for HangingProvider {
    fn name(&self) -> &str {
        "hanging"
    }

    fn send<'a>(&'a self, _request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(std::future::pending())
    }
}

/// A provider that panics.
struct PanickingProvider;

impl PushProvider for PanickingProvider {
    fn name(&self) -> &str {
        "panicking"
    }

    fn send<'a>(&'a self, _request: &'a PushRequest) -> PushFuture<'a> {
        Box::pin(async { panic!("provider bug") })
    }
}

fn limits(queue_capacity: usize, max_in_flight: usize) -> ProviderLimits {
    ProviderLimits {
        queue_capacity,
        max_in_flight,
    }
}

#[tokio::test]
async fn dispatcher_unknown_provider_fails_permanently_at_once() {
    let (dispatcher, mut reports) = Dispatcher::<u32>::builder()
        .provider("log", Arc::new(LogProvider::new()), limits(4, 1))
        .build()
        .expect("build");

    let submitted = dispatcher.submit(request("p1", "apns", "t", LONG), 77);

    assert_eq!(submitted, Submission::Rejected);
    let report = reports.try_recv().expect("reported before submit returned");
    assert_eq!(report.tag, 77);
    assert_eq!(report.push_id, "p1");
    assert_eq!(report.pn_provider, "apns");
    assert_eq!(
        report.outcome,
        PushOutcome::permanent(reasons::PROVIDER_NOT_CONFIGURED)
    );
    assert!(!dispatcher.supports("apns"));
    assert!(dispatcher.supports("LOG"));
}

#[tokio::test]
async fn dispatcher_full_queue_fails_transiently_without_blocking() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let gate = GateProvider {
        started: started_tx,
        release: release.clone(),
    };
    let (dispatcher, mut reports) = Dispatcher::<&'static str>::builder()
        .provider("gate", Arc::new(gate), limits(1, 1))
        .build()
        .expect("build");

    // First push occupies the only slot...
    assert_eq!(
        dispatcher.submit(request("a", "gate", "t", LONG), "a"),
        Submission::Queued
    );
    let first = tokio::time::timeout(Duration::from_secs(5), started_rx.recv())
        .await
        .expect("first push started");
    assert_eq!(first.as_deref(), Some("a"));
    // ...the second fills the queue...
    assert_eq!(
        dispatcher.submit(request("b", "gate", "t", LONG), "b"),
        Submission::Queued
    );
    // ...and the third is refused on the spot.
    let before = Instant::now();
    let third = dispatcher.submit(request("c", "gate", "t", LONG), "c");
    assert!(
        before.elapsed() < Duration::from_millis(50),
        "submit blocked"
    );
    assert_eq!(third, Submission::Rejected);

    let report = reports.try_recv().expect("refusal reported immediately");
    assert_eq!(report.tag, "c");
    assert_eq!(report.provider, "gate");
    assert_eq!(report.outcome, PushOutcome::transient(reasons::QUEUE_FULL));

    // Releasing the gate completes the two queued pushes.
    release.notify_one();
    let a = next_report(&mut reports).await;
    assert_eq!((a.tag, a.outcome), ("a", PushOutcome::Accepted));
    release.notify_one();
    let b = next_report(&mut reports).await;
    assert_eq!((b.tag, b.outcome), ("b", PushOutcome::Accepted));
}

#[tokio::test]
async fn dispatcher_reports_carry_each_callers_tag_with_its_own_outcome() {
    // The gateway's answer depends on the token, so each tag must come back with the
    // outcome of its own push.
    let server = TestServer::start(|seen| {
        let token = seen.json()["pn_prid"].as_str().unwrap_or("").to_owned();
        match token.as_str() {
            "gone" => Reply::status(410),
            "busy" => Reply::status(503),
            _ => Reply::status(200),
        }
    })
    .await;
    let (dispatcher, mut reports) = Dispatcher::<(String, u32)>::builder()
        .provider("webhook", Arc::new(webhook(server.url())), limits(16, 4))
        .build()
        .expect("build");

    let cases = [
        ("call-1", 1, "ok", PushOutcome::Accepted),
        ("call-2", 2, "gone", PushOutcome::permanent("http 410")),
        ("call-3", 3, "busy", PushOutcome::transient("http 503")),
        ("call-4", 4, "ok2", PushOutcome::Accepted),
    ];
    for (call, device, token, _) in &cases {
        let id = format!("push-{device}");
        let submitted = dispatcher.submit(
            request(&id, "webhook", token, LONG),
            (call.to_string(), *device),
        );
        assert_eq!(submitted, Submission::Queued);
    }

    let mut got = HashMap::new();
    for _ in 0..cases.len() {
        let report = next_report(&mut reports).await;
        assert_eq!(report.provider, "webhook");
        assert_eq!(report.push_id, format!("push-{}", report.tag.1));
        got.insert(report.tag, report.outcome);
    }
    for (call, device, _, expected) in cases {
        assert_eq!(
            got.get(&(call.to_string(), device)),
            Some(&expected),
            "{call}"
        );
    }
}

#[tokio::test]
async fn dispatcher_respects_per_provider_concurrency_limit() {
    let server = TestServer::start(|_| Reply::status(200).after(Duration::from_millis(150))).await;
    let (dispatcher, mut reports) = Dispatcher::<usize>::builder()
        .provider("webhook", Arc::new(webhook(server.url())), limits(16, 2))
        .build()
        .expect("build");

    for i in 0..6 {
        let submitted = dispatcher.submit(request(&format!("p{i}"), "webhook", "t", LONG), i);
        assert_eq!(submitted, Submission::Queued);
    }
    for _ in 0..6 {
        assert_eq!(
            next_report(&mut reports).await.outcome,
            PushOutcome::Accepted
        );
    }

    assert_eq!(server.seen().len(), 6);
    assert_eq!(
        server.max_in_flight.load(Ordering::SeqCst),
        2,
        "exactly the limit: never more, and the limit was actually used"
    );
}

#[tokio::test]
async fn dispatcher_aborts_a_provider_that_overruns_the_deadline() {
    let (dispatcher, mut reports) = Dispatcher::<u8>::builder()
        .provider("hang", Arc::new(HangingProvider), limits(4, 1))
        .build()
        .expect("build");

    let started = Instant::now();
    let _ = dispatcher.submit(request("p", "hang", "t", Duration::from_millis(100)), 1);
    let report = next_report(&mut reports).await;

    assert_eq!(report.outcome, PushOutcome::transient(reasons::TIMEOUT));
    assert!(started.elapsed() < Duration::from_secs(2));

    // The slot was freed: a second push is handled too.
    let _ = dispatcher.submit(request("q", "hang", "t", Duration::from_millis(50)), 2);
    let report = next_report(&mut reports).await;
    assert_eq!(report.tag, 2);
    assert_eq!(report.outcome, PushOutcome::transient(reasons::TIMEOUT));
}

#[tokio::test]
async fn dispatcher_reports_a_panicking_provider_as_transient() {
    let (dispatcher, mut reports) = Dispatcher::<u8>::builder()
        .provider("panic", Arc::new(PanickingProvider), limits(4, 1))
        .build()
        .expect("build");

    let _ = dispatcher.submit(request("p", "panic", "t", LONG), 9);
    let report = next_report(&mut reports).await;

    assert_eq!(report.tag, 9);
    assert_eq!(
        report.outcome,
        PushOutcome::transient(reasons::PROVIDER_PANICKED)
    );
}

#[tokio::test]
async fn dispatcher_does_not_send_pushes_whose_deadline_passed_in_the_queue() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let (dispatcher, mut reports) = Dispatcher::<u8>::builder()
        .provider("webhook", Arc::new(webhook(server.url())), limits(4, 1))
        .build()
        .expect("build");
    let mut req = request("late", "webhook", "t", LONG);
    req.deadline = SystemTime::now() - Duration::from_millis(1);

    let _ = dispatcher.submit(req, 1);
    let report = next_report(&mut reports).await;

    assert_eq!(
        report.outcome,
        PushOutcome::transient(reasons::DEADLINE_EXPIRED)
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn dispatcher_matches_pn_provider_case_insensitively_and_follows_aliases() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let (dispatcher, mut reports) = Dispatcher::<u8>::builder()
        .provider("apns", Arc::new(webhook(server.url())), limits(4, 1))
        .alias("apns.dev", "apns")
        .build()
        .expect("build");

    assert_eq!(dispatcher.pn_providers(), vec!["apns", "apns.dev"]);
    assert_eq!(
        dispatcher.submit(request("p1", "APNS", "t", LONG), 1),
        Submission::Queued
    );
    assert_eq!(
        dispatcher.submit(request("p2", "apns.dev", "t", LONG), 2),
        Submission::Queued
    );
    for _ in 0..2 {
        let report = next_report(&mut reports).await;
        assert_eq!(report.outcome, PushOutcome::Accepted);
        assert_eq!(report.provider, "webhook");
    }
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn dispatcher_rejects_duplicate_and_dangling_configuration() {
    let log = || Arc::new(LogProvider::new()) as Arc<dyn PushProvider>;
    let duplicate = Dispatcher::<()>::builder()
        .provider("fcm", log(), ProviderLimits::default())
        .provider("FCM", log(), ProviderLimits::default())
        .build();
    assert!(matches!(
        duplicate,
        Err(DispatcherError::DuplicateProvider(_))
    ));

    let dangling = Dispatcher::<()>::builder()
        .provider("fcm", log(), ProviderLimits::default())
        .alias("firebase", "gcm")
        .build();
    assert!(matches!(
        dangling,
        Err(DispatcherError::UnknownAliasTarget { .. })
    ));

    let zero = Dispatcher::<()>::builder()
        .provider("fcm", log(), limits(0, 1))
        .build();
    assert!(matches!(zero, Err(DispatcherError::ZeroLimit(_))));
}

#[test]
fn dispatcher_needs_a_tokio_runtime() {
    let built = Dispatcher::<()>::builder()
        .provider(
            "log",
            Arc::new(LogProvider::new()),
            ProviderLimits::default(),
        )
        .build();
    assert!(matches!(built, Err(DispatcherError::NoRuntime)));
}

#[tokio::test]
async fn webhook_in_gorush_format_posts_a_voip_notification_for_ios_and_data_for_android() {
    let server = TestServer::start(|_| Reply::status(200)).await;
    let mut config = WebhookConfig::new(server.url());
    config.format = pushpark::push::WebhookFormat::Gorush;
    let provider = WebhookProvider::new(config).expect("a provider");
    let mut ios = request("push-7", "apns.dev", "00fc13ad", LONG);
    ios.answer_token = Some(ANSWER_TOKEN.to_owned());
    ios.answer_url = Some(ANSWER_URL.to_owned());
    let android = request("push-8", "fcm", "fcm-token", LONG);
    assert_eq!(provider.send(&ios).await, PushOutcome::Accepted);
    assert_eq!(provider.send(&android).await, PushOutcome::Accepted);
    let seen = server.seen();
    let ios_body = seen[0].json();
    let n = &ios_body["notifications"][0];
    assert_eq!(n["tokens"], serde_json::json!(["00fc13ad"]));
    assert_eq!(n["platform"], 1);
    assert_eq!(n["voip"], true);
    assert_eq!(n["push_type"], "voip");
    assert_eq!(n["topic"], "com.example.app.voip");
    assert_eq!(n["development"], true, "apns.dev is the sandbox");
    assert_eq!(n["expiration"], ios.deadline_unix_secs());
    assert_eq!(n["data"]["call_id"], "call-push-7@example.org");
    assert_eq!(n["data"]["answer_token"], ANSWER_TOKEN);
    assert_eq!(n["data"]["answer_url"], ANSWER_URL);
    let android_body = seen[1].json();
    let n = &android_body["notifications"][0];
    assert_eq!(n["data"]["call_id"], "call-push-8@example.org");
    let data = n["data"].as_object().expect("data object");
    assert!(
        !data.contains_key("answer_token"),
        "absent, not null: {data:?}"
    );
    assert!(
        !data.contains_key("answer_url"),
        "absent, not null: {data:?}"
    );
    assert_eq!(n["platform"], 2);
    assert_eq!(n["priority"], "high");
    assert!(n["time_to_live"].as_u64().is_some_and(|t| t > 0));
    assert!(n.get("voip").is_none());
}
