//! The push receiver: the HTTP endpoint the server's `webhook` push provider POSTs to.
//!
//! Each POST to `/push` carries one [`PushRequest`] as JSON (format `pushpark`). The
//! receiver notes when it arrived, hands it to the call it names (by Call-ID), with the
//! answer token and URL of the server's app API when it carries them, and answers 200 at
//! once, so the push counts as accepted; the device wakes (or answers from the push) later,
//! on its own time.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushpark::push::PushRequest;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::router::Router;

/// A running push receiver. Stops serving when dropped.
pub struct Webhook {
    addr: SocketAddr,
    router: Arc<Router>,
    task: JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    /// Listens on `addr` (port 0 picks a free port) and starts serving.
    pub async fn bind(addr: SocketAddr) -> io::Result<Webhook> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = Arc::new(Router::new());
        let task = tokio::spawn(serve(listener, Arc::clone(&router)));
        Ok(Webhook { addr, router, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }
}

async fn serve(listener: TcpListener, router: Arc<Router>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, Arc::clone(&router)));
            // A connection the server drops mid-request only loses that push.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    router: Arc<Router>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let status = if request.method() != Method::POST || request.uri().path() != "/push" {
        StatusCode::NOT_FOUND
    } else {
        match request.into_body().collect().await {
            Ok(body) => match serde_json::from_slice::<PushRequest>(&body.to_bytes()) {
                Ok(push) => {
                    router.push(push, at);
                    StatusCode::OK
                }
                Err(_) => {
                    router.bad_push();
                    StatusCode::BAD_REQUEST
                }
            },
            Err(_) => {
                router.bad_push();
                StatusCode::BAD_REQUEST
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}
