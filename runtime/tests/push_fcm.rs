//! FCM provider tests against real HTTP servers on 127.0.0.1: one stands in for FCM, one for
//! Google's OAuth2 token endpoint. Nothing leaves loopback.

mod common;
mod ua;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::net::TcpListener;

use pushpark::push::fcm::{
    FcmConfig, FcmError, FcmProvider, ServiceAccountSource, FCM_SCOPE, INVALID_PN_PARAM,
};
use pushpark::push::{reasons, PushKind, PushOutcome, PushProvider, PushRequest};

/// Throwaway RSA key of the test service account. TEST ONLY, never used anywhere else;
/// generated with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`.
const TEST_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC50iSG2sJWlDX3
//qekG8w/zXO0WW8mVFy7t75j0xiUOUQ77ACyCquFg7eBwuFg2xA0JwbNJNi4EJZ
UUavqaCfItdkKowdOb4IVvqIAOSObSFj4RsLZiW5BOVtfXiagSd9VIkcKOPQfM4c
qfDQ2hYGCrh2oP8G18jWxgK0sNNSQ0JiRDuU+dsq3cc5ZnIY3tfRpb96q6ep1qSa
raIQ2EHyqZTqd59O+waOdv43g9e8u4D1dmXh6Z4z0y1Lk8NZCM3ekDieRmwZ+WN2
pTb7X9Gg9Xs9FNKiz5baqqE+dqmkhbgFu+M0EvU5MemmUkk3JZdYyuXrnJXO2QK3
Y+JaQVo5AgMBAAECggEAEJXel8DHzsV8ya1p16RJoGRvD44mF/7RQ8JpWXn+Vdol
j+zs11q5YH9shUm4sAqKa4CTJmR7cTxV/7Xe6sfno7yO4AxiJCumuATXaLM3szSv
YcRSTyKnZEu5FJw52wSDG08jy8UkjFPPa8SJT4Lfq1timogFKz2wWecjj7AmtHVQ
HAnVOSIvtqcPjERGj+Kshe4zWwxyel5OXCvTdSG0bx0QAOltGe7A7hdcjk2cPtDa
0EpjpJL3aXgNuvoW2h6pU8RVPl7vWvbcd3DRk/GsRmxyNaEWVB7iuevEpOQZijOD
tcaTpenLsqMqM0kHlcrCAvtod4zcja1x1HbN0Un1QQKBgQD5Nt7oYhNnJyQM48Dg
L5KUvKJrOGm82LbxRq1R0ekndBVTZTA7v2FsRGP2noGFvjhJHgqhMp/kCdSVAHX4
iqd6ADjLXUcqFxXkexFyIr0kMtmHxkcjftrx623krKjuzZJGj79eeliFgTljUAmw
t5YbbEq73eDvxMv80d7Tl2B1yQKBgQC+4WSGmgNdxHO3yCoCNCsi6SEexI2E5cpD
KTEEg2sQN78eOcnOav9Wz7fXDkTAp+BjDXB0ObXIPLSPA5dglK0bqAA/YT5gzdCX
wxY1PmBzycObUbjVDaBcVnpPb5zp5SZuwbVLkdFMZ1dCjFKUZGlaGvXIjF90TJ3c
bwspUnq48QKBgFXC3TjJL3YrEQvigKhllqLau2X8dt7HEUW8lb53Zy3tk70sMEoP
VR5l9qSS7W2yBTqcPPo2KrHV9DMGgpJyXKnuU50gT3IbmawT8e/+JmrDmPpRcH+1
kvD3nMy54jSzx6fCpg+EONxQmQglLgCDXQO444r9EwBQEAbDzlOwX0CJAoGAdpQ8
x+Wbm7+0B4LAnhfciFZ9bci7Bcle6nQHcH9Xnn6TKurJdINB1qM52M6TZX+kxMQP
jRRg2mDj5khb3PLfy2OFq9n0T1zsbasS+8ahUq0P6EhPY4OQkGxklT6II0Foq7uI
rcaLWESGj9/uWSM7028WKx0RG4WRN+R/8Y68kHECgYEAp4DP4hu536LMdVf/4JmK
Jh52gsFTqgJQ5GdCY+RxjQYKo2KDgkR+9EC0cNlBEO6PM3oJz7MThMFY/scwpXRl
ENW3Z/nVGSu55++4QJRDooX4oe3SyFto8AkpcNX7eukJOfi2Bj8khUW7sjlCw169
mDYGP72VQ1zM0oi9bdq4ezw=
-----END PRIVATE KEY-----";

/// Public half of [`TEST_PRIVATE_KEY`] (`openssl pkey -pubout`).
const TEST_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAudIkhtrCVpQ19//6npBv
MP81ztFlvJlRcu7e+Y9MYlDlEO+wAsgqrhYO3gcLhYNsQNCcGzSTYuBCWVFGr6mg
nyLXZCqMHTm+CFb6iADkjm0hY+EbC2YluQTlbX14moEnfVSJHCjj0HzOHKnw0NoW
Bgq4dqD/BtfI1sYCtLDTUkNCYkQ7lPnbKt3HOWZyGN7X0aW/equnqdakmq2iENhB
8qmU6nefTvsGjnb+N4PXvLuA9XZl4emeM9MtS5PDWQjN3pA4nkZsGfljdqU2+1/R
oPV7PRTSos+W2qqhPnappIW4BbvjNBL1OTHpplJJNyWXWMrl65yVztkCt2PiWkFa
OQIDAQAB
-----END PUBLIC KEY-----";

/// `client_email` of the test service account.
const CLIENT_EMAIL: &str = "pushpark-test@test-project.iam.gserviceaccount.com";
/// `project_id` of the test service account.
const KEY_PROJECT: &str = "test-project";
/// The device token used by the tests.
const DEVICE_TOKEN: &str = "fcm-device-token-0123456789";

// ---------------------------------------------------------------------------------------------
// A small recording HTTP server on 127.0.0.1.

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    at: Instant,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    fn bearer(&self) -> Option<String> {
        let value = self.headers.get("authorization")?.to_str().ok()?;
        value.strip_prefix("Bearer ").map(str::to_owned)
    }

    /// The `application/x-www-form-urlencoded` body as (name, raw value) pairs.
    fn form(&self) -> Vec<(String, String)> {
        std::str::from_utf8(&self.body)
            .expect("form is UTF-8")
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("name=value");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    fn json(status: u16, body: serde_json::Value) -> Self {
        let mut reply = Self::status(status);
        reply.body = body.to_string();
        reply
            .headers
            .push(("content-type", "application/json".into()));
        reply
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// The handler gets the request and its 0-based index among all requests to this server.
type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen) = (handler.clone(), seen2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, seen) = (handler.clone(), seen.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let request = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                                at: Instant::now(),
                            };
                            let index = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(request.clone());
                                seen.len() - 1
                            };
                            let reply = handler(&request, index);
                            tokio::time::sleep(reply.delay).await;
                            let mut response = Response::builder().status(reply.status);
                            for (name, value) in &reply.headers {
                                response = response.header(*name, value);
                            }
                            Ok::<_, Infallible>(
                                response
                                    .body(Full::new(Bytes::from(reply.body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A token endpoint handing out `token-1`, `token-2`, ... valid for `expires_in` seconds.
async fn token_server(expires_in: u64) -> TestServer {
    TestServer::start(move |_, i| {
        Reply::json(
            200,
            serde_json::json!({
                "access_token": format!("token-{}", i + 1),
                "expires_in": expires_in,
                "token_type": "Bearer",
            }),
        )
    })
    .await
}

/// An FCM stand-in answering every send with 200 and a message name.
async fn fcm_ok() -> TestServer {
    TestServer::start(|_, _| {
        Reply::json(
            200,
            serde_json::json!({"name": "projects/test-project/messages/0:1"}),
        )
    })
    .await
}

/// An FCM stand-in answering every send with an FCM error (`google.rpc.Status`).
async fn fcm_error(
    status: u16,
    rpc_status: &'static str,
    code: Option<&'static str>,
) -> TestServer {
    fcm_error_with(status, rpc_status, code, &[]).await
}

async fn fcm_error_with(
    status: u16,
    rpc_status: &'static str,
    code: Option<&'static str>,
    headers: &[(&'static str, &'static str)],
) -> TestServer {
    let headers = headers.to_vec();
    TestServer::start(move |_, _| {
        let mut reply = Reply::json(status, error_body(status, rpc_status, code));
        for (name, value) in &headers {
            reply = reply.header(name, value);
        }
        reply
    })
    .await
}

fn error_body(status: u16, rpc_status: &str, code: Option<&str>) -> serde_json::Value {
    let mut details = vec![serde_json::json!({
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "message.token", "description": "bad"}],
    })];
    if let Some(code) = code {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }));
    }
    serde_json::json!({"error": {
        "code": status,
        "message": format!("test error {rpc_status}"),
        "status": rpc_status,
        "details": details,
    }})
}

/// The service-account key JSON, as downloaded from the Cloud console.
fn key_json(token_uri: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": KEY_PROJECT,
        "private_key_id": "test-key-id-1",
        "private_key": TEST_PRIVATE_KEY,
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A configuration whose key's `token_uri` is the local token server and whose FCM base URL
/// is the local FCM server.
fn config(fcm: &TestServer, oauth: &TestServer) -> FcmConfig {
    let mut config = FcmConfig::new(ServiceAccountSource::Json(key_json(&format!(
        "{}/token",
        oauth.url()
    ))));
    config.api_base_url = fcm.url();
    config
}

fn provider(fcm: &TestServer, oauth: &TestServer) -> FcmProvider {
    FcmProvider::new(config(fcm, oauth)).expect("provider builds")
}

/// An answer token as the app API mints them, and where the app posts it.
const ANSWER_TOKEN: &str = "pa1.3f2a9c01d4e5b6a7.12.3.1767225632.0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ANSWER_URL: &str = "https://sip.example.com:5443/v1/calls/answer";

fn request(deadline_in: Duration) -> PushRequest {
    PushRequest {
        id: "push-1".to_owned(),
        kind: PushKind::IncomingCall,
        callee_aor: "sip:alice@example.com".to_owned(),
        pn_provider: "fcm".to_owned(),
        pn_prid: DEVICE_TOKEN.to_owned(),
        pn_param: None,
        caller_uri: "sip:bob@example.org".to_owned(),
        caller_display_name: Some("Bob \"B\" Smith".to_owned()),
        call_id: "call-1@example.org".to_owned(),
        deadline: SystemTime::now() + deadline_in,
        answer_token: None,
        answer_url: None,
    }
}

/// A local port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------------
// Success path, message shape and OAuth2.

#[tokio::test]
async fn fcm_success_posts_data_only_high_priority_message_with_the_token_endpoints_bearer() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let provider = provider(&fcm, &oauth);
    let mut req = request(Duration::from_secs(30));
    req.answer_token = Some(ANSWER_TOKEN.to_owned());
    req.answer_url = Some(ANSWER_URL.to_owned());

    assert_eq!(provider.send(&req).await, PushOutcome::Accepted);

    let seen = fcm.seen();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(
        sent.path,
        format!("/v1/projects/{KEY_PROJECT}/messages:send")
    );
    assert_eq!(sent.bearer().as_deref(), Some("token-1"));
    assert_eq!(
        sent.headers.get("content-type").unwrap(),
        "application/json"
    );
    let body = sent.json();
    let ttl = body["message"]["android"]["ttl"]
        .as_str()
        .expect("ttl is a string")
        .to_owned();
    let ttl_secs: u64 = ttl
        .strip_suffix('s')
        .expect("ttl ends in s")
        .parse()
        .expect("whole seconds");
    assert!((28..=30).contains(&ttl_secs), "ttl {ttl} ≈ time left");
    let deadline_ms = req
        .deadline
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    assert_eq!(
        body,
        serde_json::json!({"message": {
            "token": DEVICE_TOKEN,
            "data": {
                "kind": "incoming_call",
                "push_id": "push-1",
                "call_id": "call-1@example.org",
                "callee_aor": "sip:alice@example.com",
                "caller_uri": "sip:bob@example.org",
                "caller_display_name": "Bob \"B\" Smith",
                "deadline_unix_ms": deadline_ms,
                "answer_token": ANSWER_TOKEN,
                "answer_url": ANSWER_URL,
            },
            "android": {"priority": "HIGH", "ttl": ttl},
        }}),
        "data-only (no `notification`), every data value a string"
    );
}

#[tokio::test]
async fn fcm_absent_display_name_is_left_out_of_data() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let mut req = request(Duration::from_secs(10));
    req.caller_display_name = None;
    assert!(provider(&fcm, &oauth).send(&req).await.is_accepted());
    let data = &fcm.seen()[0].json()["message"]["data"];
    assert!(data.get("caller_display_name").is_none(), "{data}");
    assert_eq!(data["caller_uri"], "sip:bob@example.org");
    // No app API: no answer keys (FCM data values cannot be null).
    assert!(data.get("answer_token").is_none(), "{data}");
    assert!(data.get("answer_url").is_none(), "{data}");
}

#[tokio::test]
async fn fcm_pn_param_names_the_project() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let mut req = request(Duration::from_secs(10));
    req.pn_param = Some("other-project-42".to_owned());
    assert!(provider(&fcm, &oauth).send(&req).await.is_accepted());
    assert_eq!(
        fcm.seen()[0].path,
        "/v1/projects/other-project-42/messages:send"
    );
}

#[tokio::test]
async fn fcm_configured_project_overrides_the_keys_without_pn_param() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let mut config = config(&fcm, &oauth);
    config.project_id = Some("configured-project".to_owned());
    let provider = FcmProvider::new(config).unwrap();
    assert!(provider
        .send(&request(Duration::from_secs(10)))
        .await
        .is_accepted());
    assert_eq!(
        fcm.seen()[0].path,
        "/v1/projects/configured-project/messages:send"
    );
}

#[tokio::test]
async fn fcm_pn_param_that_cannot_be_a_project_is_refused_without_sending() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let mut req = request(Duration::from_secs(10));
    req.pn_param = Some("../../evil".to_owned());
    assert_eq!(
        provider(&fcm, &oauth).send(&req).await,
        PushOutcome::permanent(INVALID_PN_PARAM)
    );
    assert_eq!(fcm.count() + oauth.count(), 0);
}

#[tokio::test]
async fn fcm_token_request_is_a_jwt_bearer_grant_signed_by_the_service_account_key() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(provider(&fcm, &oauth)
        .send(&request(Duration::from_secs(10)))
        .await
        .is_accepted());

    let seen = oauth.seen();
    assert_eq!(seen.len(), 1);
    let token_req = &seen[0];
    assert_eq!(token_req.method, "POST");
    assert_eq!(token_req.path, "/token");
    assert_eq!(
        token_req.headers.get("content-type").unwrap(),
        "application/x-www-form-urlencoded"
    );
    let form = token_req.form();
    assert_eq!(form.len(), 2, "{form:?}");
    assert_eq!(form[0].0, "grant_type");
    assert_eq!(
        form[0].1,
        "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    );
    assert_eq!(form[1].0, "assertion");

    let token_uri = format!("{}/token", oauth.url());
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let key = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap();
    let decoded = jsonwebtoken::decode::<serde_json::Value>(&form[1].1, &key, &validation)
        .expect("assertion verifies against the service account's public key");
    assert_eq!(decoded.header.alg, Algorithm::RS256);
    assert_eq!(decoded.header.kid.as_deref(), Some("test-key-id-1"));
    let claims = decoded.claims;
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], FCM_SCOPE);
    assert_eq!(claims["aud"], token_uri);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat >= before && iat <= before + 5, "iat {iat} is now");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 3600));

    // A tampered signature must not verify (the check above can fail).
    let (signed, signature) = form[1].1.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&tampered, &key, &validation).is_err());
}

#[tokio::test]
async fn fcm_token_url_override_is_used_and_is_the_jwt_audience() {
    let fcm = fcm_ok().await;
    let oauth = token_server(3600).await;
    let unused = closed_port().await;
    let mut config = FcmConfig::new(ServiceAccountSource::Json(key_json(&format!(
        "http://{unused}/token"
    ))));
    config.api_base_url = fcm.url();
    config.token_url = Some(format!("{}/other/token", oauth.url()));
    let provider = FcmProvider::new(config).unwrap();
    assert!(provider
        .send(&request(Duration::from_secs(10)))
        .await
        .is_accepted());
    let seen = oauth.seen();
    assert_eq!(seen[0].path, "/other/token");
    let assertion = seen[0].form()[1].1.clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[format!("{}/other/token", oauth.url())]);
    let key = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap();
    jsonwebtoken::decode::<serde_json::Value>(&assertion, &key, &validation)
        .expect("aud is the overriding URL");
}

#[tokio::test]
async fn fcm_key_is_read_from_a_file() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let path = std::env::temp_dir().join(format!("pushpark-fcm-key-{}.json", std::process::id()));
    std::fs::write(&path, key_json(&format!("{}/token", oauth.url()))).unwrap();
    let mut config = FcmConfig::new(ServiceAccountSource::Path(path.clone()));
    config.api_base_url = fcm.url();
    let built = FcmProvider::new(config);
    std::fs::remove_file(&path).unwrap();
    assert!(built
        .expect("builds from file")
        .send(&request(Duration::from_secs(10)))
        .await
        .is_accepted());
}

#[tokio::test]
async fn fcm_access_token_is_reused_then_refreshed_300s_before_expiry() {
    // expires_in 302 s with the default 300 s margin: fresh for 2 s.
    let (fcm, oauth) = (fcm_ok().await, token_server(302).await);
    let provider = provider(&fcm, &oauth);
    for _ in 0..3 {
        assert!(provider
            .send(&request(Duration::from_secs(10)))
            .await
            .is_accepted());
    }
    assert_eq!(oauth.count(), 1, "one token for back-to-back pushes");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(provider
        .send(&request(Duration::from_secs(10)))
        .await
        .is_accepted());
    assert_eq!(oauth.count(), 2, "refreshed once inside the margin");
    let bearers: Vec<_> = fcm.seen().iter().map(|s| s.bearer().unwrap()).collect();
    assert_eq!(bearers, ["token-1", "token-1", "token-1", "token-2"]);
}

#[tokio::test]
async fn fcm_concurrent_pushes_share_one_token_fetch() {
    let fcm = fcm_ok().await;
    let oauth = TestServer::start(|_, i| {
        Reply::json(
            200,
            serde_json::json!({"access_token": format!("token-{}", i + 1), "expires_in": 3600}),
        )
        .after(Duration::from_millis(200))
    })
    .await;
    let provider = Arc::new(provider(&fcm, &oauth));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.send(&request(Duration::from_secs(10))).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_accepted());
    }
    assert_eq!(oauth.count(), 1);
    assert_eq!(fcm.count(), 5);
}

#[tokio::test]
async fn fcm_401_unauthenticated_fetches_a_new_token_and_retries_once() {
    let fcm = TestServer::start(|seen, _| {
        if seen.bearer().as_deref() == Some("token-1") {
            Reply::json(401, error_body(401, "UNAUTHENTICATED", None))
        } else {
            Reply::json(200, serde_json::json!({"name": "m"}))
        }
    })
    .await;
    let oauth = token_server(3600).await;
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_secs(10)))
        .await;
    assert_eq!(outcome, PushOutcome::Accepted);
    assert_eq!(oauth.count(), 2);
    let bearers: Vec<_> = fcm.seen().iter().map(|s| s.bearer().unwrap()).collect();
    assert_eq!(bearers, ["token-1", "token-2"]);
}

#[tokio::test]
async fn fcm_401_twice_is_transient_after_one_retry() {
    let fcm = fcm_error(401, "UNAUTHENTICATED", None).await;
    let oauth = token_server(3600).await;
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_secs(10)))
        .await;
    assert_eq!(outcome, PushOutcome::transient("UNAUTHENTICATED"));
    assert_eq!(fcm.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// FCM error answers.

async fn outcome_of(fcm: TestServer) -> (PushOutcome, usize) {
    let oauth = token_server(3600).await;
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_secs(10)))
        .await;
    (outcome, fcm.count())
}

#[tokio::test]
async fn fcm_unregistered_is_permanent() {
    let (outcome, _) = outcome_of(fcm_error(404, "NOT_FOUND", Some("UNREGISTERED")).await).await;
    assert_eq!(outcome, PushOutcome::permanent("UNREGISTERED"));
}

#[tokio::test]
async fn fcm_404_without_error_code_is_permanent() {
    let (outcome, _) = outcome_of(fcm_error(404, "NOT_FOUND", None).await).await;
    assert_eq!(outcome, PushOutcome::permanent("NOT_FOUND"));
}

#[tokio::test]
async fn fcm_invalid_argument_is_permanent_with_fcms_code() {
    let (outcome, _) =
        outcome_of(fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT")).await).await;
    assert_eq!(outcome, PushOutcome::permanent("INVALID_ARGUMENT"));
}

#[tokio::test]
async fn fcm_sender_id_mismatch_is_permanent() {
    let (outcome, _) =
        outcome_of(fcm_error(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH")).await).await;
    assert_eq!(outcome, PushOutcome::permanent("SENDER_ID_MISMATCH"));
}

#[tokio::test]
async fn fcm_403_permission_denied_without_code_is_transient_our_credentials() {
    let (outcome, _) = outcome_of(fcm_error(403, "PERMISSION_DENIED", None).await).await;
    assert_eq!(outcome, PushOutcome::transient("PERMISSION_DENIED"));
}

#[tokio::test]
async fn fcm_third_party_auth_error_is_transient_and_not_retried() {
    let (outcome, sends) =
        outcome_of(fcm_error(401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR")).await).await;
    assert_eq!(outcome, PushOutcome::transient("THIRD_PARTY_AUTH_ERROR"));
    assert_eq!(sends, 1);
}

#[tokio::test]
async fn fcm_429_with_long_retry_after_is_transient_reports_it_and_is_not_retried() {
    let fcm = fcm_error_with(
        429,
        "RESOURCE_EXHAUSTED",
        Some("QUOTA_EXCEEDED"),
        &[("retry-after", "30")],
    )
    .await;
    let (outcome, sends) = outcome_of(fcm).await;
    assert_eq!(
        outcome,
        PushOutcome::transient("QUOTA_EXCEEDED retry-after=30s")
    );
    assert_eq!(sends, 1);
}

#[tokio::test]
async fn fcm_503_is_transient() {
    let (outcome, sends) =
        outcome_of(fcm_error(503, "UNAVAILABLE", Some("UNAVAILABLE")).await).await;
    assert_eq!(outcome, PushOutcome::transient("UNAVAILABLE"));
    assert_eq!(sends, 1, "no Retry-After, no retry");
}

#[tokio::test]
async fn fcm_500_internal_is_transient() {
    let (outcome, _) = outcome_of(fcm_error(500, "INTERNAL", Some("INTERNAL")).await).await;
    assert_eq!(outcome, PushOutcome::transient("INTERNAL"));
}

#[tokio::test]
async fn fcm_non_json_error_is_transient_http_status() {
    let (outcome, _) = outcome_of(TestServer::start(|_, _| Reply::status(502)).await).await;
    assert_eq!(outcome, PushOutcome::transient("http 502"));
}

#[tokio::test]
async fn fcm_503_with_short_retry_after_is_retried_once_after_waiting() {
    let fcm = TestServer::start(|_, i| {
        if i == 0 {
            Reply::json(503, error_body(503, "UNAVAILABLE", Some("UNAVAILABLE")))
                .header("retry-after", "1")
        } else {
            Reply::json(200, serde_json::json!({"name": "m"}))
        }
    })
    .await;
    let (outcome, sends) = outcome_of_server(&fcm).await;
    assert_eq!(outcome, PushOutcome::Accepted);
    assert_eq!(sends, 2);
    let seen = fcm.seen();
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited Retry-After: {gap:?}"
    );
}

#[tokio::test]
async fn fcm_short_retry_after_is_not_retried_when_the_deadline_is_too_close() {
    let fcm = fcm_error_with(
        503,
        "UNAVAILABLE",
        Some("UNAVAILABLE"),
        &[("retry-after", "2")],
    )
    .await;
    let oauth = token_server(3600).await;
    let started = Instant::now();
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_millis(1500)))
        .await;
    assert_eq!(
        outcome,
        PushOutcome::transient("UNAVAILABLE retry-after=2s")
    );
    assert_eq!(fcm.count(), 1);
    assert!(started.elapsed() < Duration::from_millis(1000));
}

async fn outcome_of_server(fcm: &TestServer) -> (PushOutcome, usize) {
    let oauth = token_server(3600).await;
    let outcome = provider(fcm, &oauth)
        .send(&request(Duration::from_secs(10)))
        .await;
    (outcome, fcm.count())
}

// ---------------------------------------------------------------------------------------------
// Transport failures and deadlines.

#[tokio::test]
async fn fcm_server_slower_than_the_deadline_is_a_transient_timeout_at_the_deadline() {
    let fcm = TestServer::start(|_, _| {
        Reply::json(200, serde_json::json!({"name": "m"})).after(Duration::from_secs(10))
    })
    .await;
    let oauth = token_server(3600).await;
    let started = Instant::now();
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_millis(500)))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(outcome, PushOutcome::transient(reasons::TIMEOUT));
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn fcm_connection_refused_is_transient() {
    let oauth = token_server(3600).await;
    let mut config = FcmConfig::new(ServiceAccountSource::Json(key_json(&format!(
        "{}/token",
        oauth.url()
    ))));
    config.api_base_url = format!("http://{}", closed_port().await);
    let outcome = FcmProvider::new(config)
        .unwrap()
        .send(&request(Duration::from_secs(5)))
        .await;
    assert_eq!(outcome, PushOutcome::transient(reasons::CONNECT_FAILED));
}

#[tokio::test]
async fn fcm_push_whose_deadline_passed_is_not_sent() {
    let (fcm, oauth) = (fcm_ok().await, token_server(3600).await);
    let mut req = request(Duration::ZERO);
    req.deadline = SystemTime::now() - Duration::from_secs(1);
    assert_eq!(
        provider(&fcm, &oauth).send(&req).await,
        PushOutcome::transient(reasons::DEADLINE_EXPIRED)
    );
    assert_eq!(fcm.count() + oauth.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Token endpoint failures: always transient, nothing sent to FCM.

#[tokio::test]
async fn fcm_token_endpoint_error_is_transient_and_nothing_is_sent() {
    let fcm = fcm_ok().await;
    let oauth = TestServer::start(|_, _| {
        Reply::json(
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": "Invalid JWT"}),
        )
    })
    .await;
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_secs(5)))
        .await;
    assert_eq!(outcome, PushOutcome::transient("oauth2 invalid_grant"));
    assert_eq!(fcm.count(), 0);
}

#[tokio::test]
async fn fcm_token_endpoint_5xx_is_transient() {
    let fcm = fcm_ok().await;
    let oauth = TestServer::start(|_, _| Reply::status(500)).await;
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_secs(5)))
        .await;
    assert_eq!(outcome, PushOutcome::transient("oauth2 http 500"));
    assert_eq!(fcm.count(), 0);
}

#[tokio::test]
async fn fcm_token_endpoint_unreachable_is_transient() {
    let fcm = fcm_ok().await;
    let unreachable = closed_port().await;
    let mut config = FcmConfig::new(ServiceAccountSource::Json(key_json(&format!(
        "http://{unreachable}/token"
    ))));
    config.api_base_url = fcm.url();
    let outcome = FcmProvider::new(config)
        .unwrap()
        .send(&request(Duration::from_secs(5)))
        .await;
    assert_eq!(
        outcome,
        PushOutcome::transient(format!("oauth2 {}", reasons::CONNECT_FAILED))
    );
    assert_eq!(fcm.count(), 0);
}

#[tokio::test]
async fn fcm_token_endpoint_slower_than_the_deadline_is_transient_timeout() {
    let fcm = fcm_ok().await;
    let oauth = TestServer::start(|_, _| {
        Reply::json(
            200,
            serde_json::json!({"access_token": "t", "expires_in": 3600}),
        )
        .after(Duration::from_secs(10))
    })
    .await;
    let started = Instant::now();
    let outcome = provider(&fcm, &oauth)
        .send(&request(Duration::from_millis(500)))
        .await;
    assert_eq!(
        outcome,
        PushOutcome::transient(format!("oauth2 {}", reasons::TIMEOUT))
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn fcm_token_failure_is_repeated_without_refetching_during_the_backoff_then_retried() {
    let fcm = fcm_ok().await;
    let oauth = TestServer::start(|_, i| {
        if i == 0 {
            Reply::status(503)
        } else {
            Reply::json(
                200,
                serde_json::json!({"access_token": "t2", "expires_in": 3600}),
            )
        }
    })
    .await;
    let mut config = config(&fcm, &oauth);
    config.token_failure_backoff = Duration::from_millis(300);
    let provider = FcmProvider::new(config).unwrap();
    let req = request(Duration::from_secs(5));
    assert_eq!(
        provider.send(&req).await,
        PushOutcome::transient("oauth2 http 503")
    );
    assert_eq!(
        provider.send(&req).await,
        PushOutcome::transient("oauth2 http 503")
    );
    assert_eq!(
        oauth.count(),
        1,
        "second push within the backoff did not refetch"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(provider.send(&req).await.is_accepted());
    assert_eq!(oauth.count(), 2);
    assert_eq!(fcm.seen()[0].bearer().as_deref(), Some("t2"));
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[tokio::test]
async fn fcm_bad_configuration_is_refused_at_construction() {
    let json = key_json("http://127.0.0.1:9/token");

    let mut bad_pem: serde_json::Value = serde_json::from_str(&json).unwrap();
    bad_pem["private_key"] =
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    let err = FcmProvider::new(FcmConfig::new(ServiceAccountSource::Json(
        bad_pem.to_string(),
    )));
    assert!(
        matches!(err, Err(FcmError::InvalidPrivateKey(_))),
        "{err:?}"
    );

    let mut no_project: serde_json::Value = serde_json::from_str(&json).unwrap();
    no_project.as_object_mut().unwrap().remove("project_id");
    let err = FcmProvider::new(FcmConfig::new(ServiceAccountSource::Json(
        no_project.to_string(),
    )));
    assert!(matches!(err, Err(FcmError::MissingProjectId)), "{err:?}");

    let err = FcmProvider::new(FcmConfig::new(ServiceAccountSource::Json("{}".into())));
    assert!(matches!(err, Err(FcmError::InvalidKey(_))), "{err:?}");

    let mut config = FcmConfig::new(ServiceAccountSource::Json(json.clone()));
    config.api_base_url = "ftp://example.com".into();
    assert!(matches!(
        FcmProvider::new(config),
        Err(FcmError::InvalidUrl { .. })
    ));

    let err = FcmProvider::new(FcmConfig::new(ServiceAccountSource::Path(
        "/nonexistent/pushpark-key.json".into(),
    )));
    assert!(matches!(err, Err(FcmError::ReadKey { .. })), "{err:?}");

    // Debug output never shows the private key.
    let shown = format!(
        "{:?} {:?}",
        FcmConfig::new(ServiceAccountSource::Json(json.clone())),
        FcmProvider::new(FcmConfig::new(ServiceAccountSource::Json(json))).unwrap()
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

/// End to end: a call parked for an Android phone, FCM answers UNREGISTERED; the token
/// disappears from the store and the caller hears 480 (specs/parking.md, push failed
/// permanently with no other device).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_fcm_calls_unregistered_is_removed_from_the_store_and_the_caller_gets_480() {
    use pushpark::config::{Provider, Transport as Listen};
    use pushpark::server::Server;
    use pushpark::store::{Store, StoreOptions};

    let fcm = fcm_error(404, "NOT_FOUND", Some("UNREGISTERED")).await;
    let oauth = token_server(3600).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir.path().join("service-account.json");
    std::fs::write(&key, key_json(&format!("{}/token", oauth.url()))).expect("the key file");
    let mut config = common::loopback_config(dir.path(), &[Listen::Udp, Listen::Tcp], false);
    config.auth.trusted_peers = vec!["127.0.0.1/32".parse().expect("a network")];
    config.push.providers.insert(
        "firebase".into(),
        Provider::Fcm {
            service_account: key,
            project_id: None,
            api_base_url: Some(fcm.url()),
            token_url: None,
            timeout: Duration::from_secs(2),
        },
    );
    config.push.routes.insert(
        "fcm".into(),
        toml::Spanned::new(0..0, "firebase".to_owned()),
    );
    let store_path = config.store.path.clone();
    let server = Server::start(config).await.expect("the server starts");
    let udp = server.local_addr(Listen::Udp).expect("UDP");
    let tcp = server.local_addr(Listen::Tcp).expect("TCP");

    let phone = ua::Device::builder("sip:bob@localhost", tcp)
        .transport(ua::Transport::Tcp)
        .push("fcm", DEVICE_TOKEN, Some(KEY_PROJECT))
        .start()
        .await
        .expect("the phone starts");
    let ok = phone.register(600).await.expect("REGISTER is answered");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    phone.sleep().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let alice = ua::Caller::new("sip:alice@localhost", ua::Transport::Udp)
        .await
        .expect("the caller starts");
    alice
        .invite("sip:bob@localhost", udp)
        .await
        .expect("INVITE sent");
    let unavailable = alice
        .expect_final(ua::STEP)
        .await
        .expect("a final response");
    assert_eq!(unavailable.status_code.code(), 480, "{unavailable}");
    assert_eq!(fcm.seen().len(), 1, "one push, no retry of a dead token");

    // The store forgets the token (written from a blocking task: give it a moment).
    let mut forgotten = false;
    for _ in 0..20 {
        let store = Store::open(&store_path, &StoreOptions::default()).expect("the store opens");
        let bindings = store
            .bindings("sip:bob@localhost", pushpark_now())
            .expect("bindings");
        if bindings.iter().all(|b| b.push.is_none()) {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
    assert!(forgotten, "the dead token is still in the store");
}

fn pushpark_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}
