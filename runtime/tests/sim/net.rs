//! The simulated world's plumbing: the virtual clock, the queue of what happens next, the
//! seeded randomness, and the network between the node and the phones and callers — UDP
//! that loses, duplicates, delays and reorders datagrams, TCP connections that deliver in
//! order until they close.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

use bytes::Bytes;
use pushpark::config::Transport;
use pushpark::node::{AppAnswer, PushTag};
use pushpark::push::PushReport;
use pushpark::transport::{Flow, FlowId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Virtual milliseconds since the start of the run.
pub type Ms = u64;

/// The server's address, UDP and TCP.
pub const SERVER: &str = "192.0.2.1:5060";

pub fn server() -> SocketAddr {
    SERVER.parse().expect("a literal address")
}

/// Who is at the other end of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    Phone(usize),
    Caller(usize),
}

/// The ways a message reaches an actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// A datagram to this address of the actor's.
    Udp(SocketAddr),
    /// Over this TCP connection.
    Tcp(FlowId),
}

/// What the network does wrong, for one run.
#[derive(Clone, Copy, Debug)]
pub struct NetFaults {
    /// One-way latency, uniformly between these (reordering datagrams sent close together).
    pub latency: (Ms, Ms),
    /// The chance that a datagram is lost. The link is fair: the same datagram to the same
    /// place is lost at most twice, so retransmissions get through (as the model's
    /// fairness assumes).
    pub loss: f64,
    /// The chance that a datagram arrives twice.
    pub duplicate: f64,
    /// The chance that a TCP connection is cut (NAT time-out, a network change) at some
    /// moment in its first minute.
    pub cut: f64,
}

impl NetFaults {
    /// A network that delivers everything in a few milliseconds.
    pub const PERFECT: NetFaults = NetFaults {
        latency: (5, 5),
        loss: 0.0,
        duplicate: 0.0,
        cut: 0.0,
    };
}

/// Timers of the phones and callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Something the actor planned, named by the actor.
    Phone(usize, super::phone::Tick),
    Caller(usize, super::caller::Tick),
}

/// What happens at a moment of virtual time.
pub enum Happening {
    /// A message arrives at the node over `flow`.
    ToNode(Flow, Bytes),
    /// The node learns that a TCP connection closed.
    NodeClosed(FlowId),
    /// A message arrives at an actor.
    ToActor(Actor, Link, Bytes),
    /// A phone learns its TCP connection was cut.
    Cut(usize, FlowId),
    /// The network cuts a connection.
    CutNow(FlowId),
    /// A timer of an actor's.
    Tick(Tick),
    /// A push reaches a phone: the Call-ID it is about ("" for a refresh), and its answer
    /// token (a call's push, with the app API on).
    PushArrives(usize, String, Option<String>),
    /// An app's answer from its push reaches the node's app API.
    AppPost(super::phone::AppPost),
    /// The app API's reply reaches the app of a phone: the Call-ID, the reply.
    AppReply(usize, String, AppAnswer),
    /// The push service's answer reaches the node.
    PushReport(PushReport<PushTag>),
    /// The store's thread runs the jobs waiting.
    StoreRun,
}

/// An open TCP connection: the phone at its end, and when its last message in each
/// direction arrives (delivery is in order).
struct Conn {
    phone: usize,
    flow: Flow,
    to_node: Ms,
    to_phone: Ms,
}

/// The clock, the queue, the randomness and the network.
pub struct Net {
    pub now: Ms,
    pub rng: StdRng,
    faults: NetFaults,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    happenings: HashMap<u64, Happening>,
    seq: u64,
    /// Who listens on which UDP address.
    listeners: HashMap<SocketAddr, Actor>,
    conns: HashMap<FlowId, Conn>,
    next_conn: u64,
    /// How often each datagram (by destination and octets) has been lost.
    lost: HashMap<(SocketAddr, Bytes), u8>,
    /// What happened, one line each, for the report of a failing seed.
    pub trace: Vec<String>,
}

impl Net {
    pub fn new(seed: u64, faults: NetFaults) -> Self {
        Net {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            faults,
            queue: BinaryHeap::new(),
            happenings: HashMap::new(),
            seq: 0,
            listeners: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            lost: HashMap::new(),
            trace: Vec::new(),
        }
    }

    pub fn note(&mut self, line: impl AsRef<str>) {
        let line = format!("{:>9.3} {}", self.now as f64 / 1000.0, line.as_ref());
        self.trace.push(line);
    }

    /// Schedules `what` at `at` (never in the past). Ties keep the order of scheduling.
    pub fn at(&mut self, at: Ms, what: Happening) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq)));
        self.happenings.insert(self.seq, what);
    }

    pub fn after(&mut self, delay: Ms, what: Happening) {
        self.at(self.now + delay, what);
    }

    pub fn tick(&mut self, delay: Ms, tick: Tick) {
        self.after(delay, Happening::Tick(tick));
    }

    /// When the next happening is due.
    pub fn next_at(&self) -> Option<Ms> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The next happening, the clock moved to it.
    pub fn pop(&mut self) -> Option<Happening> {
        let Reverse((at, seq)) = self.queue.pop()?;
        self.now = at;
        self.happenings.remove(&seq)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    pub fn between(&mut self, low: Ms, high: Ms) -> Ms {
        self.rng.random_range(low..=high.max(low))
    }

    fn latency(&mut self) -> Ms {
        let (low, high) = self.faults.latency;
        self.between(low, high)
    }

    // ----- UDP ----------------------------------------------------------------------

    pub fn listen(&mut self, addr: SocketAddr, actor: Actor) {
        self.listeners.insert(addr, actor);
    }

    pub fn unlisten(&mut self, addr: SocketAddr) {
        self.listeners.remove(&addr);
    }

    /// Sends a datagram; `to_node` tells which way it goes. Lost, duplicated or delayed as
    /// the faults say.
    fn datagram(&mut self, to: SocketAddr, bytes: Bytes, what: impl Fn() -> Happening) {
        if self.chance(self.faults.loss) {
            let lost = self.lost.entry((to, bytes)).or_default();
            if *lost < 2 {
                *lost += 1;
                self.note(format!("  (lost on the way to {to})"));
                return;
            }
        }
        let copies = if self.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.latency();
            self.after(delay, what());
        }
    }

    /// A datagram from an actor's `from` to the node's UDP socket.
    pub fn udp_to_node(&mut self, from: SocketAddr, bytes: Bytes) {
        let flow = Flow::udp(server(), from);
        let server = server();
        self.datagram(server, bytes.clone(), || {
            Happening::ToNode(flow.clone(), bytes.clone())
        });
    }

    /// A datagram from the node to `to`: whoever listens there when it arrives gets it.
    pub fn udp_from_node(&mut self, to: SocketAddr, bytes: Bytes) {
        let Some(&actor) = self.listeners.get(&to) else {
            return self.note(format!("  (nobody listens on {to})"));
        };
        self.datagram(to, bytes.clone(), || {
            Happening::ToActor(actor, Link::Udp(to), bytes.clone())
        });
    }

    /// Whether a datagram arriving now for `actor` at `addr` is read.
    pub fn listening(&self, addr: SocketAddr, actor: Actor) -> bool {
        self.listeners.get(&addr) == Some(&actor)
    }

    // ----- TCP ----------------------------------------------------------------------

    /// Phone `phone` connects from `addr`; the network may cut the connection later.
    pub fn connect(&mut self, phone: usize, addr: SocketAddr) -> FlowId {
        let id = FlowId(1_000_000 + self.next_conn);
        self.next_conn += 1;
        let flow = Flow {
            id,
            transport: Transport::Tcp,
            local: server(),
            peer: addr,
        };
        self.conns.insert(
            id,
            Conn {
                phone,
                flow,
                to_node: self.now,
                to_phone: self.now,
            },
        );
        if self.chance(self.faults.cut) {
            let when = self.between(100, 60_000);
            self.after(when, Happening::CutNow(id));
        }
        id
    }

    /// A message from the phone over its connection.
    pub fn tcp_to_node(&mut self, id: FlowId, bytes: Bytes) {
        let latency = self.latency();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.to_node = conn.to_node.max(self.now + latency);
        let (at, flow) = (conn.to_node, conn.flow.clone());
        self.at(at, Happening::ToNode(flow, bytes));
    }

    /// A message from the node over connection `id`; `false` when it is closed (the send
    /// fails at once, as a write to a closed socket does).
    pub fn tcp_from_node(&mut self, id: FlowId, bytes: Bytes) -> bool {
        let latency = self.latency();
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        conn.to_phone = conn.to_phone.max(self.now + latency);
        let (at, phone) = (conn.to_phone, conn.phone);
        self.at(
            at,
            Happening::ToActor(Actor::Phone(phone), Link::Tcp(id), bytes),
        );
        true
    }

    /// Closes connection `id`: by the phone (`by_phone`), or cut by the network, when both
    /// ends learn it. What was already sent still arrives; the node learns after it.
    pub fn close(&mut self, id: FlowId, by_phone: bool) {
        let latency = self.latency();
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let at = conn.to_node.max(self.now + latency);
        self.at(at, Happening::NodeClosed(id));
        if !by_phone {
            self.note(format!("network cuts {id:?} of phone {}", conn.phone));
            self.after(latency, Happening::Cut(conn.phone, id));
        }
    }
}
