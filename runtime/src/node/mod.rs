//! The SIP node, sans-IO in the manner of quinn-proto's `Endpoint`: one value that owns
//! everything with protocol state — the transactions, the registrar's bindings, the proxy's
//! calls and dialogs, the call-parking core and its timers — and does no I/O at all.
//!
//! The shell ([`crate::server`]) feeds it what happened, each input with the time it
//! happened at (`handle_*(now, …)`), and after every input drains what it must do
//! (`poll_transmit`, `poll_push`, `poll_store`) and when to call again (`poll_timeout`).
//! No socket, clock, thread or task is touched in here; the same node runs under the tokio
//! shell, in the benches and in the whole-node simulation.
//!
//! The output queues are drained by the shell after every input, and every input adds a
//! bounded amount to them: one message and what it triggers, or at most
//! [`TIMERS_PER_INPUT`] timers of each kind per [`Node::handle_timeout`].
//!
//! Every effect of one core step is carried out before the next event reaches the core:
//! what carrying out an effect finds out at once (a push refused, a flow already gone) is
//! queued and fed after the step, in the order found.
//!
//! | module | what lives there |
//! |---|---|
//! | [`registrar`] | REGISTER: bindings, expiry, RFC 8599 push parameters, refresh pushes |
//! | [`proxy`] | requests and responses: dispatch, calls and their branches, dialogs |
//! | [`pike`] | requests per source address: floods and password guessing blocked |
//! | [`app`] | answers from the push over the app API: the token checked, the core decides |
//! | [`cluster`] | other nodes' REGISTERs (notices), the peers their devices are reached through, Path |

mod app;
mod cluster;
mod overload;
mod pike;
pub(crate) mod proxy;
pub(crate) mod registrar;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushpark_model::{AppReply, CallId, DeviceId, Effect, Event, Timer};
use tracing::{debug, trace, warn};

use crate::app_api::token::AnswerKey;
use crate::auth::{DigestAuth, DigestConfig, Secret, UserDb};
use crate::config::{Config, Transport};
use crate::driver::Driver;
use crate::metrics::{push_result, Gauges, Metrics};
use crate::push::{PushBudget, PushOutcome, PushReport, PushRequest};
use crate::sip::Message;
use crate::store::{Job, Store, StoreError};
use crate::transaction::{self, Key, Output, Transactions};
use crate::transport::{Flow, FlowId, Inbound};
use crate::Map;

pub use self::app::AppAnswer;
use self::overload::Overload;
pub use self::overload::Queue;
use self::pike::{log_block, Admit, Pike};
use self::proxy::{Branches, Calls, Dialogs};
pub(crate) use self::registrar::Bindings;
use self::registrar::RegisterDone;

/// How many core timers, and how many transaction timers, one
/// [`Node::handle_timeout`] fires at most. Every other input acts on one message, one
/// store commit or one push outcome, whose effects the core's limits bound (a REGISTER
/// delivers at most `max_calls_per_callee` calls to a device), so no single input fills
/// the output queues without bound.
pub const TIMERS_PER_INPUT: usize = 64;

/// How long a UDP flow may stay silent before the node forgets it.
const UDP_FLOW_IDLE: Duration = Duration::from_secs(4 * 3600);

/// A message on its way out, and the flow it goes over: what the transaction layer keeps
/// for retransmissions.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub flow: Flow,
    pub bytes: Bytes,
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Over a flow: a UDP peer on one of our sockets, or an open TCP connection.
    Flow(Flow),
    /// To an address no flow leads to (in-dialog requests by their URI, responses by their
    /// Via): over UDP from our socket of that address family, or over a new TCP connection.
    Address(Transport, SocketAddr),
}

/// A message for the shell to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub destination: Destination,
    pub bytes: Bytes,
    /// The transaction the message belongs to: a failure to send it is reported back with
    /// [`Node::handle_send_failed`].
    pub key: Option<Key>,
}

/// What a push was for, so its outcome goes where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushTag {
    /// A call parked for a device: the outcome goes to the core.
    Call(CallId, DeviceId),
    /// A binding-refresh push (RFC 8599 §5.5): only a dead token matters.
    Refresh(DeviceId),
}

/// A store job's answer, handed back with [`Node::handle_store_done`].
pub struct StoreDone {
    stored: Option<Box<Stored>>,
    /// How long the job waited for the store's thread.
    waited: Duration,
}

impl StoreDone {
    fn new(stored: Option<Stored>) -> Self {
        let stored = stored.map(Box::new);
        let waited = Duration::ZERO;
        Self { stored, waited }
    }
}

/// What a store job found that the node acts on.
enum Stored {
    /// A REGISTER, applied or not: it is answered.
    Registered(RegisterDone),
    /// This node is the cluster's one to send a refresh push (see
    /// [`Node::refresh_push`]).
    RefreshClaimed(DeviceId, PushRequest),
}

/// Work for the bindings store, to run on the store's own thread in the order given; the
/// node does not run it. [`Store::run_batch`] does, inside one transaction, and gives back
/// what to hand to the node once that transaction has committed (or failed to).
pub struct StoreJob {
    job: Job<StoreDone>,
    /// Jobs of one key keep their order (the REGISTERs of one AOR): the writer's lane.
    key: u64,
}

impl StoreJob {
    fn new<T: Send + 'static>(
        key: u64,
        queued: Instant,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
        done: impl FnOnce(T, Result<(), &StoreError>) -> StoreDone + Send + 'static,
    ) -> Self {
        let job: Job<StoreDone> = Box::new(move |store, began| {
            let waited = began.saturating_duration_since(queued);
            let value = work(store);
            Box::new(move |committed| StoreDone {
                waited,
                ..done(value, committed)
            })
        });
        Self { job, key }
    }

    /// What orders it among the other jobs: see [`crate::store::Writer::submit_job`].
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The job, for the store's thread or [`Store::run_batch`].
    pub fn into_job(self) -> Job<StoreDone> {
        self.job
    }
}

/// The `done` of store work whose outcome needs no answer: a failure is logged.
fn log_failure<T>(
    what: &'static str,
) -> impl FnOnce(Result<T, StoreError>, Result<(), &StoreError>) -> StoreDone {
    move |result, committed| {
        let failure = committed
            .map_err(ToString::to_string)
            .and(result.map(drop).map_err(|e| e.to_string()));
        if let Err(e) = failure {
            tracing::error!("store: {what}: {e}");
        }
        StoreDone::new(None)
    }
}

/// What the node needs from its surroundings when it starts.
pub struct NodeOptions {
    /// The addresses the shell's listeners are bound to.
    pub listeners: Vec<(Transport, SocketAddr)>,
    /// The bindings the store held at start.
    pub bindings: Vec<crate::store::Binding>,
    /// The users file, when digest authentication is on.
    pub users: Option<UserDb>,
    /// The node's key: of the digest nonces, of the route tokens in our Record-Routes and of
    /// our stateless branches, and of the app API's answer tokens. Keep it across restarts
    /// (the store does), or the dialogs up at a restart can no longer be routed.
    pub secret: Secret,
    /// A number unique to this run of the node (random): answer tokens of earlier runs,
    /// whose calls ended with them, are told apart.
    pub boot: u64,
    /// The wall-clock time at `now`, in seconds since the Unix epoch: binding expiry is
    /// wall-clock time, so that it survives restarts.
    pub unix_time: u64,
    pub metrics: Arc<Metrics>,
}

/// The SIP node: see the module documentation.
pub struct Node {
    config: Config,
    driver: Driver,
    transactions: Transactions<Outgoing>,
    /// The time the node started, and the wall-clock seconds then.
    started: Instant,
    unix_at_start: u64,
    /// The time of the input being handled.
    clock: Instant,
    bindings: Bindings,
    calls: Calls,
    branches: Branches,
    dialogs: Dialogs,
    /// Flows seen, by id, with when they last carried a message, so a flow token in a
    /// Record-Route leads back to its flow; idle UDP flows are pruned by the sweep, TCP
    /// flows go when their connection closes.
    flows: Map<FlowId, (Flow, Instant)>,
    auth: Option<(DigestAuth, UserDb)>,
    /// The keys of our route tokens and stateless branches.
    route_key: proxy::RouteKey,
    /// The key of the answer tokens call pushes carry, and where apps post them: only with
    /// the app API on (`[app_api]`).
    answer_key: AnswerKey,
    /// This run of the node: path tokens name flows of this run only.
    boot: u64,
    /// The connections to the other nodes of a cluster.
    peers: cluster::Peers,
    answer_url: Option<String>,
    /// The core's reply to the answer from the push being handled.
    app_reply: Option<AppReply>,
    /// Where a request may go by address.
    targets: proxy::Targets,
    addrs: Vec<(Transport, SocketAddr)>,
    next_id: u64,
    metrics: Arc<Metrics>,
    /// When each push in flight was handed out, by push id.
    push_started: Map<String, Instant>,
    /// How many more pushes each push token may get for now (however many bindings share
    /// it), and how many more each caller may cause to each callee's phones.
    push_budget: PushBudget<u64>,
    caller_budget: PushBudget<u64>,
    /// Keys the budgets by a keyed hash of what they count (no allocation per push; keys
    /// an outsider cannot aim at one another's).
    budget_hasher: ahash::RandomState,
    /// Requests and failed credentials per source address.
    pike: Pike,
    /// Whether the node has fallen behind and sheds new work.
    overload: Overload,
    /// When the registrar's next sweep is due.
    next_sweep: Instant,
    /// Events found out while carrying out a step's effects, fed once all are carried out.
    feedback: Vec<Event>,
    transmits: VecDeque<Transmit>,
    pushes: VecDeque<(PushRequest, PushTag)>,
    store_jobs: VecDeque<StoreJob>,
}

impl Node {
    /// A node on `config`, started at `now`.
    pub fn new(config: Config, now: Instant, options: NodeOptions) -> Self {
        let route_key = proxy::RouteKey::new(&options.secret);
        let answer_key = AnswerKey::new(&options.secret, options.boot);
        // Never a target either: where peers reach us, by the advertised IP addresses.
        let advertised = config.listen.iter().filter_map(|l| {
            let l = l.as_ref();
            let ip = l.advertised_host()?.parse().ok()?;
            let port = (l.advertised_address.as_deref()?.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(l.address.port());
            Some((l.transport, SocketAddr::new(ip, port)))
        });
        let own: Vec<_> = options
            .listeners
            .iter()
            .copied()
            .chain(advertised)
            .collect();
        let targets = proxy::Targets::new(&own, &config.sip.allowed_targets);
        let auth = options.users.map(|users| {
            let mut digest = DigestConfig::new(config.realm(), options.secret);
            digest.algorithms = config.digest_algorithms();
            digest.allow_rfc2069 = config.auth.allow_rfc2069;
            if let Some(lifetime) = config.auth.nonce_lifetime {
                digest.nonce_lifetime = lifetime.as_secs();
            }
            (DigestAuth::new(digest), users)
        });
        Node {
            driver: Driver::new(config.core()),
            transactions: Transactions::new(transaction_config(&config), proxy::ack_for_non_2xx),
            started: now,
            unix_at_start: options.unix_time,
            clock: now,
            bindings: Bindings::new(options.bindings),
            calls: Calls::default(),
            branches: Branches::default(),
            dialogs: Dialogs::default(),
            flows: Map::default(),
            auth,
            route_key,
            answer_key,
            boot: options.boot,
            peers: cluster::Peers::default(),
            answer_url: config.app_api.answer_url(),
            app_reply: None,
            targets,
            addrs: options.listeners,
            next_id: 1,
            metrics: options.metrics,
            push_started: Map::default(),
            push_budget: PushBudget::new(config.push.max_per_device_per_minute),
            caller_budget: PushBudget::new(config.push.max_per_caller_per_minute),
            budget_hasher: ahash::RandomState::new(),
            pike: Pike::new(config.rate_limit.clone(), config.auth.trusted_peers.clone()),
            overload: Overload::new(now, config.sip.overload_delay),
            next_sweep: now + config.registrar.sweep_interval,
            feedback: Vec::new(),
            transmits: VecDeque::new(),
            pushes: VecDeque::new(),
            store_jobs: VecDeque::new(),
            config,
        }
    }

    /// This node with a deliberate defect in its core, for the whole-node simulation's fault
    /// tests: call it before the first input.
    #[cfg(feature = "faults")]
    pub fn with_fault(mut self, fault: pushpark_model::Fault) -> Self {
        self.driver = Driver::with_core(pushpark_model::Core::with_fault(
            self.config.core(),
            Some(fault),
        ));
        self
    }

    // ----- inputs ----------------------------------------------------------------------

    /// What a transport received: a message, garbage, an oversized datagram, or the end
    /// of a TCP connection.
    pub fn handle_inbound(&mut self, now: Instant, item: Inbound) {
        self.advance(now);
        match item {
            Inbound::Message { flow, message } | Inbound::TooLarge { flow, message }
                if message.is_request() && !self.admit(now, flow.peer.ip()) => {}
            Inbound::Message { flow, message } => {
                // A flow is remembered once a call or a registration comes over it (what a
                // dialog or a binding can name), not for any datagram: strangers leave
                // nothing behind. A known flow notes when it was last heard from.
                let keeps = message
                    .method()
                    .is_some_and(|m| matches!(m.as_str(), "INVITE" | "REGISTER"));
                match self.flows.get_mut(&flow.id) {
                    Some(seen) => seen.1 = now,
                    None if keeps => {
                        self.flows.insert(flow.id, (flow.clone(), now));
                    }
                    None => {}
                }
                if message.is_request() {
                    self.on_request(flow, message);
                } else {
                    self.on_response(flow, message);
                }
            }
            Inbound::Garbage { flow, error } => {
                debug!("{flow}: dropped: {error}");
            }
            Inbound::TooLarge { flow, message } => {
                debug!("{flow}: message over the size limit");
                // A request (never an ACK) is answered; a response has no one to answer.
                if message.method().is_some_and(|m| m.as_str() != "ACK") {
                    self.respond_stateless(&flow, &message, 513, "Message Too Large");
                }
            }
            Inbound::Connected(flow) => self.on_connected(flow),
            Inbound::Closed(id) => {
                self.flows.remove(&id);
                self.bindings.flow_closed(id);
                // What was sent over it and is still waiting will never be answered there.
                // A branch that has its final response keeps its transaction: the 2xx's
                // retransmissions may still come over the device's next connection.
                for key in self.branches.over(id) {
                    let waiting = matches!(
                        self.transactions.state(&key),
                        Some(transaction::State::Calling | transaction::State::Proceeding)
                    );
                    if waiting {
                        let _ = self.transactions.transport_error(&key);
                    }
                }
            }
        }
        self.drain_transactions();
    }

    /// The push budgets' key for `parts` (a push token's provider and id; a caller and a
    /// callee).
    fn budget_key(&self, parts: &[&str]) -> u64 {
        self.budget_hasher.hash_one(parts)
    }

    /// Whether a request from `ip` is handled: not if its source is blocked, or is
    /// blocked by it ([`pike`]); a dropped request gets no answer.
    fn admit(&mut self, now: Instant, ip: std::net::IpAddr) -> bool {
        match self.pike.request(now, ip) {
            Admit::Yes => true,
            Admit::Blocked => false,
            Admit::NowBlocked(block) => {
                log_block(ip, block, self.pike.block_for());
                self.metrics.limit_hit(block.limit());
                false
            }
        }
    }

    /// The shell is shutting down (SIGTERM): the core ends every call in progress (503 with
    /// Retry-After to its caller, CANCEL to ringing phones) and refuses new ones the same
    /// way. REGISTERs are still served, so a phone woken for an ended call is told.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.advance(now);
        self.feed(Event::ShuttingDown);
    }

    /// Whether the node owes no peer anything more: every transaction has its final
    /// response through (an INVITE's non-2xx acknowledged, a branch answered or
    /// cancelled), and nothing waits to be sent or stored. A draining shell stops then.
    pub fn is_drained(&self) -> bool {
        self.transactions.settled()
            && self.transmits.is_empty()
            && self.pushes.is_empty()
            && self.store_jobs.is_empty()
    }

    /// A message of transaction `key` could not be sent (RFC 3261 §17.1.4, §17.2.4).
    pub fn handle_send_failed(&mut self, now: Instant, key: &Key) {
        self.advance(now);
        let _ = self.transactions.transport_error(key);
        self.drain_transactions();
    }

    /// A message, or a batch of them, waited `delay` in `queue` before the node got it
    /// (the least of a batch is enough): the measure of graceful overload.
    pub fn handle_queue_delay(&mut self, now: Instant, queue: Queue, delay: Duration) {
        self.advance(now);
        self.overload.observe(now, queue, delay);
    }

    /// A store job has finished and its transaction committed (or failed to).
    pub fn handle_store_done(&mut self, now: Instant, done: StoreDone) {
        self.advance(now);
        self.overload.observe(now, Queue::Store, done.waited);
        match done.stored.map(|b| *b) {
            Some(Stored::Registered(registered)) => {
                self.on_registered(registered);
                self.drain_transactions();
            }
            Some(Stored::RefreshClaimed(id, request)) => self.send_refresh_push(id, request),
            None => {}
        }
    }

    /// A push provider's answer.
    pub fn handle_push_report(&mut self, now: Instant, report: PushReport<PushTag>) {
        self.advance(now);
        let latency = self
            .push_started
            .remove(&report.push_id)
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let (permanent, reason) = match &report.outcome {
            PushOutcome::Accepted => (None, ""),
            PushOutcome::Failed { permanent, reason } => (Some(*permanent), reason.as_str()),
        };
        self.metrics
            .push(&report.provider, push_result(permanent), reason, latency);
        let (call, device) = match report.tag {
            PushTag::Call(call, device) => (call, device),
            PushTag::Refresh(device) => {
                if report.outcome.is_permanent() {
                    warn!("refresh push {} failed: token dead", report.push_id);
                    self.apply_effect(Effect::ForgetPushToken { device });
                }
                return;
            }
        };
        let event = match &report.outcome {
            PushOutcome::Accepted => Event::PushAccepted { call, device },
            PushOutcome::Failed { permanent, reason } => {
                warn!(
                    "push {} via {} failed ({}): {reason}",
                    report.push_id,
                    report.provider,
                    if *permanent {
                        "token dead"
                    } else {
                        "transient"
                    }
                );
                Event::PushFailed {
                    call,
                    device,
                    permanent: *permanent,
                }
            }
        };
        self.feed(event);
    }

    /// Time has passed: fires the core's timers, the transactions' and the registrar's
    /// sweep that are due at `now`, at most [`TIMERS_PER_INPUT`] of each kind, earliest
    /// first, so that one call does bounded work and queues bounded output however far
    /// behind the shell fell; [`poll_timeout`](Self::poll_timeout) is then already due for
    /// the rest.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let millis = self.now();
        for _ in 0..TIMERS_PER_INPUT {
            let Some((timer, effects)) = self.driver.fire_next(millis) else {
                break;
            };
            trace!("core: {timer:?} fired -> {effects:?}");
            let call = match timer {
                Timer::Deadline(call) | Timer::Linger(call) | Timer::PushRetry(call, _) => call,
            };
            self.execute(Some(call), effects);
            self.feed_back();
        }
        self.transactions
            .handle_timeout_at_most(millis, TIMERS_PER_INPUT);
        if now >= self.next_sweep {
            self.next_sweep = now + self.config.registrar.sweep_interval;
            self.sweep_bindings();
            let core = self.driver.core();
            self.bindings
                .forget_unused_aors(|aor| core.holds_callee(aor));
            self.push_budget.prune(now);
            self.caller_budget.prune(now);
            self.pike.prune(now);
            self.prune_flows(now);
            self.dialogs.prune(now);
            self.branches.prune(now);
        }
        self.drain_transactions();
    }

    // ----- outputs ---------------------------------------------------------------------

    /// The next message to send. The queue holds what the last inputs produced; drain it
    /// after each input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next push to hand to the push providers; its outcome comes back with
    /// [`handle_push_report`](Self::handle_push_report).
    pub fn poll_push(&mut self) -> Option<(PushRequest, PushTag)> {
        self.pushes.pop_front()
    }

    /// The next job for the store's thread; run them in the order given.
    pub fn poll_store(&mut self) -> Option<StoreJob> {
        self.store_jobs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Instant {
        let millis = [
            self.driver.next_timer().map(|(at, _)| at),
            self.transactions.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timer = millis.map(|at| self.started + Duration::from_millis(at));
        let next = timer.map_or(self.next_sweep, |at| at.min(self.next_sweep));
        // While shedding, the share of new work grows back interval by interval, traffic
        // or not.
        self.overload.next_change().map_or(next, |at| at.min(next))
    }

    /// What the node holds right now.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            core_calls: self.driver.core().len(),
            proxy_calls: self.calls.len(),
            parked_calls: self.calls.parked(),
            bindings: self.bindings.count(),
            transactions: self.transactions.len(),
            rate_limited_sources: self.pike.len(),
            overloaded: usize::from(self.overload.is_shedding()),
        }
    }

    // ----- time ------------------------------------------------------------------------

    /// Moves the node's clock to `now`; it never runs backwards.
    fn advance(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        self.overload.advance(self.clock);
    }

    /// The time of the input being handled.
    fn instant(&self) -> Instant {
        self.clock
    }

    /// Milliseconds since start: the clock of the core and of the transactions.
    fn now(&self) -> u64 {
        self.millis_at(self.clock)
    }

    /// The core's clock reading at `instant`.
    fn millis_at(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.started);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// Seconds since the Unix epoch, now.
    fn unix_now(&self) -> u64 {
        self.unix_at_start + self.clock.saturating_duration_since(self.started).as_secs()
    }

    // ----- the core --------------------------------------------------------------------

    /// Feeds one event to the core, carries out what it decides, then feeds what that
    /// found out.
    fn feed(&mut self, event: Event) {
        let call = match &event {
            Event::CallArrived { call, .. }
            | Event::CallerCancelled { call }
            | Event::PushAccepted { call, .. }
            | Event::PushFailed { call, .. }
            | Event::BranchTrying { call, .. }
            | Event::BranchRang { call, .. }
            | Event::BranchAnswered { call, .. }
            | Event::BranchRejected { call, .. }
            | Event::BranchUnreachable { call, .. }
            | Event::PushAnswered { call, .. } => Some(*call),
            Event::DeviceRegistered { .. } | Event::DeviceUnavailable { .. } => None,
            Event::TimerFired(_) | Event::BindingExpiring { .. } | Event::ShuttingDown => None,
        };
        let effects = self.driver.handle(self.now(), event.clone());
        trace!("core: {event:?} -> {effects:?}");
        self.execute(call, effects);
        self.feed_back();
        self.drain_transactions();
    }

    /// Feeds what carrying out the last step's effects found out: every effect of a step
    /// is applied before the next step.
    fn feed_back(&mut self) {
        let feedback = std::mem::take(&mut self.feedback);
        for event in feedback {
            self.feed(event);
        }
    }

    /// Carries out `effects`, then lets go of the calls they (and `call`, the one the event
    /// was about) were about if the core has let go of them: nothing outlives a call.
    fn execute(&mut self, call: Option<CallId>, effects: Vec<Effect>) {
        let mut touched: Vec<CallId> = call.into_iter().collect();
        for effect in effects {
            let about = match &effect {
                Effect::Push { call, .. }
                | Effect::Forward { call, .. }
                | Effect::Reroute { call, .. }
                | Effect::DropBranch { call, .. }
                | Effect::CancelBranch { call, .. }
                | Effect::HangUpBranch { call, .. }
                | Effect::RelayProvisional { call, .. }
                | Effect::Respond { call, .. }
                | Effect::TellEnded { call, .. }
                | Effect::Ringback { call }
                | Effect::ReplyToApp { call, .. } => Some(*call),
                Effect::ArmTimer { .. } | Effect::DisarmTimer { .. } => None,
                Effect::ForgetPushToken { .. } | Effect::RefreshPush { .. } => None,
            };
            if let Some(call) = about.filter(|c| !touched.contains(c)) {
                touched.push(call);
            }
            self.apply_effect(effect);
        }
        for call in touched {
            self.forget_if_done(call);
        }
    }

    // ----- what goes out ---------------------------------------------------------------

    /// Queues what the transaction layer sends and hands its events to the proxy.
    fn drain_transactions(&mut self) {
        while let Some(output) = self.transactions.poll_output() {
            match output {
                Output::Send { key, msg } => self.transmits.push_back(Transmit {
                    destination: Destination::Flow(msg.flow),
                    bytes: msg.bytes,
                    key: Some(key),
                }),
                Output::ToTu(event) => self.on_transaction_event(event),
                // A transaction that gave way to a new one with its key ended before it.
                Output::Terminated(key) if self.transactions.state(&key).is_some() => {}
                Output::Terminated(key) => {
                    let call = self.branches.get(&key).map(|(call, _)| call);
                    self.branches.terminated(&key);
                    if let Some(call) = call {
                        self.forget_if_done(call);
                    }
                }
            }
        }
    }

    /// Sends over a flow, outside any transaction.
    fn send(&mut self, flow: &Flow, bytes: Bytes) {
        self.transmits.push_back(Transmit {
            destination: Destination::Flow(flow.clone()),
            bytes,
            key: None,
        });
    }

    /// Sends to an address no flow leads to: over UDP from our socket of its family if we
    /// have one (a flow the node can name), else as the shell finds a way.
    fn send_to(&mut self, transport: Transport, peer: SocketAddr, bytes: Bytes) {
        if transport == Transport::Udp {
            if let Some(flow) = self.udp_flow_to(peer) {
                return self.send(&flow, bytes);
            }
        }
        self.transmits.push_back(Transmit {
            destination: Destination::Address(transport, peer),
            bytes,
            key: None,
        });
    }

    /// Hands a push to the providers.
    fn submit_push(&mut self, request: PushRequest, tag: PushTag) {
        self.push_started.insert(request.id.clone(), self.clock);
        self.pushes.push_back((request, tag));
    }

    /// Queues store work; once the transaction it runs in has ended, `done` makes what the
    /// node gets back.
    fn with_store<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
        done: impl FnOnce(T, Result<(), &StoreError>) -> StoreDone + Send + 'static,
    ) {
        let queued = self.instant();
        self.store_jobs
            .push_back(StoreJob::new(0, queued, work, done));
    }

    /// [`with_store`](Self::with_store) for work on `aor`'s bindings, which keeps its order
    /// with the other work on them.
    fn with_store_for<T: Send + 'static>(
        &mut self,
        aor: &str,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
        done: impl FnOnce(T, Result<(), &StoreError>) -> StoreDone + Send + 'static,
    ) {
        let (key, queued) = (proxy::fnv(aor), self.instant());
        self.store_jobs
            .push_back(StoreJob::new(key, queued, work, done));
    }

    /// A generated response to `request`, sent back where it came from.
    fn respond_stateless(&mut self, flow: &Flow, request: &Message, code: u16, reason: &str) {
        let bytes = request.response(code).reason(reason).to_bytes();
        self.send(flow, Bytes::from(bytes));
    }

    // ----- flows -----------------------------------------------------------------------

    /// Whether `flow` can still carry a message: a UDP flow from one of our sockets always
    /// can (whether the peer still listens is the core's judgement), a TCP or TLS flow
    /// while its connection is open.
    fn is_open(&self, flow: &Flow) -> bool {
        match flow.transport {
            Transport::Udp => self.addrs.contains(&(Transport::Udp, flow.local)),
            Transport::Tcp | Transport::Tls => self.flows.contains_key(&flow.id),
        }
    }

    /// The UDP flow to `peer` from our first UDP socket of its address family.
    fn udp_flow_to(&self, peer: SocketAddr) -> Option<Flow> {
        self.addrs
            .iter()
            .find(|(t, local)| *t == Transport::Udp && local.is_ipv4() == peer.is_ipv4())
            .map(|&(_, local)| Flow::udp(local, peer))
    }

    /// Forgets UDP flows idle for longer than any dialog plausibly stays silent, unless a
    /// binding still names them (TCP and TLS flows go when their connection closes).
    fn prune_flows(&mut self, now: Instant) {
        let bindings = &self.bindings;
        self.flows.retain(|id, (flow, seen)| {
            flow.transport.is_stream()
                || now.saturating_duration_since(*seen) < UDP_FLOW_IDLE
                || bindings.uses_flow(*id)
        });
    }

    /// A fresh number, for branches, tags and ids.
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether `host` names this server: one of its domains or addresses.
    fn is_local_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.config
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(host))
            || self.addrs.iter().any(|(_, a)| a.ip().to_string() == host)
            || (self.config.listen.iter())
                .filter_map(|l| l.as_ref().advertised_host())
                .any(|a| a.eq_ignore_ascii_case(host))
    }
}

fn transaction_config(config: &Config) -> transaction::Config {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    transaction::Config {
        t1: ms(config.sip.t1),
        t2: ms(config.sip.t2),
        t4: ms(config.sip.t4),
        ..transaction::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::Listener;
    use crate::sip::parse_datagram;
    use crate::store::{Binding, BindingId, PushParams};

    const UNIX: u64 = 1_800_000_000;

    /// A node whose `callees` users each have one sleeping phone with a push token, and
    /// whose rate limiter trusts 192.0.2.10, the tests' caller (an SBC sending hundreds of
    /// INVITEs in one instant).
    fn node(start: Instant, callees: u64) -> Node {
        node_with(start, callees, |_| {})
    }

    /// [`node`], on a configuration `adjust` changed.
    fn node_with(start: Instant, callees: u64, adjust: impl FnOnce(&mut Config)) -> Node {
        let mut config = Config::default();
        adjust(&mut config);
        config.auth.trusted_peers = vec!["192.0.2.10/32".parse().expect("a network")];
        let bindings = (1..=callees)
            .map(|id| Binding {
                id: BindingId(id),
                aor: format!("sip:u{id}@127.0.0.1"),
                contact: format!("sip:u{id}@192.0.2.20:{}", 40_000 + id),
                instance: None,
                reg_id: None,
                push: Some(PushParams {
                    provider: "fcm".to_owned(),
                    prid: format!("token{id}"),
                    param: None,
                }),
                pnsreg: false,
                q: None,
                call_id: format!("reg{id}"),
                cseq: 1,
                expires_at: UNIX + 3600,
                updated_at: UNIX,
                path: None,
            })
            .collect();
        Node::new(
            config,
            start,
            NodeOptions {
                listeners: vec![(
                    Transport::Udp,
                    "127.0.0.1:5060".parse().expect("an address"),
                )],
                bindings,
                users: None,
                secret: Secret::generate(),
                boot: 1,
                unix_time: UNIX,
                metrics: Arc::new(Metrics::default()),
            },
        )
    }

    #[test]
    fn a_registration_notice_older_than_what_the_node_knows_changes_nothing() {
        let start = Instant::now();
        let mut node = node(start, 0);
        let aor = "sip:bob@127.0.0.1";
        let binding = |id: u64, expires_in: u64| Binding {
            id: BindingId(id),
            aor: aor.to_owned(),
            contact: format!("sip:bob@192.0.2.{id}:5060"),
            instance: None,
            reg_id: None,
            push: None,
            pnsreg: false,
            q: None,
            call_id: format!("reg{id}"),
            cseq: 1,
            expires_at: UNIX + expires_in,
            updated_at: UNIX,
            path: None,
        };
        let notice = |id: &str, bindings: Vec<Binding>| crate::store::Notice {
            id: id.to_owned(),
            origin: 7,
            aor: aor.to_owned(),
            written: bindings.iter().map(|b| b.id).collect(),
            bindings,
            removed: Vec::new(),
        };
        node.handle_notice(
            start,
            notice("1700000000000-3", vec![binding(1, 600), binding(2, 600)]),
        );
        assert_eq!(node.bindings.count(), 2);
        // Read late, a notice of an earlier write: it would bring binding 2 back if applied.
        node.handle_notice(start, notice("1700000000000-5", vec![binding(1, 600)]));
        node.handle_notice(
            start,
            notice("1700000000000-4", vec![binding(1, 600), binding(2, 600)]),
        );
        assert_eq!(node.bindings.count(), 1, "the older state is not taken");
        node.handle_notice(start, notice("1700000000001-0", vec![binding(3, 600)]));
        assert_eq!(node.bindings.count(), 1);
        assert!(node.bindings.get(DeviceId(3)).is_some(), "a newer one is");
    }

    #[test]
    fn a_flow_is_remembered_for_a_call_or_a_registration_not_for_any_datagram() {
        let start = Instant::now();
        let mut node = node(start, 1);
        let server: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        for port in 10_000..10_100 {
            let options = format!(
                "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.9:{port};branch=z9hG4bKo{port}\r\n\
Max-Forwards: 70\r\n\
From: <sip:scan@192.0.2.9>;tag=o{port}\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: o{port}@192.0.2.9\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
            );
            let message = parse_datagram(options.as_bytes()).expect("it parses");
            let flow = Flow::udp(server, SocketAddr::from(([192, 0, 2, 9], port)));
            node.handle_inbound(start, Inbound::Message { flow, message });
        }
        assert!(node.flows.is_empty(), "{} flows kept", node.flows.len());
        let invite = "INVITE sip:u1@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcall\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=a\r\n\
To: <sip:u1@127.0.0.1>\r\n\
Call-ID: call@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";
        let message = parse_datagram(invite.as_bytes()).expect("it parses");
        let caller = Flow::udp(server, "192.0.2.10:5060".parse().expect("an address"));
        node.handle_inbound(
            start,
            Inbound::Message {
                flow: caller.clone(),
                message,
            },
        );
        assert!(
            node.flows.contains_key(&caller.id),
            "the caller's flow, for its dialog"
        );
    }

    #[test]
    fn a_listener_on_all_addresses_is_named_by_its_advertised_address() {
        let start = Instant::now();
        let listener = |transport, address: &str, advertised: &str| {
            let mut l = Listener::new(transport, address.parse().expect("an address"));
            l.as_mut().advertised_address = Some(advertised.to_owned());
            l
        };
        let node = node_with(start, 0, |c| {
            c.listen = vec![
                listener(Transport::Udp, "0.0.0.0:5060", "sip.example.com:5070"),
                listener(Transport::Tcp, "0.0.0.0:5060", "203.0.113.5"),
            ];
        });
        let any: SocketAddr = "0.0.0.0:5060".parse().expect("an address");
        let accepted: SocketAddr = "10.0.0.5:5060".parse().expect("an address");
        assert_eq!(node.sent_by(Transport::Udp, any), "sip.example.com:5070");
        assert_eq!(node.sent_by(Transport::Tcp, accepted), "203.0.113.5");
        let other: SocketAddr = "127.0.0.1:5999".parse().expect("an address");
        assert_eq!(node.sent_by(Transport::Udp, other), "127.0.0.1:5999");
        // Routes naming the advertised hosts are ours; requests to them never leave.
        assert!(node.is_local_host("SIP.example.com"));
        assert!(node.is_local_host("203.0.113.5"));
        assert!(!node.is_local_host("203.0.113.6"));
        assert!(!node
            .targets
            .allow("203.0.113.5:5060".parse().expect("an address")));
    }

    #[test]
    fn pushes_are_budgeted_per_push_token_and_per_caller_and_callee() {
        let start = Instant::now();
        let mut node = node_with(start, 1, |c| {
            c.push.max_per_device_per_minute = 5;
            c.push.max_per_caller_per_minute = 3;
        });
        let server: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let call = |node: &mut Node, from: &str, n: usize| {
            let invite = format!(
                "INVITE sip:u1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKb{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{from}@127.0.0.1>;tag=b{n}\r\nTo: <sip:u1@127.0.0.1>\r\n\
                 Call-ID: budget-{n}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            );
            let message = parse_datagram(invite.as_bytes()).expect("an INVITE");
            let flow = Flow::udp(server, "192.0.2.10:5060".parse().expect("an address"));
            node.handle_inbound(start, Inbound::Message { flow, message });
            while node.poll_transmit().is_some() {}
            std::iter::from_fn(|| node.poll_push()).count()
        };
        let alice: Vec<usize> = (0..4).map(|n| call(&mut node, "alice", n)).collect();
        assert_eq!(alice, [1, 1, 1, 0], "alice's fourth call pushes no more");
        let others: Vec<usize> = ["carol", "dave", "erin"]
            .iter()
            .enumerate()
            .map(|(n, from)| call(&mut node, from, 10 + n))
            .collect();
        assert_eq!(
            others,
            [1, 1, 0],
            "then the token's own budget of 5 runs out"
        );
    }

    #[test]
    fn beyond_max_transactions_a_new_request_gets_503_and_a_retransmission_its_answer() {
        let start = Instant::now();
        let mut node = node_with(start, 1, |c| c.sip.max_transactions = 2);
        let server: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let mut options = |n: usize| {
            let message = parse_datagram(
                format!(
                    "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKt{n}\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:x@192.0.2.10>;tag=t\r\nTo: <sip:127.0.0.1>\r\n\
                     Call-ID: t{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("an OPTIONS");
            let flow = Flow::udp(server, "192.0.2.10:5060".parse().expect("an address"));
            node.handle_inbound(start, Inbound::Message { flow, message });
            let out: Vec<String> = std::iter::from_fn(|| node.poll_transmit())
                .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
                .collect();
            assert_eq!(out.len(), 1, "{out:?}");
            out[0].clone()
        };
        assert!(options(1).starts_with("SIP/2.0 200"));
        assert!(options(2).starts_with("SIP/2.0 200"));
        let refused = options(3);
        assert!(refused.starts_with("SIP/2.0 503"), "{refused}");
        assert!(refused.contains("Retry-After: 5\r\n"), "{refused}");
        assert!(
            options(1).starts_with("SIP/2.0 200"),
            "a retransmission is still answered"
        );
    }

    #[test]
    fn a_flooding_source_is_blocked_and_its_requests_dropped_unanswered() {
        let start = Instant::now();
        let mut node = node(start, 1);
        let server: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let options = |node: &mut Node, now: Instant, source: &str, n: usize| {
            let message = parse_datagram(
                format!(
                    "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch=z9hG4bKo{n}\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:x@{source}>;tag=o\r\nTo: <sip:127.0.0.1>\r\n\
                     Call-ID: o{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("an OPTIONS");
            let flow = Flow::udp(server, source.parse().expect("an address"));
            node.handle_inbound(now, Inbound::Message { flow, message });
            std::iter::from_fn(|| node.poll_transmit()).count()
        };
        let limit = node.config.rate_limit.max_requests as usize;
        let answered: usize = (0..limit + 40)
            .map(|n| options(&mut node, start, "198.51.100.7:5060", n))
            .sum();
        assert_eq!(
            answered, limit,
            "the first {limit} are answered, the rest dropped"
        );
        assert_eq!(
            options(&mut node, start, "198.51.100.8:5060", 0),
            1,
            "others go on"
        );
        // Still blocked a window later; let through again once the block has run out.
        let window_later = start + node.config.rate_limit.window;
        assert_eq!(options(&mut node, window_later, "198.51.100.7:5060", 1), 0);
        let unblocked = start + node.config.rate_limit.block_for;
        assert_eq!(options(&mut node, unblocked, "198.51.100.7:5060", 2), 1);
        // The trusted caller is never counted.
        let trusted: usize = (0..limit * 3)
            .map(|n| options(&mut node, start, "192.0.2.10:5060", n))
            .sum();
        assert_eq!(trusted, limit * 3);
    }

    #[test]
    fn an_answer_token_is_good_for_its_call_and_device_until_it_expires() {
        use pushpark_model::{AppReply, PushAnswer};
        let start = Instant::now();
        let mut node = node_with(start, 3, |c| {
            let api = "127.0.0.1:5443".parse().expect("an address");
            c.app_api.listen = Some(toml::Spanned::new(0..0, api));
        });
        let server: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let peer = "198.51.100.20".parse().expect("an address");
        let call = |node: &mut Node, callee: u64, n: usize, extra: &str| {
            let invite = format!(
                "INVITE sip:u{callee}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a{n}\r\nTo: <sip:u{callee}@127.0.0.1>\r\n\
                 Call-ID: answer-{n}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
            );
            let message = parse_datagram(invite.as_bytes()).expect("an INVITE");
            let flow = Flow::udp(server, "192.0.2.10:5060".parse().expect("an address"));
            node.handle_inbound(start, Inbound::Message { flow, message });
            while node.poll_transmit().is_some() {}
            let (push, _) = node.poll_push().expect("a push");
            assert_eq!(
                push.answer_url.as_deref(),
                Some("http://127.0.0.1:5443/v1/calls/answer")
            );
            push.answer_token.expect("a token")
        };
        let first = call(&mut node, 1, 1, "");
        let second = call(&mut node, 2, 2, "");
        let reliable = call(&mut node, 3, 3, "Supported: 100rel\r\nRequire: 100rel\r\n");
        // Ringing from the push: taken, and the caller gets our 180.
        assert_eq!(
            node.handle_app_answer(start, peer, &first, PushAnswer::Ringing),
            AppAnswer::Reply(AppReply::Taken)
        );
        let sent: Vec<String> = std::iter::from_fn(|| node.poll_transmit())
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(
            sent[0].starts_with("SIP/2.0 180 Ringing\r\n"),
            "{}",
            sent[0]
        );
        assert!(
            sent[0].contains("To: <sip:u1@127.0.0.1>;tag="),
            "{}",
            sent[0]
        );
        assert!(
            sent[0].contains("Contact: <sip:127.0.0.1:5060>\r\n"),
            "{}",
            sent[0]
        );
        assert!(
            sent[0].ends_with("Content-Length: 0\r\n\r\n"),
            "{}",
            sent[0]
        );
        // A caller that requires reliable provisionals gets none of ours (RFC 3262).
        assert_eq!(
            node.handle_app_answer(start, peer, &reliable, PushAnswer::Ringing),
            AppAnswer::Reply(AppReply::Taken)
        );
        assert_eq!(node.poll_transmit().map(|t| t.bytes), None);
        // The token lives as long as the call may: its deadline and notice window (60 s).
        let late = start + Duration::from_secs(59);
        node.handle_timeout(late);
        assert_eq!(
            node.handle_app_answer(late, peer, &first, PushAnswer::Busy),
            AppAnswer::Reply(AppReply::CallOver),
            "the call timed out at 30 s; the token still verifies"
        );
        let expired = start + Duration::from_secs(62);
        assert_eq!(
            node.handle_app_answer(expired, peer, &second, PushAnswer::Busy),
            AppAnswer::Expired
        );
        assert_eq!(
            node.handle_app_answer(expired, peer, "pa1.nothing", PushAnswer::Busy),
            AppAnswer::InvalidToken
        );
    }

    #[test]
    fn a_backlog_of_due_timers_is_fired_in_bounded_batches() {
        let start = Instant::now();
        let mut node = node(start, 20);
        let server: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let caller: SocketAddr = "192.0.2.10:5060".parse().expect("an address");
        let calls = 200;
        for n in 0..calls {
            let invite = format!(
                "INVITE sip:u{}@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {caller};branch=z9hG4bKcall{n};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=a{n}\r\n\
To: <sip:u{}@127.0.0.1>\r\n\
Call-ID: call-{n}@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@{caller}>\r\n\
Content-Length: 0\r\n\r\n",
                n % 20 + 1,
                n % 20 + 1
            );
            let message = parse_datagram(invite.as_bytes()).expect("the INVITE parses");
            let flow = Flow::udp(server, caller);
            node.handle_inbound(start, Inbound::Message { flow, message });
        }
        while node.poll_transmit().is_some() || node.poll_push().is_some() {}
        // Every deadline falls due at once, and the shell comes back only long after.
        let late = start + Duration::from_secs(60);
        let mut finals = Vec::new();
        let mut rounds = 0;
        while node.poll_timeout() <= late && finals.len() < calls {
            node.handle_timeout(late);
            let round: Vec<Transmit> = std::iter::from_fn(|| node.poll_transmit()).collect();
            let answered = round
                .iter()
                .filter(|t| t.bytes.starts_with(b"SIP/2.0 480"))
                .count();
            assert!(
                answered <= TIMERS_PER_INPUT,
                "{answered} calls ended by one handle_timeout"
            );
            finals.extend(std::iter::repeat_n((), answered));
            rounds += 1;
        }
        assert_eq!(finals.len(), calls, "every call ends, batch after batch");
        assert!(
            rounds >= calls.div_ceil(TIMERS_PER_INPUT),
            "{rounds} rounds"
        );
    }
}
