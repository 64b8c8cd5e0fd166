//! The tokio shell around the sans-IO [`Node`]: it binds the listeners, moves the store to
//! its own thread, starts the push providers and the admin listener, and runs one loop that
//! hands the node what arrives — each with the time it arrived — and carries out what the
//! node asks for. It decides nothing.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::app_api::{self, AppApi, AppApiError, AppRequest};
use crate::auth::{Secret, UserDb, UsersError};
use crate::config::{Backend, Config, Transport};
use crate::metrics::{Gauges, Metrics};
use crate::node::{Destination, Node, NodeOptions, PushTag, Queue, StoreDone};
use crate::push::setup::{self, SetupError};
use crate::push::{Dispatcher, PushProvider, PushReports};
use crate::store::{Follower, Notice, RedisOptions, Store, StoreError, StoreOptions, Writer};
use crate::transaction::Key;
use crate::transport::{
    BindError, ClusterTls, Queued, TransportOptions, Transports, UdpBuffers, UdpOutbox,
};

/// How many connections (threads) a node writes to Redis over: REGISTERs of different
/// AORs are written side by side, and Redis's per-turn fsync of its append-only file covers
/// them together (README, "A cluster" under load). SQLite has one writer.
const REDIS_LANES: usize = 4;

/// How many datagrams the loop reads from a socket before it looks at its other work (one
/// `recvmmsg` on Linux).
const UDP_BATCH: usize = 64;

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start: {0}")]
    Io(#[source] io::Error),
    #[error("binding store: {0}")]
    Store(#[from] StoreError),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("cluster.secret_file: {0}")]
    Secret(String),
    #[error(transparent)]
    Push(#[from] SetupError),
    #[error(transparent)]
    AppApi(#[from] AppApiError),
}

/// A running server.
pub struct Server {
    addrs: Vec<(Transport, SocketAddr)>,
    transports: Transports,
    metrics: Arc<Metrics>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    app_api: Option<AppApi>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

/// What the server's owner asks of the loop.
enum Control {
    /// End every call, serve what that leaves to finish, then stop (within the grace).
    Drain,
    /// Stop now.
    Stop,
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
        let metrics = Arc::new(Metrics::default());
        let cluster_tls = match &config.cluster.ca_file {
            Some(path) => Some(ClusterTls::load(path).map_err(BindError::from)?),
            None => None,
        };
        let options = TransportOptions {
            connections: config.connections.clone(),
            trusted: config.auth.trusted_peers.clone(),
            max_message: config.sip.max_message_size,
            metrics: Arc::clone(&metrics),
            cluster_tls,
        };
        let listeners: Vec<_> = config.listen.iter().map(|l| l.as_ref().clone()).collect();
        let transports = Transports::bind(&listeners, options, inbound_tx).await?;
        let addrs = transports.local_addrs();
        let (dispatcher, reports) = setup::dispatcher(&config, extra)?;
        let users = match &config.auth.users_file {
            Some(path) => Some(UserDb::load(path)?),
            None => None,
        };
        let unix_time = unix_now();
        let boot: u64 = rand::random();
        let redis = redis_options(&config.store, boot);
        let mut store = match &redis {
            Some(options) => Store::open_redis(options)?,
            None => Store::open(&config.store.path, &StoreOptions::default())?,
        };
        // Where the other nodes' registration notices are read from: taken before the
        // bindings are loaded, so that none falls between the two (store/notice.rs).
        let notices_from = store.notices_end()?;
        let bindings = store.expiring_between(unix_time + 1, i64::MAX as u64)?;
        // From the cluster's file, or kept in the store: either way the route tokens of
        // dialogs up across a restart still verify.
        let secret = match &config.cluster.secret_file {
            Some(path) => Secret::from_file(path).map_err(StartError::Secret)?,
            None => Secret::from_bytes(&store.secret("node")?).unwrap_or_else(Secret::generate),
        };
        let (notice_tx, notices) = mpsc::unbounded_channel();
        let follower = match (&redis, notices_from) {
            (Some(options), Some(from)) => Some(
                Follower::start(options, from, move |notice| {
                    let _ = notice_tx.send(notice);
                })
                .map_err(StartError::Io)?,
            ),
            _ => None,
        };
        let (done_tx, store_done) = mpsc::unbounded_channel();
        // On Redis, more lanes (connections) than the one the store was opened with: while
        // one waits for its EXEC and the fsync behind it, the others send theirs.
        let mut stores = vec![store];
        if let Some(options) = &redis {
            for _ in 1..REDIS_LANES {
                stores.push(Store::open_redis(options)?);
            }
        }
        let writer = Writer::start(stores, move |done| {
            let _ = done_tx.send(done);
        })
        .map_err(StartError::Io)?;
        let admin = match config.admin.listen {
            Some(addr) => Some(
                crate::metrics::serve(addr, Arc::clone(&metrics))
                    .await
                    .map_err(StartError::Io)?,
            ),
            None => None,
        };
        // Answers from the push go to the loop; without an app API nothing sends any.
        let (app_tx, app_requests) = mpsc::channel(1024);
        let limits = app_api::Limits::from_config(&config);
        let app_api = AppApi::start(&config.app_api, limits, app_tx, Arc::clone(&metrics)).await?;
        let mut config = config;
        // Pushes name the address bound (port 0 is any), unless public_url says otherwise.
        config.app_api.listen =
            (app_api.as_ref()).map(|api| toml::Spanned::new(0..0, api.local_addr()));
        let grace = config.sip.shutdown_grace;
        let node = Node::new(
            config,
            Instant::now(),
            NodeOptions {
                listeners: addrs.clone(),
                bindings,
                users,
                secret,
                boot,
                unix_time,
                metrics: Arc::clone(&metrics),
            },
        );
        let shell = Shell {
            grace,
            node,
            outbox: UdpOutbox::new(&transports),
            transports: transports.clone(),
            writer,
            _follower: follower,
            dispatcher,
            metrics: Arc::clone(&metrics),
        };
        let (control, commands) = mpsc::channel(2);
        let inputs = Inputs {
            inbound,
            store_done,
            notices,
            reports,
            app_requests,
            control: commands,
        };
        let task = tokio::spawn(shell.run(inputs));
        for (transport, addr) in &addrs {
            info!("listening on {transport} {addr}");
        }
        Ok(Self {
            addrs,
            transports,
            metrics,
            admin,
            app_api,
            control,
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

    /// Reads the TLS listeners' certificates and keys again (SIGHUP): new connections get
    /// the new certificate, open ones and every call go on undisturbed.
    pub fn reload_tls(&self) {
        self.transports.reload_tls();
        if let Some(api) = &self.app_api {
            api.reload_tls();
        }
    }

    /// The address of the app API, when configured.
    pub fn app_api_addr(&self) -> Option<SocketAddr> {
        self.app_api.as_ref().map(AppApi::local_addr)
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
        self.stop(Control::Stop).await;
    }

    /// Stops gracefully (SIGTERM): every call in progress ends at once (503 with
    /// Retry-After to its caller, CANCEL to the phones ringing for it) and new calls are
    /// refused the same way; the server goes on until those answers are through, or
    /// `sip.shutdown_grace` has passed, then commits what the store was given and stops.
    pub async fn drain(mut self) {
        self.stop(Control::Drain).await;
    }

    async fn stop(&mut self, how: Control) {
        if let Some((_, admin)) = self.admin.take() {
            admin.abort();
        }
        // No more answers from the push: a call the drain ends needs none.
        self.app_api.take();
        let _ = self.control.send(how).await;
        let _ = (&mut self.task).await;
    }

    /// Runs until the task ends (it ends only on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// How to reach the Redis `[store]` names, for the run `boot` of this node; `None` for
/// SQLite.
fn redis_options(config: &crate::config::Store, boot: u64) -> Option<RedisOptions> {
    match (config.backend, &config.url) {
        (Backend::Redis, Some(url)) => Some(RedisOptions {
            url: url.get_ref().clone(),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            require_fsync: config.require_fsync,
            node: boot,
            ca_file: config.ca_file.clone(),
        }),
        // The configuration's checks leave no Redis without a URL.
        _ => None,
    }
}

/// Seconds since the Unix epoch, by the system clock.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a turn takes from a channel: the item that woke it, and up to a batch of those
/// waiting behind it. One item a turn would let a channel fall behind the sockets, whose
/// reads take a batch (a REGISTER's answer from the store waited seconds so under load).
fn turn<T>(first: T, mut next: impl FnMut() -> Option<T>, mut each: impl FnMut(T)) {
    each(first);
    for _ in 1..UDP_BATCH {
        let Some(item) = next() else { break };
        each(item);
    }
}

/// What the loop waits for.
struct Inputs {
    inbound: mpsc::Receiver<Queued>,
    store_done: mpsc::UnboundedReceiver<StoreDone>,
    notices: mpsc::UnboundedReceiver<Notice>,
    reports: PushReports<PushTag>,
    app_requests: mpsc::Receiver<AppRequest>,
    control: mpsc::Receiver<Control>,
}

/// What the loop owns: the node, and the I/O it asks for.
struct Shell {
    /// How long a drain may take (`sip.shutdown_grace`).
    grace: Duration,
    node: Node,
    transports: Transports,
    /// The turn's outgoing datagrams, and any that wait for room in a socket's buffer.
    outbox: UdpOutbox<Option<Key>>,
    /// The store's own thread (group commit).
    writer: Writer<StoreDone>,
    /// On Redis, the thread that reads the other nodes' registration notices.
    _follower: Option<Follower>,
    dispatcher: Dispatcher<PushTag>,
    metrics: Arc<Metrics>,
}

impl Shell {
    async fn run(mut self, inputs: Inputs) {
        let Inputs {
            mut inbound,
            mut store_done,
            mut notices,
            mut reports,
            mut app_requests,
            mut control,
        } = inputs;
        let transports = self.transports.clone();
        let mut datagrams = UdpBuffers::new(UDP_BATCH);
        // Set once draining: when to stop at the latest.
        let mut drain_until: Option<Instant> = None;
        // `/health` says ok from the start: an idle server turns next at its first timer.
        let now = Instant::now();
        let next = self.node.poll_timeout().saturating_duration_since(now);
        self.metrics.turned(now, next);
        loop {
            let wake = self.node.poll_timeout();
            let wake = drain_until.map_or(wake, |until| wake.min(until));
            tokio::select! {
                command = control.recv(), if drain_until.is_none() => match command {
                    Some(Control::Drain) => {
                        let now = Instant::now();
                        info!("draining: ending every call, for {:?} at most", self.grace);
                        self.node.handle_shutdown(now);
                        drain_until = Some(now + self.grace);
                    }
                    Some(Control::Stop) | None => break,
                },
                index = transports.udp_readable() => {
                    let now = Instant::now();
                    let node = &mut self.node;
                    let waited = transports.read_udp(index, UDP_BATCH, &mut datagrams, |item| {
                        node.handle_inbound(now, item);
                    });
                    if let Some(waited) = waited {
                        self.node.handle_queue_delay(now, Queue::Inbound, waited);
                    }
                }
                // A socket's buffer had no room: what waits for it goes in `carry_out`.
                _ = transports.udp_writable(&self.outbox), if self.outbox.is_waiting() => {}
                Some(first) = inbound.recv() => {
                    let now = Instant::now();
                    let node = &mut self.node;
                    turn(first, || inbound.try_recv().ok(), |(queued, item)| {
                        let waited = now.saturating_duration_since(queued);
                        node.handle_queue_delay(now, Queue::Inbound, waited);
                        node.handle_inbound(now, item);
                    });
                }
                Some(first) = store_done.recv() => {
                    let now = Instant::now();
                    turn(first, || store_done.try_recv().ok(), |done| {
                        self.node.handle_store_done(now, done);
                    });
                }
                Some(first) = notices.recv() => {
                    let now = Instant::now();
                    turn(first, || notices.try_recv().ok(), |notice| {
                        self.node.handle_notice(now, notice);
                    });
                }
                Some(first) = reports.recv() => {
                    let now = Instant::now();
                    turn(first, || reports.try_recv().ok(), |report| {
                        self.node.handle_push_report(now, report);
                    });
                }
                Some(request) = app_requests.recv() => {
                    let AppRequest { peer, token, answer, reply } = request;
                    let answer = self.node.handle_app_answer(Instant::now(), peer, &token, answer);
                    let _ = reply.send(answer);
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    self.node.handle_timeout(Instant::now());
                }
            }
            self.carry_out();
            self.metrics.set_gauges(self.node.gauges());
            // `/health` says ok while the loop keeps its own appointments.
            let now = Instant::now();
            let next = self.node.poll_timeout().saturating_duration_since(now);
            self.metrics.turned(now, next);
            // Drained once the node has nothing left and no datagram waits for room (asked
            // only while draining: `is_drained` looks through every transaction).
            if drain_until.is_some_and(|until| {
                now >= until || (self.node.is_drained() && !self.outbox.is_waiting())
            }) {
                break;
            }
        }
        // Let the store commit what it was given: bindings already answered are durable,
        // and the next start must find the file free.
        let threads = self.writer.close();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        info!("stopped");
    }

    /// Carries out everything the node asked for, in order: messages, pushes, store jobs.
    /// The turn's UDP datagrams are collected and sent together, in as few system calls as
    /// the platform allows. A message that cannot be sent is reported back, which may queue
    /// more.
    fn carry_out(&mut self) {
        loop {
            while let Some(transmit) = self.node.poll_transmit() {
                match transmit.destination {
                    Destination::Flow(flow) if flow.transport == Transport::Udp => {
                        let queued =
                            self.outbox
                                .push(&self.transports, &flow, transmit.bytes, transmit.key);
                        if let Err((key, e)) = queued {
                            debug!("{flow}: send failed: {e}");
                            self.send_failed(key);
                        }
                    }
                    Destination::Flow(flow) => {
                        if let Err(e) = self.transports.send_stream(&flow, transmit.bytes) {
                            debug!("{flow}: send failed: {e}");
                            self.send_failed(transmit.key);
                        }
                    }
                    Destination::Address(transport, peer) => {
                        let transports = self.transports.clone();
                        tokio::spawn(async move {
                            let sent = transports.send_to(transport, peer, transmit.bytes).await;
                            if let Err(e) = sent {
                                debug!("{transport} {peer}: send failed: {e}");
                            }
                        });
                    }
                }
            }
            let mut failed = false;
            let node = &mut self.node;
            self.outbox.flush(&self.transports, |key, _| {
                if let Some(key) = key {
                    node.handle_send_failed(Instant::now(), &key);
                    failed = true;
                }
            });
            // What the node made of a failed send goes out in this turn too.
            if !failed {
                break;
            }
        }
        while let Some((request, tag)) = self.node.poll_push() {
            // Whether queued or refused, the outcome comes back as a report.
            let _ = self.dispatcher.submit(request, tag);
        }
        while let Some(job) = self.node.poll_store() {
            self.writer.submit_job(job.key(), job.into_job());
        }
    }

    /// Tells the node a message of transaction `key` could not be sent.
    fn send_failed(&mut self, key: Option<Key>) {
        if let Some(key) = key {
            self.node.handle_send_failed(Instant::now(), &key);
        }
    }
}
