//! Keeps push I/O off the SIP hot path.
//!
//! The SIP core calls [`Dispatcher::submit`], which is synchronous and never blocks: it routes
//! the request by its `pn-provider` to that provider's bounded queue with `try_send`. Each
//! provider has one worker task that takes a concurrency permit (a semaphore of
//! [`ProviderLimits::max_in_flight`]), then the next queued push, and runs the send as its own
//! tokio task. Every submitted push — including the ones refused on the spot — yields exactly
//! one [`PushReport`] carrying the caller's opaque tag on the [`PushReports`] channel.
//!
//! Refusals on the spot (reported immediately, nothing is sent):
//! * unknown `pn-provider` → permanent [`reasons::PROVIDER_NOT_CONFIGURED`];
//! * provider queue full → transient [`reasons::QUEUE_FULL`];
//! * deadline already passed when the push leaves the queue → transient
//!   [`reasons::DEADLINE_EXPIRED`].
//!
//! Every send is also bounded by the request's deadline (plus a short grace for the provider to
//! report its own timeout): an overrunning send is aborted and reported as transient
//! [`reasons::TIMEOUT`]; a panicking provider is reported as transient
//! [`reasons::PROVIDER_PANICKED`].
//!
//! The report channel is unbounded so that reporting never blocks or drops an outcome; its
//! length is bounded in practice by the pushes the core has submitted and not yet read back.
//!
//! Dropping every [`Dispatcher`] clone closes the queues: pushes already queued are still sent
//! and reported, then the workers end, and the report channel closes once all are done.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{reasons, PushOutcome, PushProvider, PushRequest};

/// Extra time given to a provider past the deadline to report its own timeout before the
/// dispatcher aborts the send.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Queue and concurrency limits of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Pushes that may wait for a free slot; more are refused with [`reasons::QUEUE_FULL`].
    pub queue_capacity: usize,
    /// Pushes in flight at once towards this provider.
    pub max_in_flight: usize,
}

impl Default for ProviderLimits {
    /// 1024 queued, 64 in flight.
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_in_flight: 64,
        }
    }
}

/// The outcome of one submitted push, as read by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport<T> {
    /// The opaque tag given to [`Dispatcher::submit`].
    pub tag: T,
    /// [`PushRequest::id`] of the push.
    pub push_id: String,
    /// The request's `pn-provider`, as submitted.
    pub pn_provider: String,
    /// [`PushProvider::name`] of the provider that handled it; empty if none was configured.
    pub provider: String,
    /// What happened.
    pub outcome: PushOutcome,
}

/// Receiving end of the reports; read it from the runtime's event loop.
pub type PushReports<T> = mpsc::UnboundedReceiver<PushReport<T>>;

/// What [`Dispatcher::submit`] did. Informational only: the outcome is always reported on the
/// [`PushReports`] channel, refusals included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the outcome is reported on the channel; this only says whether it was queued"]
pub enum Submission {
    /// Queued for sending; the report comes later.
    Queued,
    /// Refused on the spot; the failure report is already on the channel.
    Rejected,
}

/// The dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// `build` was called outside a tokio runtime.
    #[error("the push dispatcher must be built inside a tokio runtime")]
    NoRuntime,
    /// The same `pn-provider` name was configured twice (names are case-insensitive).
    #[error("pn-provider {0:?} configured twice")]
    DuplicateProvider(String),
    /// An alias points at a name that is not configured.
    #[error("alias {alias:?} points at unconfigured pn-provider {target:?}")]
    UnknownAliasTarget {
        /// The alias.
        alias: String,
        /// The missing target.
        target: String,
    },
    /// A limit of zero was configured.
    #[error("pn-provider {0:?}: queue capacity and max in flight must be at least 1")]
    ZeroLimit(String),
}

/// Configures a [`Dispatcher`]: which provider serves which `pn-provider` value. `T` is the
/// type of the caller's tag.
pub struct DispatcherBuilder<T> {
    providers: Vec<(String, Arc<dyn PushProvider>, ProviderLimits)>,
    aliases: Vec<(String, String)>,
    tag: PhantomData<fn() -> T>,
}

impl<T> Default for DispatcherBuilder<T> {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            aliases: Vec::new(),
            tag: PhantomData,
        }
    }
}

impl<T: Send + 'static> DispatcherBuilder<T> {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves requests whose `pn-provider` equals `pn_provider` (ASCII case-insensitive) with
    /// `provider`, through its own queue and concurrency limit.
    pub fn provider(
        mut self,
        pn_provider: impl Into<String>,
        provider: Arc<dyn PushProvider>,
        limits: ProviderLimits,
    ) -> Self {
        self.providers.push((pn_provider.into(), provider, limits));
        self
    }

    /// Routes `alias` to the queue of the already configured `target` (sharing its limits),
    /// e.g. `apns.dev` → `apns`, or `firebase` → `fcm`.
    pub fn alias(mut self, alias: impl Into<String>, target: impl Into<String>) -> Self {
        self.aliases.push((alias.into(), target.into()));
        self
    }

    /// Starts one worker task per provider and returns the dispatcher and its report channel.
    /// Must be called inside a tokio runtime.
    pub fn build(self) -> Result<(Dispatcher<T>, PushReports<T>), DispatcherError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| DispatcherError::NoRuntime)?;
        let (report_tx, report_rx) = mpsc::unbounded_channel();

        // Validate everything before spawning anything.
        let mut names: Vec<String> = Vec::new();
        for (name, _, limits) in &self.providers {
            let key = name.to_ascii_lowercase();
            if names.contains(&key) {
                return Err(DispatcherError::DuplicateProvider(name.clone()));
            }
            if limits.queue_capacity == 0 || limits.max_in_flight == 0 {
                return Err(DispatcherError::ZeroLimit(name.clone()));
            }
            names.push(key);
        }
        for (alias, target) in &self.aliases {
            let alias_key = alias.to_ascii_lowercase();
            if names.contains(&alias_key) {
                return Err(DispatcherError::DuplicateProvider(alias.clone()));
            }
            if !names.contains(&target.to_ascii_lowercase()) {
                return Err(DispatcherError::UnknownAliasTarget {
                    alias: alias.clone(),
                    target: target.clone(),
                });
            }
            names.push(alias_key);
        }

        let mut routes = HashMap::new();
        for (name, provider, limits) in self.providers {
            let (queue_tx, queue_rx) = mpsc::channel(limits.queue_capacity);
            let semaphore = Arc::new(Semaphore::new(limits.max_in_flight));
            let route = Route {
                provider_name: provider.name().to_owned(),
                queue: queue_tx,
            };
            runtime.spawn(worker(provider, queue_rx, semaphore, report_tx.clone()));
            routes.insert(name.to_ascii_lowercase(), route);
        }
        for (alias, target) in self.aliases {
            if let Some(route) = routes.get(&target.to_ascii_lowercase()).cloned() {
                routes.insert(alias.to_ascii_lowercase(), route);
            }
        }

        let dispatcher = Dispatcher {
            routes: Arc::new(routes),
            reports: report_tx,
        };
        Ok((dispatcher, report_rx))
    }
}

/// Routes push requests to providers without ever blocking the caller. Cheap to clone.
pub struct Dispatcher<T> {
    routes: Arc<HashMap<String, Route<T>>>,
    reports: mpsc::UnboundedSender<PushReport<T>>,
}

impl<T> Clone for Dispatcher<T> {
    fn clone(&self) -> Self {
        Self {
            routes: Arc::clone(&self.routes),
            reports: self.reports.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Dispatcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Dispatcher")
            .field("pn_providers", &names)
            .finish()
    }
}

struct Route<T> {
    provider_name: String,
    queue: mpsc::Sender<Job<T>>,
}

impl<T> Clone for Route<T> {
    fn clone(&self) -> Self {
        Self {
            provider_name: self.provider_name.clone(),
            queue: self.queue.clone(),
        }
    }
}

struct Job<T> {
    request: PushRequest,
    tag: T,
}

impl<T: Send + 'static> Dispatcher<T> {
    /// A builder; see [`DispatcherBuilder`].
    pub fn builder() -> DispatcherBuilder<T> {
        DispatcherBuilder::new()
    }

    /// Hands a push to its provider's queue. Never blocks, never awaits.
    ///
    /// Exactly one [`PushReport`] with `tag` will appear on the report channel: later for a
    /// queued push, right away for a refused one (unknown provider, queue full).
    pub fn submit(&self, request: PushRequest, tag: T) -> Submission {
        let Some(route) = self.routes.get(&request.pn_provider.to_ascii_lowercase()) else {
            self.report_now(
                request,
                tag,
                String::new(),
                PushOutcome::permanent(reasons::PROVIDER_NOT_CONFIGURED),
            );
            return Submission::Rejected;
        };
        match route.queue.try_send(Job { request, tag }) {
            Ok(()) => Submission::Queued,
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.report_now(
                    job.request,
                    job.tag,
                    route.provider_name.clone(),
                    PushOutcome::transient(reasons::QUEUE_FULL),
                );
                Submission::Rejected
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                self.report_now(
                    job.request,
                    job.tag,
                    route.provider_name.clone(),
                    PushOutcome::transient(reasons::DISPATCHER_STOPPED),
                );
                Submission::Rejected
            }
        }
    }

    /// Whether a `pn-provider` value is served (ASCII case-insensitive); useful for the
    /// registrar's `Feature-Caps: +sip.pns` and 555 decisions.
    pub fn supports(&self, pn_provider: &str) -> bool {
        self.routes.contains_key(&pn_provider.to_ascii_lowercase())
    }

    /// The configured `pn-provider` names (lower-cased, aliases included), sorted.
    pub fn pn_providers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    fn report_now(&self, request: PushRequest, tag: T, provider: String, outcome: PushOutcome) {
        log_outcome(&provider, &request, &outcome, Duration::ZERO);
        send_report(&self.reports, request, tag, provider, outcome);
    }
}

fn send_report<T>(
    reports: &mpsc::UnboundedSender<PushReport<T>>,
    request: PushRequest,
    tag: T,
    provider: String,
    outcome: PushOutcome,
) {
    let report = PushReport {
        tag,
        push_id: request.id,
        pn_provider: request.pn_provider,
        provider,
        outcome,
    };
    if reports.send(report).is_err() {
        tracing::debug!("push report dropped: nobody reads the report channel");
    }
}

fn log_outcome(provider: &str, request: &PushRequest, outcome: &PushOutcome, took: Duration) {
    match outcome {
        PushOutcome::Accepted => tracing::debug!(
            provider,
            push_id = %request.id,
            call_id = %request.call_id,
            took_ms = took.as_millis(),
            "push accepted"
        ),
        PushOutcome::Failed { permanent, reason } => tracing::info!(
            provider,
            pn_provider = %request.pn_provider,
            push_id = %request.id,
            call_id = %request.call_id,
            permanent,
            reason = %reason,
            took_ms = took.as_millis(),
            "push failed"
        ),
    }
}

/// One per provider: takes a permit, then a job, and runs the job as its own task.
async fn worker<T: Send + 'static>(
    provider: Arc<dyn PushProvider>,
    mut queue: mpsc::Receiver<Job<T>>,
    semaphore: Arc<Semaphore>,
    reports: mpsc::UnboundedSender<PushReport<T>>,
) {
    loop {
        // Permit first: while all slots are busy, jobs stay in the bounded queue, so a full
        // queue is what makes `submit` refuse.
        let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
            break; // The semaphore is never closed; be defensive anyway.
        };
        let Some(job) = queue.recv().await else {
            break; // All dispatchers dropped and the queue drained.
        };
        tokio::spawn(run_job(Arc::clone(&provider), job, permit, reports.clone()));
    }
}

async fn run_job<T>(
    provider: Arc<dyn PushProvider>,
    job: Job<T>,
    permit: OwnedSemaphorePermit,
    reports: mpsc::UnboundedSender<PushReport<T>>,
) {
    let started = Instant::now();
    let Job { request, tag } = job;
    let outcome = match request.time_left() {
        None => PushOutcome::transient(reasons::DEADLINE_EXPIRED),
        Some(left) => {
            // The send runs as its own task so that a panic is contained and an overrun can
            // be aborted.
            let sender = Arc::clone(&provider);
            let owned = request.clone();
            let mut send = tokio::spawn(async move { sender.send(&owned).await });
            match tokio::time::timeout(left + DEADLINE_GRACE, &mut send).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(join_error)) if join_error.is_panic() => {
                    PushOutcome::transient(reasons::PROVIDER_PANICKED)
                }
                Ok(Err(_cancelled)) => PushOutcome::transient(reasons::DISPATCHER_STOPPED),
                Err(_elapsed) => {
                    send.abort();
                    PushOutcome::transient(reasons::TIMEOUT)
                }
            }
        }
    };
    drop(permit);
    log_outcome(provider.name(), &request, &outcome, started.elapsed());
    send_report(&reports, request, tag, provider.name().to_owned(), outcome);
}
