//! A record of the requests a UA received, with a way to await the next one of a method.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rsip::{Method, Request};

use super::sip::MessageExt;
use super::{UaError, UaResult};

/// One request a UA received.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The method.
    pub method: Method,
    /// The Call-ID.
    pub call_id: String,
    /// The CSeq number.
    pub cseq: u32,
    /// The top Via branch.
    pub branch: String,
    /// The Reason header (RFC 3326), e.g. `SIP;cause=487;text="..."`, if any.
    pub reason: Option<String>,
    /// Where it came from (over TCP, the connection's peer).
    pub source: SocketAddr,
    /// When it arrived.
    pub at: Instant,
    /// `true` when an earlier request had the same branch and method (a retransmission).
    pub retransmission: bool,
    /// The whole request.
    pub request: Request,
}

impl ReceivedRequest {
    /// The `cause` of the Reason header, if any (`SIP;cause=487` → 487).
    pub fn reason_cause(&self) -> Option<u16> {
        super::sip::param(self.reason.as_deref()?, "cause")?
            .parse()
            .ok()
    }
}

#[derive(Default)]
struct Inner {
    entries: Vec<ReceivedRequest>,
    consumed: HashSet<usize>,
    seen: HashSet<(String, String)>,
}

/// Every request received, in order.
#[derive(Default)]
pub struct RequestLog {
    inner: Mutex<Inner>,
}

impl RequestLog {
    /// Records `request`; returns the entry (with `retransmission` set).
    pub fn record(&self, request: &Request, source: SocketAddr) -> ReceivedRequest {
        let branch = request.top_branch().unwrap_or_default();
        let method = request.method;
        let mut inner = self.inner.lock().expect("request log lock");
        let retransmission = !inner.seen.insert((branch.clone(), method.to_string()));
        let entry = ReceivedRequest {
            method,
            call_id: request.call_id(),
            cseq: request.cseq().0,
            branch,
            reason: request.header("Reason"),
            source,
            at: Instant::now(),
            retransmission,
            request: request.clone(),
        };
        inner.entries.push(entry.clone());
        entry
    }

    /// Every request received, retransmissions included.
    pub fn all(&self) -> Vec<ReceivedRequest> {
        self.inner.lock().expect("request log lock").entries.clone()
    }

    /// How many `method` requests arrived, retransmissions not counted.
    pub fn count(&self, method: Method) -> usize {
        self.inner
            .lock()
            .expect("request log lock")
            .entries
            .iter()
            .filter(|e| e.method == method && !e.retransmission)
            .count()
    }

    /// The next `method` request not returned before (retransmissions skipped), waiting up to
    /// `timeout` for it.
    pub async fn expect(&self, method: Method, timeout: Duration) -> UaResult<ReceivedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut inner = self.inner.lock().expect("request log lock");
                let found = inner.entries.iter().enumerate().position(|(i, e)| {
                    e.method == method && !e.retransmission && !inner.consumed.contains(&i)
                });
                if let Some(i) = found {
                    inner.consumed.insert(i);
                    return Ok(inner.entries[i].clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(UaError::Timeout(format!(
                    "a {method} request ({timeout:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
