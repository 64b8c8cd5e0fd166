//! The app API (specs/parking.md §9): an app woken by the push of a call answers `busy`,
//! `decline` or `ringing` from the push, over HTTPS, without starting its SIP stack.
//!
//! `POST /v1/calls/answer` with `{"token": "<answer_token of the push>", "answer": "busy"}`.
//! This module is the shell's: it speaks HTTP, bounds what it reads, and hands each answer
//! to the event loop ([`AppRequest`]); the node checks the token and the core decides
//! ([`crate::node::AppAnswer`]); the reply maps to an HTTP status here.
//!
//! | reply | HTTP |
//! |---|---|
//! | taken | `200 {"result":"taken"}` |
//! | the device has the call over SIP, or answered otherwise | `409 {"error":"answer_over_sip"}` |
//! | the call is over | `410 {"error":"call_over"}` |
//! | the token expired, or is from an earlier run | `410 {"error":"token_expired"}` |
//! | the token is not ours | `403 {"error":"invalid_token"}` |
//! | the sender is blocked by the rate limiter | `429` with `Retry-After` |
//! | not JSON, no token, another answer | `400 {"error":"bad_request","detail":...}` |
//! | another path, another method, a body over 4 KiB | `404`, `405`, `413` |
//! | a body not sent within `connections.message_timeout` | `408` |
//! | the event loop is overloaded or shutting down | `503` with `Retry-After` |

pub mod token;

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pushpark_model::{AppReply, PushAnswer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{self, AppApi as AppApiConfig};
use crate::metrics::Metrics;
use crate::node::AppAnswer;
use crate::transport::{Admission, TlsError, TlsFiles};

/// The largest request body read.
pub const MAX_BODY: usize = 4096;

/// An answer from the push on its way to the event loop, and where its reply goes.
pub struct AppRequest {
    pub peer: IpAddr,
    pub token: String,
    pub answer: PushAnswer,
    pub reply: oneshot::Sender<AppAnswer>,
}

/// Why the app API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppApiError {
    #[error("app API: cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("app API: {0}")]
    Tls(#[from] TlsError),
}

/// What limits the API's peers.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once, in all and from one address (`[connections]`, counted
    /// apart from SIP's; trusted peers exempt from the second).
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub trusted: Vec<ipnet::IpNet>,
    /// Time for the TLS handshake, and for each request's head and its body.
    pub message_timeout: Duration,
    /// A connection idle for longer is closed.
    pub idle_timeout: Duration,
    /// What `Retry-After` says to a sender the rate limiter blocked.
    pub blocked_for: Duration,
}

impl Limits {
    pub fn from_config(config: &config::Config) -> Self {
        Self {
            max_connections: config.connections.max,
            max_per_ip: config.connections.max_per_ip,
            trusted: config.auth.trusted_peers.clone(),
            message_timeout: config.connections.message_timeout,
            idle_timeout: config.connections.idle_timeout,
            blocked_for: config.rate_limit.block_for,
        }
    }
}

/// The running app API.
pub struct AppApi {
    local: SocketAddr,
    tls: Option<Arc<TlsFiles>>,
    task: JoinHandle<()>,
}

impl AppApi {
    /// Binds the listener (and reads the certificate) of `config`, if the API is on, and
    /// serves it, handing every answer to `loop_tx`.
    pub async fn start(
        config: &AppApiConfig,
        limits: Limits,
        loop_tx: mpsc::Sender<AppRequest>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, AppApiError> {
        let Some(address) = config.address() else {
            return Ok(None);
        };
        let tls = match (&config.certificate, &config.private_key) {
            (Some(certificate), Some(key)) => Some(Arc::new(TlsFiles::load(certificate, key)?)),
            _ => None,
        };
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| AppApiError::Listen { address, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| AppApiError::Listen { address, source })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!("app API on {scheme}://{local}{}", AppApiConfig::ANSWER_PATH);
        let admission = Admission::new(
            limits.max_connections,
            limits.max_per_ip,
            limits.trusted.clone(),
            metrics,
        );
        let task = tokio::spawn(serve(
            listener,
            tls.clone(),
            (limits, Arc::new(admission)),
            loop_tx,
        ));
        Ok(Some(Self { local, tls, task }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Reads the certificate and key again (SIGHUP); on a problem the working one stays.
    pub fn reload_tls(&self) {
        if let Some(files) = &self.tls {
            match files.reload() {
                Ok(()) => info!(
                    "app API: certificate {} reloaded",
                    files.certificate().display()
                ),
                Err(e) => warn!("app API: keeping the certificate in use: {e}"),
            }
        }
    }
}

impl Drop for AppApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsFiles>>,
    (limits, admission): (Limits, Arc<Admission>),
    loop_tx: mpsc::Sender<AppRequest>,
) {
    // The connections' tasks: aborted with this one when the API stops, so that no kept-alive
    // connection outlives the server.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        // Beyond a limit a connection is closed at once: nothing is read from it.
        let Some(slot) = admission.admit(peer.ip(), true) else {
            debug!("app API: {peer}: over the connection limits, closed");
            continue;
        };
        let (tls, limits, loop_tx) = (tls.clone(), limits.clone(), loop_tx.clone());
        let (message_timeout, idle_timeout) = (limits.message_timeout, limits.idle_timeout);
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let (loop_tx, limits) = (loop_tx.clone(), limits.clone());
                async move { Ok::<_, Infallible>(handle(request, peer.ip(), &limits, &loop_tx).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(message_timeout)
                .max_buf_size(16 * 1024);
            let served = match tls {
                Some(files) => {
                    let handshake = files.acceptor().accept(stream);
                    match tokio::time::timeout(message_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            let connection = http.serve_connection(TokioIo::new(stream), service);
                            tokio::time::timeout(idle_timeout, connection).await
                        }
                        Ok(Err(e)) => return debug!("app API: {peer}: TLS handshake: {e}"),
                        Err(_) => return debug!("app API: {peer}: TLS handshake timed out"),
                    }
                }
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    tokio::time::timeout(idle_timeout, connection).await
                }
            };
            if let Ok(Err(e)) = served {
                debug!("app API: {peer}: {e}");
            }
        });
    }
}

/// The body of an answer.
#[derive(Deserialize)]
struct Answer {
    token: String,
    answer: String,
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    json(status, format!("{{\"error\":\"{error}\"}}"))
}

fn with_retry_after(mut response: Response<Full<Bytes>>, after: Duration) -> Response<Full<Bytes>> {
    if let Ok(value) = after.as_secs().max(1).to_string().parse() {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, value);
    }
    response
}

async fn handle(
    request: Request<Incoming>,
    peer: IpAddr,
    limits: &Limits,
    loop_tx: &mpsc::Sender<AppRequest>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != AppApiConfig::ANSWER_PATH {
        return error(StatusCode::NOT_FOUND, "not_found");
    }
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return response;
    }
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(limits.message_timeout, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "bad_request"),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request_timeout"),
    };
    let (token, answer) = match parse_answer(&body) {
        Ok(parsed) => parsed,
        Err(detail) => {
            let detail = serde_json::Value::from(detail);
            return json(
                StatusCode::BAD_REQUEST,
                format!("{{\"error\":\"bad_request\",\"detail\":{detail}}}"),
            );
        }
    };
    let (reply, replied) = oneshot::channel();
    let request = AppRequest {
        peer,
        token,
        answer,
        reply,
    };
    let overloaded = || {
        with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Duration::from_secs(5),
        )
    };
    if loop_tx.try_send(request).is_err() {
        return overloaded();
    }
    match replied.await {
        Ok(answer) => respond(answer, limits),
        Err(_) => overloaded(),
    }
}

/// The token and the answer of a request body, or what is wrong with it.
pub fn parse_answer(body: &[u8]) -> Result<(String, PushAnswer), String> {
    let Answer { token, answer } =
        serde_json::from_slice(body).map_err(|e| format!("not an answer: {e}"))?;
    if token.len() > token::MAX_TOKEN_LEN {
        return Err("token too long".to_owned());
    }
    let answer = match answer.as_str() {
        "busy" => PushAnswer::Busy,
        "decline" => PushAnswer::Decline,
        "ringing" => PushAnswer::Ringing,
        _ => return Err("answer must be busy, decline or ringing".to_owned()),
    };
    Ok((token, answer))
}

fn respond(answer: AppAnswer, limits: &Limits) -> Response<Full<Bytes>> {
    match answer {
        AppAnswer::Reply(AppReply::Taken) => {
            json(StatusCode::OK, "{\"result\":\"taken\"}".to_owned())
        }
        AppAnswer::Reply(AppReply::Conflict) => error(StatusCode::CONFLICT, "answer_over_sip"),
        AppAnswer::Reply(AppReply::CallOver) => error(StatusCode::GONE, "call_over"),
        AppAnswer::Expired => error(StatusCode::GONE, "token_expired"),
        AppAnswer::InvalidToken => error(StatusCode::FORBIDDEN, "invalid_token"),
        AppAnswer::Blocked => with_retry_after(
            error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            limits.blocked_for,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_an_answer_or_says_what_is_wrong() {
        assert_eq!(
            parse_answer(br#"{"token":"pa1.x","answer":"busy"}"#),
            Ok(("pa1.x".to_owned(), PushAnswer::Busy))
        );
        assert_eq!(
            parse_answer(br#"{"token":"t","answer":"decline","app":"1.2"}"#),
            Ok(("t".to_owned(), PushAnswer::Decline)),
            "fields of later versions are ignored"
        );
        for bad in [
            &br#"{"token":"t","answer":"maybe"}"#[..],
            br#"{"answer":"busy"}"#,
            br#"{"token":7,"answer":"busy"}"#,
            b"token=t&answer=busy",
            b"",
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"token":"{}","answer":"busy"}}"#, "a".repeat(200));
        assert!(parse_answer(long.as_bytes()).is_err());
    }
}
