//! The whole node, simulated (in the manner of TigerBeetle's simulator): the sans-IO
//! [`Node`] runs against simulated phones, callers, a push service, the store (real SQLite,
//! in memory) and a faulty network, all on one virtual clock and one random generator
//! seeded from a number. The same seed gives the same run, message for message: a failing
//! seed is printed with the run's trace and reproduces with `SIM_SEED=<seed>`.
//!
//! | file | what it simulates |
//! |---|---|
//! | `net.rs` | the clock, the queue of happenings, UDP and TCP with their faults |
//! | `phone.rs` | an RFC 8599 app that sleeps: single-line or call waiting, UDP or TCP |
//! | | asleep, it may answer a call's push over the app API instead of waking |
//! | `caller.rs` | a UA that calls, may cancel, ACKs, talks and hangs up |
//! | `push.rs` | the push service: accepts, refuses, loses, delays |
//! | `check.rs` | the properties every run must keep, on what callers and phones saw |

pub mod caller;
pub mod check;
pub mod net;
pub mod phone;
pub mod push;
pub mod sip;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushpark::auth::Secret;
use pushpark::config::{Config, Transport};
use pushpark::metrics::{Gauges, Metrics};
use pushpark::node::{AppAnswer, Destination, Node, NodeOptions, StoreJob};
use pushpark::store::{Store, StoreOptions};
use pushpark::transport::Inbound;
use pushpark_model::{Fault, PushAnswer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::caller::{CallSpec, Caller};
use self::net::{server, Actor, Happening, Ms, Net, NetFaults, Tick};
use self::phone::{Answer, AppPost, FromPush, OnPush, Phone, PhoneSpec};
use self::push::{PushFaults, PushService};

/// Everything a run is made of.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub phones: Vec<PhoneSpec>,
    pub calls: Vec<CallSpec>,
    pub net: NetFaults,
    pub push: PushFaults,
    /// How long the store's thread takes to commit, between these.
    pub store_latency: (Ms, Ms),
    pub config: Config,
}

impl Scenario {
    /// A random scenario: one or two callees with one or two phones each, up to four calls
    /// within two minutes, a network and a push service with some of every fault.
    pub fn random(seed: u64) -> Scenario {
        let rng = &mut StdRng::seed_from_u64(seed);
        let callees = rng.random_range(1..=2usize);
        let mut phones = Vec::new();
        for callee in 0..callees {
            for _ in 0..rng.random_range(1..=2) {
                phones.push(PhoneSpec {
                    user: format!("u{callee}"),
                    tcp: rng.random_bool(0.5),
                    call_waiting: rng.random_bool(0.2),
                    sleeps_at: rng.random_bool(0.8).then(|| rng.random_range(200..20_000)),
                    stays_awake: rng.random_range(10_000..60_000),
                    new_port_on_wake: rng.random_bool(0.5),
                    answers: [
                        (Answer::Accept, rng.random_range(0..10)),
                        (Answer::Busy, rng.random_range(0..3)),
                        (Answer::Decline, rng.random_range(0..3)),
                        (Answer::Ignore, rng.random_range(0..2)),
                    ],
                    answer_after: (300, rng.random_range(500..10_000)),
                    wake_after: (200, rng.random_range(300..4_000)),
                    dies: if rng.random_bool(0.3) { 0.5 } else { 0.0 },
                    talk: (1_000, rng.random_range(1_000..20_000)),
                    from_push: FromPush::NEVER,
                });
            }
        }
        // What the apps do with their pushes, drawn apart so that the rest of a seed's
        // scenario stays what it was before the app API.
        let apps = &mut StdRng::seed_from_u64(seed ^ 0x0a99_a915_0a99_a915);
        for phone in &mut phones {
            let never = apps.random_bool(0.3);
            let from_push = FromPush {
                choices: [
                    (OnPush::Wake, apps.random_range(0..4)),
                    (OnPush::Busy, apps.random_range(0..4)),
                    (OnPush::Decline, apps.random_range(0..3)),
                    (OnPush::Ringing, apps.random_range(0..3)),
                ],
                registers_anyway: if apps.random_bool(0.5) {
                    apps.random_range(0.0..1.0)
                } else {
                    0.0
                },
                think: (50, apps.random_range(100..6_000)),
                latency: (20, apps.random_range(30..2_000)),
                loss: if apps.random_bool(0.3) {
                    apps.random_range(0.0..0.3)
                } else {
                    0.0
                },
            };
            if !never {
                phone.from_push = from_push;
            }
        }
        let calls = (0..rng.random_range(1..=4))
            .map(|_| CallSpec {
                callee: format!("u{}", rng.random_range(0..callees)),
                at: rng.random_range(1_000..150_000),
                cancel_after: rng.random_bool(0.3).then(|| rng.random_range(100..40_000)),
                talk: rng.random_range(500..20_000),
            })
            .collect();
        let faulty = rng.random_bool(0.7);
        let net = NetFaults {
            latency: (2, rng.random_range(5..200)),
            loss: if faulty {
                rng.random_range(0.0..0.15)
            } else {
                0.0
            },
            duplicate: if faulty {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            },
            cut: if faulty {
                rng.random_range(0.0..0.3)
            } else {
                0.0
            },
        };
        let push = PushFaults {
            latency: (10, rng.random_range(20..1_500)),
            transient: rng.random_range(0.0..0.2),
            permanent: rng.random_range(0.0..0.06),
            lost: rng.random_range(0.0..0.1),
            delivery: (50, rng.random_range(100..3_000)),
        };
        Scenario {
            phones,
            calls,
            net,
            push,
            store_latency: (1, rng.random_range(2..50)),
            config: with_app_api(),
        }
    }
}

/// The node's configuration with the app API on: call pushes carry answer tokens. The node
/// binds nothing (the simulation calls `handle_app_answer` itself) and reads neither file.
pub fn with_app_api() -> Config {
    let mut config = Config::default();
    // The simulated store takes up to 50 ms per batch, which is no load: shedding is tested
    // on its own (tests/overload.rs and the node's unit tests).
    config.sip.overload_delay = std::time::Duration::ZERO;
    let listen = "192.0.2.1:5443".parse().expect("an address");
    config.app_api.listen = Some(toml::Spanned::new(0..0, listen));
    config.app_api.certificate = Some("/sim/app-api.pem".into());
    config.app_api.private_key = Some("/sim/app-api.key".into());
    config
}

/// An answer from the push as the node's app API took it.
#[derive(Clone, Debug)]
pub struct AppAnswered {
    pub phone: usize,
    pub call_id: String,
    pub answer: PushAnswer,
    pub reply: AppAnswer,
    pub at: Ms,
    /// The app's attempt: 0, or 1 for its retry after no reply.
    pub attempt: u32,
    /// How many INVITEs the node had sent to phones before (`World::invites_to_phones`).
    pub invites_before: usize,
    /// How many pushes the node had sent before (`PushService::sent`).
    pub pushes_before: usize,
    /// How many final responses the node had sent callers before (`World::finals_sent`).
    pub finals_before: usize,
    /// How many 180s the node had sent callers before (`World::rings_sent`).
    pub rings_before: usize,
    /// The 180s of the node's own it sent its caller on this answer.
    pub ringbacks: usize,
    /// The messages and pushes the node sent on this answer (nothing else was waiting).
    pub sent: usize,
}

/// One run: the node and its world.
pub struct World {
    pub node: Node,
    pub net: Net,
    pub phones: Vec<Phone>,
    pub callers: Vec<Caller>,
    pub push: PushService,
    store: Store,
    jobs: Vec<StoreJob>,
    store_run: bool,
    store_latency: (Ms, Ms),
    base: Instant,
    pub config: Config,
    /// The node's gauges once everything is over.
    pub gauges_at_end: Option<Gauges>,
    /// The first time the node sent each final response to a caller: Call-ID, code, when.
    pub finals_sent: Vec<(String, u16, Ms)>,
    /// When a CANCEL from each caller first reached the node: Call-ID, when.
    pub cancels_arrived: Vec<(String, Ms)>,
    /// When the node received a message from each phone, and from which address.
    pub heard: Vec<Vec<(Ms, SocketAddr)>>,
    /// When each caller's INVITE first reached the node.
    pub invites_arrived: Vec<(String, Ms)>,
    /// When the node first sent each phone the INVITE of each call: phone, Call-ID, when.
    pub invites_sent: Vec<(usize, String, Ms)>,
    /// Every INVITE the node sent a phone, retransmissions and reroutes too: phone,
    /// Call-ID, when.
    pub invites_to_phones: Vec<(usize, String, Ms)>,
    /// The apps' answers from their pushes, as the node took them, in order.
    pub app_answers: Vec<AppAnswered>,
    /// Each 180 the node sent a caller: Call-ID, when, whether it is the node's own (a
    /// ringback for an app that answered ringing from its push) or a phone's, relayed.
    pub rings_sent: Vec<(String, Ms, bool)>,
    /// How many messages the node has sent.
    transmits: usize,
}

impl World {
    pub fn new(seed: u64, scenario: &Scenario, fault: Option<Fault>) -> World {
        let base = Instant::now();
        let config = scenario.config.clone();
        let node = Node::new(
            config.clone(),
            base,
            NodeOptions {
                listeners: vec![(Transport::Udp, server()), (Transport::Tcp, server())],
                bindings: Vec::new(),
                users: None,
                secret: Secret::from_bytes(&[7; 32]).expect("a key"),
                boot: 1,
                unix_time: 1_800_000_000,
                metrics: Arc::new(Metrics::default()),
            },
        );
        let node = match fault {
            Some(fault) => node.with_fault(fault),
            None => node,
        };
        let mut net = Net::new(seed, scenario.net);
        let phones: Vec<Phone> = scenario
            .phones
            .iter()
            .enumerate()
            .map(|(i, spec)| Phone::new(i, spec.clone(), seed))
            .collect();
        let callers: Vec<Caller> = scenario
            .calls
            .iter()
            .enumerate()
            .map(|(i, spec)| Caller::new(i, spec.clone()))
            .collect();
        for caller in &callers {
            caller.schedule(&mut net);
        }
        let mut world = World {
            node,
            heard: vec![Vec::new(); phones.len()],
            phones,
            callers,
            push: PushService::new(scenario.push),
            store: Store::open_in_memory(&StoreOptions::default()).expect("a store in memory"),
            jobs: Vec::new(),
            store_run: false,
            store_latency: scenario.store_latency,
            base,
            config,
            gauges_at_end: None,
            finals_sent: Vec::new(),
            cancels_arrived: Vec::new(),
            invites_arrived: Vec::new(),
            invites_sent: Vec::new(),
            invites_to_phones: Vec::new(),
            app_answers: Vec::new(),
            rings_sent: Vec::new(),
            transmits: 0,
            net,
        };
        for phone in &mut world.phones {
            phone.start(&mut world.net);
        }
        world
    }

    fn instant(&self, at: Ms) -> Instant {
        self.base + Duration::from_millis(at)
    }

    /// Runs until nothing is left to happen before `until`, and then some more for the
    /// node's own timers, to `until`.
    pub fn run(&mut self, until: Ms) {
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(steps < 2_000_000, "the run does not settle");
            let timeout = self.node.poll_timeout();
            let timeout = timeout.saturating_duration_since(self.base);
            let timeout = u64::try_from(timeout.as_millis()).expect("millis")
                + u64::from(!timeout.subsec_nanos().is_multiple_of(1_000_000));
            let next = self.net.next_at();
            if timeout.min(next.unwrap_or(Ms::MAX)) > until {
                break;
            }
            if next.is_none_or(|n| timeout < n) {
                self.net.now = self.net.now.max(timeout);
                let now = self.instant(self.net.now);
                self.node.handle_timeout(now);
            } else {
                let happening = self.net.pop().expect("a happening");
                self.happen(happening);
            }
            self.carry_out();
        }
        self.net.now = until;
        self.gauges_at_end = Some(self.node.gauges());
    }

    fn happen(&mut self, happening: Happening) {
        let now = self.instant(self.net.now);
        match happening {
            Happening::ToNode(flow, bytes) => {
                let Some(msg) = sip::Msg::parse(&bytes) else {
                    return self.net.note("node: unparsable message");
                };
                self.observe_inbound(&flow.peer, &msg);
                self.node.handle_inbound(
                    now,
                    Inbound::Message {
                        flow,
                        message: msg.0,
                    },
                );
            }
            Happening::NodeClosed(id) => self.node.handle_inbound(now, Inbound::Closed(id)),
            Happening::ToActor(Actor::Phone(i), link, bytes) => {
                self.phones[i].on_message(&mut self.net, link, &bytes);
            }
            Happening::ToActor(Actor::Caller(i), link, bytes) => {
                self.callers[i].on_message(&mut self.net, link, &bytes);
            }
            Happening::Cut(i, id) => self.phones[i].on_cut(&mut self.net, id),
            Happening::CutNow(id) => self.net.close(id, false),
            Happening::Tick(Tick::Phone(i, tick)) => self.phones[i].on_tick(&mut self.net, tick),
            Happening::Tick(Tick::Caller(i, tick)) => {
                self.callers[i].on_tick(&mut self.net, tick);
            }
            Happening::PushArrives(i, call_id, token) => {
                self.phones[i].on_push(&mut self.net, call_id, token);
            }
            Happening::AppPost(post) => self.app_post(post),
            Happening::AppReply(i, call_id, reply) => {
                self.phones[i].on_app_reply(&mut self.net, call_id, reply);
            }
            Happening::PushReport(report) => self.node.handle_push_report(now, report),
            Happening::StoreRun => {
                self.store_run = false;
                let batch = std::mem::take(&mut self.jobs)
                    .into_iter()
                    .map(StoreJob::into_job)
                    .collect();
                for done in self.store.run_batch(batch, now) {
                    self.node.handle_store_done(now, done);
                    self.carry_out();
                }
            }
        }
    }

    /// An app's answer from its push reaches the node's app API, from the phone's address:
    /// the node's reply is recorded, what the answer made the node send goes out, and the
    /// reply goes back to the app.
    fn app_post(&mut self, post: AppPost) {
        let now = self.instant(self.net.now);
        let (invites_before, pushes_before) = (self.invites_to_phones.len(), self.push.sent.len());
        let rings_before = self.rings_sent.len();
        let sent_before = self.transmits;
        let finals_before = self.finals_sent.len();
        let peer = self.phones[post.phone].addr().ip();
        let reply = self
            .node
            .handle_app_answer(now, peer, &post.token, post.answer);
        self.net.note(format!(
            "node <- app of phone {}: {:?} for {} (attempt {}): {reply:?}",
            post.phone, post.answer, post.call_id, post.attempt
        ));
        self.carry_out();
        let ringbacks = self.rings_sent[rings_before..]
            .iter()
            .filter(|(_, _, own)| *own)
            .count();
        self.app_answers.push(AppAnswered {
            phone: post.phone,
            call_id: post.call_id.clone(),
            answer: post.answer,
            reply,
            at: self.net.now,
            attempt: post.attempt,
            invites_before,
            pushes_before,
            finals_before,
            rings_before,
            ringbacks,
            sent: self.transmits - sent_before + self.push.sent.len() - pushes_before,
        });
        if let Some(back) = post.back {
            self.net
                .after(back, Happening::AppReply(post.phone, post.call_id, reply));
        }
    }

    /// What the node received from whom: the properties need to know when the node last
    /// heard from each phone, and when each CANCEL reached it.
    fn observe_inbound(&mut self, from: &SocketAddr, msg: &sip::Msg) {
        let now = self.net.now;
        if let Some(phone) = self.phone_at(from) {
            self.heard[phone].push((now, *from));
        }
        if msg.method() == Some("INVITE")
            && !self
                .invites_arrived
                .iter()
                .any(|(c, _)| *c == msg.call_id())
        {
            self.invites_arrived.push((msg.call_id(), now));
        }
        let what = msg
            .method()
            .map_or_else(|| msg.status().unwrap_or(0).to_string(), str::to_owned);
        self.net
            .note(format!("node <- {from}: {what} {}", msg.call_id()));
        if msg.method() == Some("CANCEL")
            && !self
                .cancels_arrived
                .iter()
                .any(|(c, _)| *c == msg.call_id())
        {
            self.cancels_arrived.push((msg.call_id(), now));
        }
    }

    /// Carries out what the node asked for: messages onto the network, pushes to the push
    /// service, store jobs to the store's thread.
    fn carry_out(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            self.transmits += 1;
            self.observe_outbound(&transmit.destination, &transmit.bytes);
            match transmit.destination {
                Destination::Flow(flow) if flow.transport.is_stream() => {
                    if !self.net.tcp_from_node(flow.id, transmit.bytes) {
                        self.net
                            .note(format!("  (send over closed {:?} fails)", flow.id));
                        if let Some(key) = transmit.key {
                            let now = self.instant(self.net.now);
                            self.node.handle_send_failed(now, &key);
                        }
                    }
                }
                Destination::Flow(flow) => self.net.udp_from_node(flow.peer, transmit.bytes),
                Destination::Address(Transport::Udp, peer) => {
                    self.net.udp_from_node(peer, transmit.bytes);
                }
                Destination::Address(transport, peer) => {
                    // Phones sit behind NAT: nobody accepts a connection from the server.
                    self.net
                        .note(format!("  (no {transport} connection to {peer} can open)"));
                }
            }
        }
        while let Some((request, tag)) = self.node.poll_push() {
            let phone = self
                .phones
                .iter()
                .position(|p| p.token() == request.pn_prid);
            self.push
                .submit(&mut self.net, request, tag, phone, &mut self.phones);
        }
        while let Some(job) = self.node.poll_store() {
            self.jobs.push(job);
        }
        if !self.jobs.is_empty() && !self.store_run {
            self.store_run = true;
            let (low, high) = self.store_latency;
            let delay = self.net.between(low, high);
            self.net.after(delay, Happening::StoreRun);
        }
    }

    fn observe_outbound(&mut self, to: &Destination, bytes: &Bytes) {
        let Some(msg) = sip::Msg::parse(bytes) else {
            return self.net.note("node sends an unparsable message");
        };
        let peer = match to {
            Destination::Flow(flow) => flow.peer,
            Destination::Address(_, peer) => *peer,
        };
        let what = msg
            .method()
            .map_or_else(|| msg.status().unwrap_or(0).to_string(), str::to_owned);
        self.net
            .note(format!("node -> {peer}: {what} {}", msg.call_id()));
        if let (Some(phone), Some("INVITE")) = (self.phone_at(&peer), msg.method()) {
            let call_id = msg.call_id();
            self.invites_to_phones
                .push((phone, call_id.clone(), self.net.now));
            if self.invite_sent(phone, &call_id).is_none() {
                self.invites_sent.push((phone, call_id, self.net.now));
            }
        }
        let to_caller = self.callers.iter().any(|c| c.addr() == peer);
        if let (Some(code), true) = (msg.status(), to_caller) {
            let call_id = msg.call_id();
            if code == 180 && msg.cseq_method() == "INVITE" {
                // The node's own 180 names the node as Contact, with no user part (§9); a
                // phone's, relayed, has the phone's (`sip:u0@…`).
                let own = !msg.header("Contact").contains('@');
                self.rings_sent.push((call_id.clone(), self.net.now, own));
            }
            if code >= 200
                && msg.cseq_method() == "INVITE"
                && !self.finals_sent.iter().any(|(c, _, _)| *c == call_id)
            {
                self.finals_sent.push((call_id, code, self.net.now));
            }
        }
    }
}

impl World {
    /// The phone at `addr` (each phone has an IP address of its own).
    fn phone_at(&self, addr: &SocketAddr) -> Option<usize> {
        self.phones.iter().position(|p| p.addr().ip() == addr.ip())
    }

    /// When the node first sent `phone` the INVITE of `call_id`.
    pub fn invite_sent(&self, phone: usize, call_id: &str) -> Option<Ms> {
        self.invites_sent
            .iter()
            .find(|(p, c, _)| *p == phone && c == call_id)
            .map(|&(_, _, at)| at)
    }
}

/// Runs `scenario` from `seed` to the end and checks every property; the names of those
/// that failed, with the trace.
pub fn run(seed: u64, scenario: &Scenario, fault: Option<Fault>) -> Result<World, String> {
    let mut world = World::new(seed, scenario, fault);
    let last_call = scenario.calls.iter().map(|c| c.at).max().unwrap_or(0);
    // The last call, its deadline, a ringing phone's time-out, its talk, the linger and the
    // transactions' own timers: all over well within five minutes.
    world.run(last_call + 300_000);
    let failed = check::all(&world, scenario);
    if failed.is_empty() {
        Ok(world)
    } else {
        Err(format!(
            "seed {seed}: {}\n{scenario:?}\n--- trace ---\n{}",
            failed.join("\n"),
            world.net.trace.join("\n")
        ))
    }
}

/// The properties a failure report of [`run`] names.
pub fn broken_properties(report: &str) -> Vec<String> {
    let first = report.lines().next().unwrap_or("");
    let mut names: Vec<String> = report
        .lines()
        .take_while(|l| !l.starts_with("Scenario"))
        .map(|l| {
            l.strip_prefix(first.split(": ").next().unwrap_or(""))
                .map_or(l, |r| r.trim_start_matches(": "))
        })
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
    names.dedup();
    names
}
