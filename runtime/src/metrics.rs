//! Operational metrics in the Prometheus text format, served on the admin listener
//! (`GET /metrics`, and `GET /health`).
//!
//! The event loop records into [`Metrics`]; the admin listener renders them. One mutex,
//! taken briefly by both: the loop never waits on the network for it.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushpark_model::PushAnswer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::debug;

/// Upper bounds of the push-latency histogram, in seconds.
const LATENCY_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds of the wake-up delay histogram, in seconds: phones take from a fraction of
/// a second to several seconds to wake, connect and register.
const WAKEUP_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Cumulative counts per bucket of `bounds`.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// The series of this histogram, `labels` (`key="value",...` or empty) on each.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{braces} {}\n{name}_count{braces} {}",
            self.count, self.sum, self.count
        );
    }
}

#[derive(Debug)]
struct Data {
    calls: u64,
    parked: u64,
    outcomes: BTreeMap<u16, u64>,
    pushes: BTreeMap<(String, &'static str, String), u64>,
    push_latency: BTreeMap<String, Histogram>,
    wakeup: Histogram,
    limit_hits: BTreeMap<&'static str, u64>,
    shed: BTreeMap<&'static str, u64>,
    app_answers: BTreeMap<(PushAnswer, &'static str), u64>,
    gauges: Gauges,
    /// When the event loop last turned, and how long it may go without turning.
    heartbeat: Option<(Instant, Duration)>,
}

impl Default for Data {
    fn default() -> Self {
        Self {
            calls: 0,
            parked: 0,
            outcomes: BTreeMap::new(),
            pushes: BTreeMap::new(),
            push_latency: BTreeMap::new(),
            wakeup: Histogram::new(WAKEUP_BUCKETS),
            limit_hits: BTreeMap::new(),
            shed: BTreeMap::new(),
            app_answers: BTreeMap::new(),
            gauges: Gauges::default(),
            heartbeat: None,
        }
    }
}

/// What the server holds right now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Call records the core holds (in progress, or ended and lingering).
    pub core_calls: usize,
    /// Calls the proxy keeps SIP for.
    pub proxy_calls: usize,
    /// Calls waiting for a pushed phone to wake.
    pub parked_calls: usize,
    /// Unexpired bindings.
    pub bindings: usize,
    /// SIP transactions in progress.
    pub transactions: usize,
    /// Source addresses the rate limiter tracks (counting, or blocked).
    pub rate_limited_sources: usize,
    /// 1 while the server sheds new work (`sip.overload_delay`), else 0.
    pub overloaded: usize,
}

/// The server's counters, histograms and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    data: Mutex<Data>,
}

/// How a push ended, as a label.
pub fn push_result(permanent: Option<bool>) -> &'static str {
    match permanent {
        None => "accepted",
        Some(true) => "permanent",
        Some(false) => "transient",
    }
}

impl Metrics {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call for a local user reached the core.
    pub fn call(&self) {
        self.data().calls += 1;
    }

    /// A call began to wait for a pushed phone.
    pub fn parked(&self) {
        self.data().parked += 1;
    }

    /// A parked call reached a phone that woke and registered, `delay` after it was parked.
    pub fn woke(&self, delay: Duration) {
        self.data().wakeup.observe(delay.as_secs_f64());
    }

    /// A caller got its final response `code`.
    pub fn outcome(&self, code: u16) {
        *self.data().outcomes.entry(code).or_default() += 1;
    }

    /// A push ended after `latency`.
    pub fn push(&self, provider: &str, result: &'static str, reason: &str, latency: Duration) {
        let mut data = self.data();
        *data
            .pushes
            .entry((provider.to_owned(), result, reason.to_owned()))
            .or_default() += 1;
        data.push_latency
            .entry(provider.to_owned())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(latency.as_secs_f64());
    }

    /// A limit was hit (`connections`, `message_timeout`, ...: named as its key).
    pub fn limit_hit(&self, limit: &'static str) {
        *self.data().limit_hits.entry(limit).or_default() += 1;
    }

    /// A request was refused with 503 because the server is overloaded (`sip.overload_delay`).
    pub fn shed(&self, method: &'static str) {
        *self.data().shed.entry(method).or_default() += 1;
    }

    /// An app answered `answer` from its push, with `result` (`taken`, `conflict`...).
    pub fn app_answer(&self, answer: PushAnswer, result: &'static str) {
        *self.data().app_answers.entry((answer, result)).or_default() += 1;
    }

    pub fn set_gauges(&self, gauges: Gauges) {
        self.data().gauges = gauges;
    }

    /// The event loop turned at `now`; it turns again within `every` however idle (its
    /// timer wakes it), unless it is stuck or gone.
    pub fn turned(&self, now: Instant, every: Duration) {
        self.data().heartbeat = Some((now, every));
    }

    /// `/health` at `now`: ok while the event loop turns; an error, with how long it has
    /// not, once it missed its own timer twice over (stuck, or ended by a panic).
    pub fn health(&self, now: Instant) -> Result<(), String> {
        match self.data().heartbeat {
            None => Err("the event loop has not started".to_owned()),
            Some((at, every)) => {
                let since = now.saturating_duration_since(at);
                if since > every * 2 + Duration::from_secs(1) {
                    Err(format!("the event loop has not turned for {since:.1?}"))
                } else {
                    Ok(())
                }
            }
        }
    }

    pub fn gauges(&self) -> Gauges {
        self.data().gauges
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let data = self.data();
        let mut out = String::new();
        single(
            &mut out,
            "pushpark_calls_total",
            "counter",
            "INVITEs for local users handed to the call-parking core.",
            data.calls,
        );
        single(
            &mut out,
            "pushpark_calls_parked_total",
            "counter",
            "Calls that waited for a pushed phone to wake.",
            data.parked,
        );
        let name = header(
            &mut out,
            "pushpark_call_outcomes_total",
            "counter",
            "Final responses given to callers, by status code.",
        );
        for (code, n) in &data.outcomes {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
        }
        let name = header(
            &mut out,
            "pushpark_pushes_total",
            "counter",
            "Pushes by provider, result (accepted, transient, permanent) and reason.",
        );
        for ((provider, result, reason), n) in &data.pushes {
            let reason = reason.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "{name}{{provider=\"{provider}\",result=\"{result}\",reason=\"{reason}\"}} {n}"
            );
        }
        let name = header(
            &mut out,
            "pushpark_push_latency_seconds",
            "histogram",
            "From handing a push to its provider to the provider's answer.",
        );
        for (provider, h) in &data.push_latency {
            h.render(&mut out, name, &format!("provider=\"{provider}\""));
        }
        let name = header(
            &mut out,
            "pushpark_wakeup_delay_seconds",
            "histogram",
            "From parking a call (its first push) to delivering it to a phone that woke.",
        );
        data.wakeup.render(&mut out, name, "");
        let name = header(
            &mut out,
            "pushpark_limit_hits_total",
            "counter",
            "Times a limit refused or cut off a peer, by limit (named as its configuration key).",
        );
        for (limit, n) in &data.limit_hits {
            let _ = writeln!(out, "{name}{{limit=\"{limit}\"}} {n}");
        }
        let name = header(
            &mut out,
            "pushpark_shed_total",
            "counter",
            "Requests refused with 503 while overloaded (sip.overload_delay), by method.",
        );
        for (method, n) in &data.shed {
            let _ = writeln!(out, "{name}{{method=\"{method}\"}} {n}");
        }
        let name = header(
            &mut out,
            "pushpark_app_answers_total",
            "counter",
            "Answers apps sent from their pushes over the app API, by answer and result.",
        );
        for ((answer, result), n) in &data.app_answers {
            let answer = match answer {
                PushAnswer::Busy => "busy",
                PushAnswer::Decline => "decline",
                PushAnswer::Ringing => "ringing",
            };
            let _ = writeln!(out, "{name}{{answer=\"{answer}\",result=\"{result}\"}} {n}");
        }
        let g = data.gauges;
        for (name, help, value) in [
            (
                "pushpark_core_calls",
                "Call records the core holds.",
                g.core_calls,
            ),
            (
                "pushpark_proxy_calls",
                "Calls the proxy keeps SIP for.",
                g.proxy_calls,
            ),
            (
                "pushpark_calls_parked",
                "Calls waiting for a pushed phone to wake.",
                g.parked_calls,
            ),
            ("pushpark_bindings", "Unexpired bindings.", g.bindings),
            (
                "pushpark_transactions",
                "SIP transactions in progress.",
                g.transactions,
            ),
            (
                "pushpark_rate_limit_sources",
                "Source addresses the rate limiter tracks (counting, or blocked).",
                g.rate_limited_sources,
            ),
            (
                "pushpark_overloaded",
                "1 while the server sheds new calls and REGISTERs (sip.overload_delay), else 0.",
                g.overloaded,
            ),
        ] {
            single(&mut out, name, "gauge", help, value);
        }
        drop(data);
        if let Some(bytes) = resident_bytes() {
            single(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                bytes,
            );
        }
        out
    }
}

/// This process's resident set size (Linux: `VmRSS` of /proc/self/status).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Writes a metric of one unlabelled value.
fn single(out: &mut String, name: &'static str, kind: &str, help: &str, value: impl fmt::Display) {
    let name = header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes the HELP and TYPE lines of a metric and returns its name.
fn header(out: &mut String, name: &'static str, kind: &str, help: &str) -> &'static str {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name
}

/// Serves `GET /metrics` and `GET /health` on `addr` until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        let (status, body) = match request.uri().path() {
                            "/metrics" => (StatusCode::OK, metrics.render()),
                            "/health" => match metrics.health(Instant::now()) {
                                Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                            },
                            _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                        };
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    debug!("admin connection: {e}");
                }
            });
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_event_loop_turning() {
        let metrics = Metrics::default();
        let t0 = Instant::now();
        assert!(metrics.health(t0).is_err(), "not started");
        metrics.turned(t0, Duration::from_secs(30));
        assert_eq!(metrics.health(t0 + Duration::from_secs(60)), Ok(()));
        let stuck = metrics.health(t0 + Duration::from_secs(62));
        assert!(
            stuck.as_ref().is_err_and(|why| why.contains("not turned")),
            "{stuck:?}"
        );
        // A loop due again soon is stuck sooner.
        metrics.turned(t0, Duration::ZERO);
        assert_eq!(metrics.health(t0 + Duration::from_millis(900)), Ok(()));
        assert!(metrics.health(t0 + Duration::from_millis(1_100)).is_err());
    }
}
