//! The server: one event loop that owns the core driver, the transactions, the registrar's
//! bindings and the proxy's calls, and turns what arrives (SIP messages, push outcomes,
//! store completions, timers) into core events and the core's effects into SIP.
//!
//! Everything the loop owns is touched by the loop alone, so nothing here locks except
//! the SQLite store, whose writes run on blocking threads so the loop never waits on disk.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pushpark_model::{AorId, CallId, DeviceId, Effect, Event, Timer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::auth::{DigestAuth, DigestConfig, Secret, UserDb, UsersError};
use crate::config::{Config, Provider, Transport};
use crate::driver::Driver;
use crate::metrics::{push_result, Gauges, Metrics};
use crate::proxy::{Branches, Calls};
use crate::push::{
    ApnsAuth, ApnsConfig, ApnsEnvironment, ApnsError, ApnsProvider, Dispatcher, DispatcherError,
    FcmConfig, FcmError, FcmProvider, KeySource, LogProvider, ProviderLimits, PushBudget,
    PushProvider, PushReport, PushReports, ServiceAccountSource, WebhookAuth, WebhookConfig,
    WebhookError, WebhookProvider,
};
use crate::registrar::{Bindings, RegisterDone};
use crate::sip::Message;
use crate::store::{Store, StoreError, StoreOptions, Writer};
use crate::transaction::{self, Output, Transactions};
use crate::transport::{Flow, FlowId, Inbound, Transports};
use crate::Map;

/// How many datagrams the loop reads from a socket before it looks at its other work.
const UDP_BATCH: usize = 64;

/// How long a UDP flow may stay silent before the loop forgets it.
const UDP_FLOW_IDLE: Duration = Duration::from_secs(4 * 3600);

/// A message on its way out, and the flow it goes over: what the transaction layer keeps
/// for retransmissions.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub flow: Flow,
    pub bytes: Bytes,
}

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen: {0}")]
    Listen(#[source] io::Error),
    #[error("binding store: {0}")]
    Store(#[from] StoreError),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("push provider: {0}")]
    Webhook(#[from] WebhookError),
    #[error("push provider: {0}")]
    Fcm(#[from] FcmError),
    #[error("push provider: {0}")]
    Apns(#[from] ApnsError),
    #[error("push providers: {0}")]
    Dispatcher(#[from] DispatcherError),
}

/// Events that come back to the loop from work done elsewhere.
pub(crate) enum Input {
    Registered(Box<RegisterDone>),
    /// Store work whose outcome needs no answer.
    Nothing,
}

/// A running server.
pub struct Server {
    addrs: Vec<(Transport, SocketAddr)>,
    metrics: Arc<Metrics>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds the listeners, opens the store and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with_providers(config, HashMap::new()).await
    }

    /// [`start`](Self::start), with push providers of the embedding program's own in
    /// addition to the configured ones (a name here wins); `[push.routes]` names them.
    pub async fn start_with_providers(
        config: Config,
        extra: HashMap<String, Arc<dyn PushProvider>>,
    ) -> Result<Self, StartError> {
        let (inbound_tx, inbound) = mpsc::channel(4096);
        let transports = Transports::bind(&config.listen, config.sip.max_message_size, inbound_tx)
            .await
            .map_err(StartError::Listen)?;
        let addrs = transports.local_addrs();
        let store = Store::open(&config.store.path, &StoreOptions::default())?;
        let (mut state, inputs, reports) = State::new(config, transports, store, extra)?;
        let metrics = Arc::clone(&state.metrics);
        let admin = match state.config.admin.listen {
            Some(addr) => Some(
                crate::metrics::serve(addr, Arc::clone(&metrics))
                    .await
                    .map_err(StartError::Listen)?,
            ),
            None => None,
        };
        let (stop_tx, stop) = oneshot::channel();
        let task = tokio::spawn(async move { state.run(inbound, inputs, reports, stop).await });
        for (transport, addr) in &addrs {
            info!("listening on {transport} {addr}");
        }
        Ok(Self {
            addrs,
            metrics,
            admin,
            stop: Some(stop_tx),
            task,
        })
    }

    /// The address bound for `transport` (the first, if several).
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|&(_, a)| a)
    }

    /// What the server holds right now.
    pub fn gauges(&self) -> Gauges {
        self.metrics.gauges()
    }

    /// The address of the admin listener (metrics, health), when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(addr, _)| *addr)
    }

    /// Stops serving; bindings are already durable.
    pub async fn shutdown(mut self) {
        if let Some((_, admin)) = self.admin.take() {
            admin.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Runs until the task ends (it ends only on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
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

/// What a push was for, so its outcome goes where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushTag {
    /// A call parked for a device: the outcome goes to the core.
    Call(CallId, DeviceId),
    /// A binding-refresh push (RFC 8599 §5.5): only a dead token matters.
    Refresh(DeviceId),
}

fn build_dispatcher(
    config: &Config,
    extra: HashMap<String, Arc<dyn PushProvider>>,
) -> Result<(Dispatcher<PushTag>, PushReports<PushTag>), StartError> {
    let mut providers: HashMap<String, Arc<dyn PushProvider>> = extra;
    for (name, provider) in &config.push.providers {
        if providers.contains_key(name) {
            continue;
        }
        let provider: Arc<dyn PushProvider> = match provider {
            Provider::Log => Arc::new(LogProvider::named(name.clone())),
            Provider::Webhook {
                url,
                timeout,
                bearer_token,
                format,
            } => {
                let mut webhook = WebhookConfig::new(url.clone());
                webhook.name = name.clone();
                webhook.timeout = *timeout;
                webhook.auth = bearer_token.clone().map(WebhookAuth::Bearer);
                webhook.format = *format;
                Arc::new(WebhookProvider::new(webhook)?)
            }
            Provider::Apns {
                key,
                key_id,
                team_id,
                certificate,
                certificate_password,
                certificate_key,
                sandbox,
                bundle_id,
                timeout,
            } => {
                let auth = match (key, key_id, team_id, certificate) {
                    (Some(key), Some(key_id), Some(team_id), _) => ApnsAuth::Token {
                        key: KeySource::Path(key.clone()),
                        key_id: key_id.clone(),
                        team_id: team_id.clone(),
                    },
                    (_, _, _, Some(cert)) if is_pkcs12(cert) => ApnsAuth::Pkcs12 {
                        file: KeySource::Path(cert.clone()),
                        password: certificate_password.clone().unwrap_or_default(),
                    },
                    (_, _, _, cert) => ApnsAuth::Pem {
                        cert: KeySource::Path(cert.clone().unwrap_or_default()),
                        key: certificate_key.clone().map(KeySource::Path),
                    },
                };
                let mut apns = ApnsConfig::new(auth);
                apns.name = name.clone();
                if *sandbox {
                    apns.environment = ApnsEnvironment::Sandbox;
                }
                apns.fallback_bundle_id = bundle_id.clone();
                apns.timeout = *timeout;
                Arc::new(ApnsProvider::new(apns)?)
            }
            Provider::Fcm {
                service_account,
                project_id,
                api_base_url,
                token_url,
                timeout,
            } => {
                let mut fcm = FcmConfig::new(ServiceAccountSource::Path(service_account.clone()));
                fcm.name = name.clone();
                fcm.project_id = project_id.clone();
                if let Some(url) = api_base_url {
                    fcm.api_base_url = url.clone();
                }
                fcm.token_url = token_url.clone();
                fcm.timeout = *timeout;
                Arc::new(FcmProvider::new(fcm)?)
            }
        };
        providers.insert(name.clone(), provider);
    }
    let mut builder = Dispatcher::builder();
    for (pns, name) in &config.push.routes {
        if let Some(provider) = providers.get(name.get_ref().as_str()) {
            builder = builder.provider(pns, Arc::clone(provider), ProviderLimits::default());
        }
    }
    // `apns.dev` (the sandbox, as Flexisip spells it) goes where `apns` goes.
    if config.push.routes.contains_key("apns") && !config.push.routes.contains_key("apns.dev") {
        builder = builder.alias("apns.dev", "apns");
    }
    Ok(builder.build()?)
}

fn is_pkcs12(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

/// Seconds since the Unix epoch: binding expiry is wall-clock time, so it survives restarts.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The loop's state.
pub(crate) struct State {
    pub config: Config,
    pub driver: Driver,
    pub transactions: Transactions<Outgoing>,
    pub started: Instant,
    pub transports: Transports,
    /// The store's own thread (group commit).
    pub store: Writer<Input>,
    pub bindings: Bindings,
    pub calls: Calls,
    pub branches: Branches,
    /// Flows seen, by id, with when they last carried a message, so a flow token in a
    /// Record-Route leads back to its flow; idle UDP flows are pruned by the sweep.
    pub flows: Map<FlowId, (Flow, Instant)>,
    pub dispatcher: Dispatcher<PushTag>,
    pub auth: Option<(DigestAuth, UserDb)>,
    pub addrs: Vec<(Transport, SocketAddr)>,
    next_id: u64,
    pub metrics: Arc<Metrics>,
    /// When each push in flight was handed to its provider, by push id.
    pub push_started: Map<String, Instant>,
    /// How many more pushes each device may get for now.
    pub push_budget: PushBudget<DeviceId>,
    /// Events found out while carrying out a step's effects, fed once all are carried out.
    pub feedback: Vec<Event>,
    /// Dialogs record-routed through us, so a device in a call counts as awake.
    pub dialogs: crate::proxy::Dialogs,
}

impl State {
    /// The loop's state over `transports` and `store`, with the configured push providers
    /// and `extra` ones; also what the store's thread and the push providers answer on.
    pub(crate) fn new(
        config: Config,
        transports: Transports,
        store: Store,
        extra: HashMap<String, Arc<dyn PushProvider>>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Input>, PushReports<PushTag>), StartError> {
        let (dispatcher, reports) = build_dispatcher(&config, extra)?;
        let auth = match &config.auth.users_file {
            Some(path) => {
                let mut digest = DigestConfig::new(config.realm(), Secret::generate());
                digest.algorithms = config.digest_algorithms();
                if let Some(lifetime) = config.auth.nonce_lifetime {
                    digest.nonce_lifetime = lifetime.as_secs();
                }
                Some((DigestAuth::new(digest), UserDb::load(path)?))
            }
            None => None,
        };
        let (store_tx, inputs) = mpsc::unbounded_channel();
        let bindings = Bindings::load(&store, unix_now())?;
        let state = State {
            driver: Driver::new(config.core()),
            transactions: Transactions::new(
                transaction_config(&config),
                crate::proxy::ack_for_non_2xx,
            ),
            started: Instant::now(),
            addrs: transports.local_addrs(),
            transports,
            store: Writer::start(store, move |input| {
                let _ = store_tx.send(input);
            })
            .map_err(StartError::Listen)?,
            bindings,
            calls: Calls::default(),
            branches: Branches::default(),
            flows: Map::default(),
            dispatcher,
            auth,
            next_id: 1,
            metrics: Arc::new(Metrics::default()),
            push_started: Map::default(),
            push_budget: PushBudget::new(config.push.max_per_device_per_minute),
            feedback: Vec::new(),
            dialogs: crate::proxy::Dialogs::default(),
            config,
        };
        Ok((state, inputs, reports))
    }

    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut reports: PushReports<PushTag>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut sweep = tokio::time::interval(self.config.registrar.sweep_interval);
        let transports = self.transports.clone();
        let mut datagram = vec![0; 65_536];
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = &mut stop => break,
                index = transports.udp_readable() => {
                    transports.read_udp(index, UDP_BATCH, &mut datagram, |item| {
                        self.on_inbound(item);
                    });
                }
                _ = sweep.tick() => {
                    self.sweep_bindings();
                    self.push_budget.prune(Instant::now());
                    self.prune_flows(Instant::now());
                    self.dialogs.prune(Instant::now());
                }
                Some(item) = inbound.recv() => self.on_inbound(item),
                Some(input) = inputs.recv() => self.on_input(input),
                Some(report) = reports.recv() => self.on_push_report(report),
                _ = sleep_until(self.started, wake) => self.on_timers(),
            }
            self.metrics.set_gauges(self.gauges());
        }
        // Let the store commit what it was given: bindings already answered are durable,
        // and the next start must find the file free.
        if let Some(thread) = self.store.close() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        info!("stopped");
    }

    /// Acts on what the store's thread answered.
    pub(crate) fn on_input(&mut self, input: Input) {
        match input {
            Input::Registered(done) => {
                self.on_registered(*done);
                self.drain_transactions();
            }
            Input::Nothing => {}
        }
    }

    /// Forgets UDP flows idle for longer than any dialog plausibly stays silent, unless a
    /// binding still names them (TCP flows go when their connection closes).
    fn prune_flows(&mut self, now: Instant) {
        let bindings = &self.bindings;
        self.flows.retain(|id, (flow, seen)| {
            flow.transport == Transport::Tcp
                || now.saturating_duration_since(*seen) < UDP_FLOW_IDLE
                || bindings.uses_flow(*id)
        });
    }

    /// What the loop holds right now.
    pub(crate) fn gauges(&self) -> Gauges {
        Gauges {
            core_calls: self.driver.core().len(),
            proxy_calls: self.calls.len(),
            parked_calls: self.calls.parked(),
            bindings: self.bindings.count(),
            transactions: self.transactions.len(),
        }
    }

    /// Milliseconds since start: the clock of the core and of the transactions.
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The core's clock reading at `instant`.
    pub fn millis_at(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.started);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// A fresh number, for branches, tags and ids.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn next_wake(&self) -> Option<u64> {
        let core = self.driver.next_timer().map(|(at, _)| at);
        let transactions = self.transactions.poll_timeout();
        match (core, transactions) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timers(&mut self) {
        let now = self.now();
        while let Some((timer, effects)) = self.driver.fire_next(now) {
            let call = match timer {
                Timer::Deadline(call) | Timer::Linger(call) | Timer::PushRetry(call, _) => call,
            };
            self.execute(Some(call), effects);
        }
        self.transactions.handle_timeout(now);
        self.drain_transactions();
    }

    pub(crate) fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Message { flow, message } => {
                self.flows.insert(flow.id, (flow.clone(), Instant::now()));
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
            Inbound::Closed(id) => {
                self.flows.remove(&id);
                self.bindings.flow_closed(id);
                // What was sent over it and is still waiting will never be answered.
                for key in self.branches.over(id) {
                    let _ = self.transactions.transport_error(&key);
                }
            }
        }
        self.drain_transactions();
    }

    pub(crate) fn on_push_report(&mut self, report: PushReport<PushTag>) {
        let latency = self
            .push_started
            .remove(&report.push_id)
            .map_or(Duration::ZERO, |t| t.elapsed());
        let (permanent, reason) = match &report.outcome {
            crate::push::PushOutcome::Accepted => (None, ""),
            crate::push::PushOutcome::Failed { permanent, reason } => {
                (Some(*permanent), reason.as_str())
            }
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
            crate::push::PushOutcome::Accepted => Event::PushAccepted { call, device },
            crate::push::PushOutcome::Failed { permanent, reason } => {
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

    /// Feeds one event to the core and carries out what it decides.
    pub fn feed(&mut self, event: Event) {
        let now = self.now();
        let call = match &event {
            Event::CallArrived { call, .. }
            | Event::CallerCancelled { call }
            | Event::PushAccepted { call, .. }
            | Event::PushFailed { call, .. }
            | Event::BranchRang { call, .. }
            | Event::BranchAnswered { call, .. }
            | Event::BranchRejected { call, .. }
            | Event::BranchUnreachable { call, .. } => Some(*call),
            Event::DeviceRegistered { .. } | Event::DeviceUnavailable { .. } => None,
            Event::TimerFired(_) => None,
        };
        let effects = self.driver.handle(now, event);
        self.execute(call, effects);
        // What carrying out the effects found out (a push refused at once, a flow already
        // closed) is fed only now: every effect of a step is applied before the next step.
        let feedback = std::mem::take(&mut self.feedback);
        for event in feedback {
            self.feed(event);
        }
        self.drain_transactions();
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
                | Effect::CancelBranch { call, .. }
                | Effect::HangUpBranch { call, .. }
                | Effect::RelayProvisional { call, .. }
                | Effect::Respond { call, .. }
                | Effect::TellEnded { call, .. } => Some(*call),
                Effect::ArmTimer { .. } | Effect::DisarmTimer { .. } => None,
                Effect::ForgetPushToken { .. } => None,
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

    /// Sends what the transaction layer decided and hands its events to the proxy.
    pub fn drain_transactions(&mut self) {
        while let Some(output) = self.transactions.poll_output() {
            match output {
                Output::Send { key, msg } => {
                    if let Err(e) = self.transports.send(&msg.flow, msg.bytes) {
                        debug!("{}: send failed: {e}", msg.flow);
                        let _ = self.transactions.transport_error(&key);
                    }
                }
                Output::ToTu(event) => self.on_transaction_event(event),
                Output::Terminated(key) => self.branches.terminated(&key),
            }
        }
    }

    /// Sends over a flow; a flow that has closed is reported to the log only (the
    /// transaction layer's timers decide what a lost message means).
    pub fn send(&self, flow: &Flow, bytes: Bytes) {
        if let Err(e) = self.transports.send(flow, bytes) {
            debug!("{flow}: send failed: {e}");
        }
    }

    /// Sends a request to an address no flow leads to (in-dialog requests by their URI):
    /// over UDP at once, over TCP by a task that connects first.
    pub fn send_to(&self, transport: Transport, peer: SocketAddr, bytes: Bytes) {
        if transport == Transport::Udp {
            if let Some(flow) = self.transports.udp_flow_to(peer) {
                return self.send(&flow, bytes);
            }
        }
        let transports = self.transports.clone();
        tokio::spawn(async move {
            if let Err(e) = transports.send_to(transport, peer, bytes).await {
                debug!("{transport} {peer}: send failed: {e}");
            }
        });
    }

    /// The callee id the core knows `aor` by.
    pub fn aor_id(&mut self, aor: &str) -> AorId {
        self.bindings.aor_id(aor)
    }

    /// Queues the blocking store work `work` on the store's thread; once its commit has
    /// ended, `done` makes the input the loop gets back.
    pub fn with_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
        done: impl FnOnce(T, Result<(), &StoreError>) -> Input + Send + 'static,
    ) {
        self.store.submit(work, done);
    }

    /// Whether `host` names this server: one of its domains or addresses.
    pub fn is_local_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.config
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(host))
            || self.addrs.iter().any(|(_, a)| a.ip().to_string() == host)
    }

    /// A generated response to `request`, sent back where it came from.
    pub fn respond_stateless(&self, flow: &Flow, request: &Message, code: u16, reason: &str) {
        let bytes = request.response(code).reason(reason).to_bytes();
        self.send(flow, Bytes::from(bytes));
    }
}

/// The `done` of store work whose outcome needs no answer: a failure is logged.
pub(crate) fn log_failure<T>(
    what: &'static str,
) -> impl FnOnce(Result<T, StoreError>, Result<(), &StoreError>) -> Input {
    move |result, committed| {
        let failure = committed
            .map_err(ToString::to_string)
            .and(result.map(drop).map_err(|e| e.to_string()));
        if let Err(e) = failure {
            tracing::error!("store: {what}: {e}");
        }
        Input::Nothing
    }
}

async fn sleep_until(started: Instant, at: Option<u64>) {
    match at {
        Some(at) => tokio::time::sleep_until((started + Duration::from_millis(at)).into()).await,
        None => std::future::pending().await,
    }
}
