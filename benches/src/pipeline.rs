//! Fixtures for the in-process pipeline benches: a sans-IO [`Node`] with [`CALLEES`]
//! callees, each with a phone registered over UDP (asleep with a push token, or awake
//! without one), and the datagrams a caller and those phones send. Calls go to the callees
//! in turn, so no callee holds more than a few calls, as on a real server. The node's store
//! jobs run on an SQLite store in memory, here on the measuring thread; its pushes are
//! counted and dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushpark::auth::Secret;
use pushpark::config::{Config, Transport};
use pushpark::metrics::Metrics;
use pushpark::node::{Destination, Node, NodeOptions, Queue, StoreJob};
use pushpark::sip;
use pushpark::store::{Store, StoreOptions};
use pushpark::transport::{Flow, Inbound};

/// The server's UDP address.
pub const SERVER: &str = "127.0.0.1:5060";
/// The caller's address.
pub const CALLER: &str = "192.0.2.10:5060";
/// How many callees a server has.
pub const CALLEES: u64 = 250;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

/// The address of callee `k`'s phone.
pub fn phone(k: u64) -> SocketAddr {
    let port = u16::try_from(40_000 + k).expect("a port");
    SocketAddr::from(([192, 0, 2, 20], port))
}

/// A server with its callees registered, and the numbers their next requests use.
pub struct Fixture {
    pub node: Node,
    store: Store,
    /// The store jobs the node asked for and that have not run yet.
    jobs: Vec<StoreJob>,
    /// The datagrams sent since the last look, with the address each went to.
    sent: Vec<(SocketAddr, Bytes)>,
    /// The pushes the node handed out.
    pub pushes: u64,
    asleep: bool,
    next_call: u64,
    /// Each callee's phone's last REGISTER CSeq.
    cseq: Vec<u32>,
}

/// The configuration of the benches: embedded defaults, with no cap on pushes to one
/// phone or from one caller to one callee (the benches wake the same phones for the same
/// caller many times a second), no cap on requests from
/// one address (the caller sends thousands a second; the rate limiter still counts them, so
/// its cost is measured), and no awake window: the benches' sleeping phones registered a
/// moment ago, and must still be parked.
pub fn config() -> Config {
    let mut config = Config::default();
    config.push.max_per_device_per_minute = u32::MAX;
    config.push.max_per_caller_per_minute = u32::MAX;
    config.rate_limit.max_requests = u32::MAX;
    config.parking.awake_window = std::time::Duration::ZERO;
    config
}

impl Fixture {
    /// A fresh server with every callee's phone registered: `asleep` with a push token,
    /// else awake and reachable.
    pub fn new(asleep: bool) -> Self {
        let node = Node::new(
            config(),
            Instant::now(),
            NodeOptions {
                listeners: vec![(Transport::Udp, addr(SERVER))],
                bindings: Vec::new(),
                users: None,
                secret: Secret::generate(),
                boot: 1,
                unix_time: 1_800_000_000,
                metrics: Arc::new(Metrics::default()),
            },
        );
        let mut fixture = Self {
            node,
            store: Store::open_in_memory(&StoreOptions::default()).expect("a store in memory"),
            jobs: Vec::new(),
            sent: Vec::new(),
            pushes: 0,
            asleep,
            next_call: 0,
            cseq: vec![0; CALLEES as usize],
        };
        for k in 0..CALLEES {
            let register = fixture.next_register(k);
            fixture.receive_register(k, register);
            assert!(
                fixture.sent(phone(k), b"SIP/2.0 200"),
                "callee {k} is registered"
            );
        }
        fixture
    }

    /// [`new`](Self::new), then overloaded: ten seconds of messages that each waited a
    /// second, as the kernel would say of a socket the server cannot keep up with, so that
    /// (nearly) every new call is shed with a 503.
    pub fn overloaded(asleep: bool) -> Self {
        let mut fixture = Self::new(asleep);
        let start = Instant::now();
        for interval in 0..200 {
            let at = start + Duration::from_millis(50 * interval);
            for _ in 0..10 {
                let waited = Duration::from_secs(1);
                fixture.node.handle_queue_delay(at, Queue::Inbound, waited);
            }
        }
        fixture
    }

    /// A datagram from `peer` arrives and is handled as far as it goes without waiting.
    fn receive(&mut self, peer: SocketAddr, datagram: Bytes) {
        let message = sip::parse_datagram_bytes(datagram).expect("the datagram parses");
        let flow = Flow::udp(addr(SERVER), peer);
        self.node
            .handle_inbound(Instant::now(), Inbound::Message { flow, message });
        self.carry_out();
    }

    /// Takes what the node asked for: datagrams kept, pushes counted, store jobs queued.
    fn carry_out(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            let to = match transmit.destination {
                Destination::Flow(flow) => flow.peer,
                Destination::Address(_, addr) => addr,
            };
            self.sent.push((to, transmit.bytes));
        }
        while self.node.poll_push().is_some() {
            self.pushes += 1;
        }
        while let Some(job) = self.node.poll_store() {
            self.jobs.push(job);
        }
    }

    /// Runs the store jobs waiting in one transaction, as the store's thread would, and
    /// hands their answers to the node.
    fn complete_store_writes(&mut self) {
        let jobs = std::mem::take(&mut self.jobs);
        let batch = jobs.into_iter().map(StoreJob::into_job).collect();
        let now = Instant::now();
        for done in self.store.run_batch(batch, now) {
            self.node.handle_store_done(now, done);
            self.carry_out();
        }
    }

    /// The datagrams sent since the last call, with the address each went to.
    pub fn take_sent(&mut self) -> Vec<(SocketAddr, Bytes)> {
        std::mem::take(&mut self.sent)
    }

    /// How many calls this server has been sent.
    pub fn calls(&self) -> u64 {
        self.next_call
    }

    /// The callee the last call was for.
    pub fn last_callee(&self) -> u64 {
        self.next_call % CALLEES
    }

    /// The next REGISTER of callee `k`'s phone: the same Call-ID, the next CSeq.
    pub fn next_register(&mut self, k: u64) -> Bytes {
        let slot = &mut self.cseq[usize::try_from(k).expect("an index")];
        *slot += 1;
        let cseq = *slot;
        let phone = phone(k);
        let push = if self.asleep {
            format!(";pn-provider=fcm;pn-prid=token-{k};pn-param=project-1")
        } else {
            String::new()
        };
        Bytes::from(format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {phone};branch=z9hG4bKreg{k}x{cseq};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:u{k}@127.0.0.1>;tag=reg-{k}\r\n\
To: <sip:u{k}@127.0.0.1>\r\n\
Call-ID: reg-{k}@192.0.2.20\r\n\
CSeq: {cseq} REGISTER\r\n\
Contact: <sip:u{k}@{phone};transport=udp{push}>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-{k:012}>\"\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
        ))
    }

    /// Callee `k`'s phone's REGISTER arrives and the store's write completes: for a woken
    /// phone, what delivers its parked calls.
    pub fn receive_register(&mut self, k: u64, register: Bytes) {
        self.receive(phone(k), register);
        self.complete_store_writes();
    }

    /// The next call's INVITE, for the next callee in turn, with its own Call-ID and branch.
    pub fn next_invite(&mut self) -> Bytes {
        self.next_call += 1;
        let n = self.next_call;
        let k = n % CALLEES;
        let body = "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        Bytes::from(format!(
            "INVITE sip:u{k}@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKcall{n};rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@127.0.0.1>;tag=a{n}\r\n\
To: <sip:u{k}@127.0.0.1>\r\n\
Call-ID: call-{n}@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@{CALLER}>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// A caller's INVITE arrives.
    pub fn receive_invite(&mut self, invite: Bytes) {
        self.receive(addr(CALLER), invite);
    }

    /// Whether a datagram starting with `start` went to `to` since the last look.
    pub fn sent(&mut self, to: SocketAddr, start: &[u8]) -> bool {
        self.take_sent()
            .iter()
            .any(|(a, b)| *a == to && b.starts_with(start))
    }

    /// The caller's address.
    pub fn caller() -> SocketAddr {
        addr(CALLER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_call_gets_100_trying_and_is_delivered_on_the_wake_up_register() {
        let mut f = Fixture::new(true);
        let invite = f.next_invite();
        f.receive_invite(invite);
        assert!(f.sent(Fixture::caller(), b"SIP/2.0 100"), "100 Trying");
        assert_eq!(f.node.gauges().parked_calls, 1, "parked");
        assert_eq!(f.pushes, 1, "pushed");
        let k = f.last_callee();
        let wake = f.next_register(k);
        f.receive_register(k, wake);
        assert!(f.sent(phone(k), b"INVITE sip:u1@"), "delivered");
        assert_eq!(f.node.gauges().parked_calls, 0);
    }

    #[test]
    fn a_call_to_an_awake_phone_is_forwarded_at_once() {
        let mut f = Fixture::new(false);
        let invite = f.next_invite();
        f.receive_invite(invite);
        let sent = f.take_sent();
        assert!(sent
            .iter()
            .any(|(a, b)| *a == Fixture::caller() && b.starts_with(b"SIP/2.0 100")));
        assert!(sent
            .iter()
            .any(|(a, b)| *a == phone(1) && b.starts_with(b"INVITE sip:u1@")));
        assert_eq!(f.node.gauges().parked_calls, 0);
    }

    #[test]
    fn while_overloaded_a_new_call_gets_503_and_nothing_else() {
        let mut f = Fixture::overloaded(true);
        assert_eq!(f.node.gauges().overloaded, 1);
        for _ in 0..100 {
            let invite = f.next_invite();
            f.receive_invite(invite);
            let sent = f.take_sent();
            assert_eq!(sent.len(), 1, "one answer, no INVITE out");
            assert!(sent[0].1.starts_with(b"SIP/2.0 503"), "shed");
        }
        assert_eq!(f.pushes, 0, "no push");
        assert_eq!(
            f.node.gauges().core_calls,
            0,
            "the core never heard of them"
        );
    }
}
