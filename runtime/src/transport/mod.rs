//! SIP over UDP, TCP and TLS: listeners, flows, and how inbound messages reach the
//! server's loop (the loop reads UDP sockets itself; each TCP or TLS connection has a
//! reader task that queues its messages for the loop; see [`stream`] for their limits).
//!
//! A **flow** is what a device can be reached on (RFC 5626): a connection, or a UDP peer
//! address on one of our sockets. Inbound messages carry their flow, so a response or a
//! forwarded INVITE goes back exactly where the device's REGISTER came from. A connection's
//! flow lives as long as the connection; when it closes, [`Inbound::Closed`] says so and
//! its bindings become push-only again.
//!
//! UDP moves in batches, many datagrams per system call where the platform allows: the loop
//! reads into [`UdpBuffers`] and sends a turn's datagrams through an [`UdpOutbox`] (see
//! [`udp`] and [`outbox`] for how).

mod admission;
mod outbox;
mod stream;
mod tls;
mod udp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub(crate) use self::admission::Admission;
pub use self::outbox::UdpOutbox;
use self::stream::Streams;
pub use self::tls::{ClusterTls, TlsError, TlsFiles};
pub use self::udp::UdpBuffers;
use crate::config::{Connections, Listener, Transport};
use crate::metrics::Metrics;
use crate::sip::{self, Message, ParseError};

/// Identifies a flow for as long as it lives; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// Where a message came from, and the way back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub id: FlowId,
    pub transport: Transport,
    /// Our address the message arrived on.
    pub local: SocketAddr,
    /// The peer's address as we see it (after any NAT).
    pub peer: SocketAddr,
}

impl Flow {
    /// The flow of datagrams between our socket at `local` and `peer`. A UDP flow's id
    /// follows from its two addresses, so nothing is kept per peer: a server seeing
    /// millions of NATed phones over time holds no map of them.
    pub fn udp(local: SocketAddr, peer: SocketAddr) -> Flow {
        Flow {
            id: udp::flow_id(local, peer),
            transport: Transport::Udp,
            local,
            peer,
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} <- {}", self.transport, self.local, self.peer)
    }
}

/// What the transport hands to the server.
#[derive(Debug)]
pub enum Inbound {
    /// A whole message that parsed (it may still fail validation).
    Message { flow: Flow, message: Message },
    /// Octets that are no SIP message; nothing can be answered to them.
    Garbage { flow: Flow, error: ParseError },
    /// A datagram larger than the configured limit that still parsed: a request among them
    /// is answered 513 (RFC 3261 §18.1.1), nothing of it is acted on.
    TooLarge { flow: Flow, message: Message },
    /// A connection closed: its flow is gone.
    Closed(FlowId),
    /// A connection this server opened (to a node of its cluster, or to send a response
    /// whose connection had closed) is up: its flow may carry messages.
    Connected(Flow),
}

/// What a connection's reader hands the loop, and when: how long it then waits on the
/// channel is one measure of whether the node keeps up (`sip.overload_delay`).
pub type Queued = (Instant, Inbound);

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("flow {0:?} is closed")]
    FlowClosed(FlowId),
    #[error("no {0} listener to send from")]
    NoListener(Transport),
    #[error("no TLS connection to the peer (pushpark opens one only to its cluster's nodes)")]
    NoTlsConnection,
    #[error("connection limit reached")]
    LimitReached,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How the listeners are run: the limits of `[connections]`, and who is exempt.
pub struct TransportOptions {
    pub connections: Connections,
    /// Peers the per-address connection limit does not apply to.
    pub trusted: Vec<ipnet::IpNet>,
    /// The largest message accepted; larger ones get 513.
    pub max_message: usize,
    pub metrics: Arc<Metrics>,
    /// How to open TLS connections to the other nodes of a cluster (`[cluster] ca_file`).
    pub cluster_tls: Option<tls::ClusterTls>,
}

/// The bound listeners and the open connections.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    /// The UDP sockets and the addresses they are bound to.
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// The TCP and TLS listeners' addresses, and the TLS ones' certificates.
    streams_local: Vec<(Transport, SocketAddr, Option<Arc<TlsFiles>>)>,
    streams: Arc<Streams>,
    max_message: usize,
    /// How TLS connections to the other nodes of a cluster are opened.
    cluster_tls: Option<tls::ClusterTls>,
}

/// What can stop the listeners from starting.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {transport} {address}: {source}")]
    Listen {
        transport: Transport,
        address: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Transports {
    /// Binds every listener and starts receiving; messages arrive on `inbound`.
    pub async fn bind(
        listeners: &[Listener],
        options: TransportOptions,
        inbound: mpsc::Sender<Queued>,
    ) -> Result<Self, BindError> {
        let mut udp_sockets = Vec::new();
        let mut accepting = Vec::new();
        for listener in listeners {
            let listen_error = |source| BindError::Listen {
                transport: listener.transport,
                address: listener.address,
                source,
            };
            match listener.transport {
                Transport::Udp => {
                    let socket = udp::bind(listener.address).map_err(listen_error)?;
                    let local = socket.local_addr().map_err(listen_error)?;
                    udp_sockets.push((local, Arc::new(socket)));
                }
                Transport::Tcp | Transport::Tls => {
                    let tls = match (&listener.certificate, &listener.private_key) {
                        (Some(certificate), Some(key)) => {
                            Some(Arc::new(TlsFiles::load(certificate, key)?))
                        }
                        _ => None,
                    };
                    let socket = TcpListener::bind(listener.address)
                        .await
                        .map_err(listen_error)?;
                    let local = socket.local_addr().map_err(listen_error)?;
                    accepting.push((listener.transport, local, socket, tls));
                }
            }
        }
        let streams = Arc::new(Streams::new(
            options.connections,
            options.trusted,
            options.max_message,
            inbound,
            options.metrics,
        ));
        let mut streams_local = Vec::new();
        for (transport, local, socket, tls) in accepting {
            streams_local.push((transport, local, tls.clone()));
            tokio::spawn(Arc::clone(&streams).accept(socket, tls));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                udp: udp_sockets,
                streams_local,
                streams,
                max_message: options.max_message,
                cluster_tls: options.cluster_tls,
            }),
        })
    }

    /// Waits until one of the UDP sockets has a datagram waiting, and says which. The
    /// server's loop reads UDP itself: handing each datagram from a reader task to the loop
    /// cost a task wake-up (and often a thread switch) per message.
    pub async fn udp_readable(&self) -> usize {
        std::future::poll_fn(|cx| {
            for (index, (_, socket)) in self.inner.udp.iter().enumerate() {
                // An error is "ready" too: the read that follows reports it.
                if socket.poll_recv_ready(cx).is_ready() {
                    return std::task::Poll::Ready(index);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Waits until a UDP socket whose datagrams wait in `outbox` (its buffer was full) has
    /// room again, and says which; the loop's next [`UdpOutbox::flush`] sends them.
    pub async fn udp_writable<T>(&self, outbox: &UdpOutbox<T>) -> usize {
        std::future::poll_fn(|cx| {
            for (index, (_, socket)) in self.inner.udp.iter().enumerate() {
                // An error is "ready" too: the send that follows reports it.
                if outbox.is_waiting_on(index) && socket.poll_send_ready(cx).is_ready() {
                    return std::task::Poll::Ready(index);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Reads up to `max` datagrams waiting on UDP socket `index` (see
    /// [`udp_readable`](Self::udp_readable)) into `buffers`, as few system calls as it
    /// takes, and hands each to `each` as what arrived: a message, or garbage that cannot
    /// be answered. Says how long the newest of them waited in the socket's buffer, where
    /// the system tells (Linux).
    pub fn read_udp(
        &self,
        index: usize,
        max: usize,
        buffers: &mut UdpBuffers,
        mut each: impl FnMut(Inbound),
    ) -> Option<Duration> {
        let (local, socket) = self.inner.udp.get(index)?;
        let (mut left, mut ask, mut took) = (max, buffers.first_ask(), 0);
        while left > 0 {
            let asked = ask.min(left).min(buffers.slots());
            let received = match udp::recv_batch(socket, buffers, asked) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP port unreachable and the like surface here on some systems.
                Err(e) => {
                    debug!("UDP {local}: {e}");
                    left -= 1;
                    continue;
                }
            };
            for (datagram, peer) in buffers.received() {
                let flow = Flow::udp(*local, peer);
                let len = datagram.len();
                each(
                    match sip::parse_datagram_bytes(Bytes::copy_from_slice(datagram)) {
                        // A CRLF keep-alive over UDP needs no answer (RFC 5626 uses STUN there).
                        Err(ParseError::KeepAlive) => continue,
                        Err(error) => Inbound::Garbage { flow, error },
                        Ok(message) if len > self.inner.max_message => {
                            Inbound::TooLarge { flow, message }
                        }
                        Ok(message) => Inbound::Message { flow, message },
                    },
                );
            }
            took += received;
            // A short batch emptied the socket's queue.
            if received < asked {
                break;
            }
            left -= asked;
            ask = left;
        }
        buffers.took(took)
    }

    /// The addresses actually bound (port 0 in the configuration picks a free one).
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        let udp = self.inner.udp.iter().map(|&(a, _)| (Transport::Udp, a));
        let streams = self.inner.streams_local.iter().map(|&(t, a, _)| (t, a));
        udp.chain(streams).collect()
    }

    /// Reads every TLS listener's certificate and key again (SIGHUP); a listener whose
    /// files cannot be used keeps the certificate it has, and the error is logged.
    pub fn reload_tls(&self) {
        for (_, local, tls) in &self.inner.streams_local {
            let Some(files) = tls else { continue };
            match files.reload() {
                Ok(()) => tracing::info!(
                    "TLS {local}: certificate reloaded from {}",
                    files.certificate().display()
                ),
                Err(e) => warn!("TLS {local}: keeping the certificate in use: {e}"),
            }
        }
    }

    /// Sends `bytes` over `flow`, a TCP or TLS connection, without waiting. (UDP datagrams
    /// go out in batches, through an [`UdpOutbox`].)
    pub fn send_stream(&self, flow: &Flow, bytes: Bytes) -> Result<(), SendError> {
        self.inner.streams.send(flow.id, bytes)
    }

    /// Sends to an address no flow leads to yet: over UDP from our first UDP socket of the
    /// same address family, or over a new TCP connection (RFC 3261 §18.2.2: a response
    /// whose connection closed is sent over a new one to the Via's address). pushpark
    /// opens a TLS connection only to another node of its cluster (`[cluster] ca_file`): any
    /// other TLS peer is reached over the connection it opened.
    pub async fn send_to(
        &self,
        transport: Transport,
        peer: SocketAddr,
        bytes: Bytes,
    ) -> Result<Flow, SendError> {
        match transport {
            Transport::Udp => {
                let (local, socket) = self
                    .inner
                    .udp
                    .iter()
                    .find(|(local, _)| local.is_ipv4() == peer.is_ipv4())
                    .ok_or(SendError::NoListener(Transport::Udp))?;
                socket.send_to(&bytes, peer).await?;
                Ok(Flow::udp(*local, peer))
            }
            Transport::Tcp => self.inner.streams.connect(peer, None, bytes).await,
            Transport::Tls => match &self.inner.cluster_tls {
                // Only to another node of the cluster, with its authority's certificate.
                Some(tls) => self.inner.streams.connect(peer, Some(tls), bytes).await,
                None => Err(SendError::NoTlsConnection),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// A bound UDP listener on loopback (port chosen by the system), taking messages of up
    /// to `max_message` octets.
    async fn udp_listener(max_message: usize) -> (Transports, SocketAddr) {
        let listener = Listener {
            transport: Transport::Udp,
            address: "127.0.0.1:0".parse().expect("an address"),
            certificate: None,
            private_key: None,
            advertised_address: None,
        };
        let options = TransportOptions {
            connections: Connections::default(),
            trusted: Vec::new(),
            max_message,
            metrics: Arc::new(Metrics::default()),
            cluster_tls: None,
        };
        let (inbound, _) = mpsc::channel(1);
        let transports = Transports::bind(&[listener], options, inbound)
            .await
            .expect("bound");
        let local = transports.local_addrs()[0].1;
        (transports, local)
    }

    async fn peers(count: usize) -> Vec<UdpSocket> {
        let mut peers = Vec::new();
        for _ in 0..count {
            peers.push(UdpSocket::bind("127.0.0.1:0").await.expect("a peer socket"));
        }
        peers
    }

    /// An OPTIONS request whose body says who sent it and which it is.
    fn options(body: &str) -> String {
        format!(
            "OPTIONS sip:pushpark@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKbatch\r\n\
Max-Forwards: 70\r\n\
From: <sip:peer@127.0.0.1>;tag=1\r\n\
To: <sip:pushpark@127.0.0.1>\r\n\
Call-ID: batch@127.0.0.1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn body(message: &Message) -> String {
        String::from_utf8_lossy(message.body()).into_owned()
    }

    #[tokio::test]
    async fn datagrams_to_many_peers_go_out_batched_whole_and_in_each_peers_order() {
        let (transports, local) = udp_listener(65_535).await;
        let peers = peers(16).await;
        let mut outbox = UdpOutbox::new(&transports);
        // 40 rounds of one datagram to each peer: 640, several sendmmsg calls' worth.
        for n in 0..40 {
            for (p, peer) in peers.iter().enumerate() {
                let flow = Flow::udp(local, peer.local_addr().expect("an address"));
                let bytes = Bytes::from(format!("{p} {n}"));
                assert!(outbox.push(&transports, &flow, bytes, (p, n)).is_ok());
            }
        }
        loop {
            outbox.flush(&transports, |tag, e| panic!("{tag:?} not sent: {e}"));
            if !outbox.is_waiting() {
                break;
            }
            transports.udp_writable(&outbox).await;
        }
        let mut buf = [0; 64];
        for (p, peer) in peers.iter().enumerate() {
            for n in 0..40 {
                let (len, from) =
                    tokio::time::timeout(Duration::from_secs(10), peer.recv_from(&mut buf))
                        .await
                        .expect("every datagram arrives")
                        .expect("received");
                assert_eq!(from, local);
                assert_eq!(&buf[..len], format!("{p} {n}").as_bytes(), "in order");
            }
        }
    }

    #[test]
    fn a_flow_from_no_socket_of_ours_is_refused_with_its_tag() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async {
                let (transports, _) = udp_listener(65_535).await;
                let mut outbox = UdpOutbox::new(&transports);
                let elsewhere = "127.0.0.2:5060".parse().expect("an address");
                let flow = Flow::udp(elsewhere, elsewhere);
                let refused = outbox.push(&transports, &flow, Bytes::from_static(b"x"), 7);
                assert!(matches!(
                    refused,
                    Err((7, SendError::NoListener(Transport::Udp)))
                ));
            });
    }

    #[tokio::test]
    async fn a_burst_after_a_quiet_turn_is_read_whole_and_in_order() {
        let (transports, local) = udp_listener(65_535).await;
        let peer = UdpSocket::bind("127.0.0.1:0").await.expect("a peer socket");
        let mut buffers = UdpBuffers::new(64);
        for burst in [1, 64] {
            for n in 0..burst {
                let request = options(&format!("{burst} {n}"));
                peer.send_to(request.as_bytes(), local).await.expect("sent");
            }
            let mut read = Vec::new();
            while read.len() < burst {
                let index =
                    tokio::time::timeout(Duration::from_secs(10), transports.udp_readable())
                        .await
                        .expect("the burst is waiting");
                transports.read_udp(index, 64, &mut buffers, |item| match item {
                    Inbound::Message { message, .. } => read.push(body(&message)),
                    _ => panic!("a request was sent"),
                });
            }
            let expected: Vec<String> = (0..burst).map(|n| format!("{burst} {n}")).collect();
            assert_eq!(read, expected);
        }
    }

    #[tokio::test]
    async fn a_read_takes_a_bounded_batch_and_keeps_the_rules_of_udp() {
        let (transports, local) = udp_listener(1_000).await;
        let peers = peers(5).await;
        // From each peer: 10 requests, with a keep-alive, garbage and one too large among
        // them: 65 datagrams, 60 that are handed on.
        for round in 0..10 {
            for (p, peer) in peers.iter().enumerate() {
                let request = options(&format!("{p} {round}"));
                peer.send_to(request.as_bytes(), local).await.expect("sent");
                match round {
                    2 => peer.send_to(b"\r\n\r\n", local).await,
                    5 => peer.send_to(b"no SIP here", local).await,
                    7 => {
                        let large = options(&format!("{p} large {}", "x".repeat(1_000)));
                        peer.send_to(large.as_bytes(), local).await
                    }
                    _ => continue,
                }
                .expect("sent");
            }
        }
        let mut buffers = UdpBuffers::new(64);
        let mut messages: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        let (mut garbage, mut too_large, mut turns) = (0, 0, 0);
        while messages.values().map(Vec::len).sum::<usize>() + garbage + too_large < 60 {
            let index = tokio::time::timeout(Duration::from_secs(10), transports.udp_readable())
                .await
                .expect("the rest is waiting");
            let mut this_turn = 0;
            transports.read_udp(index, 8, &mut buffers, |item| {
                this_turn += 1;
                match item {
                    Inbound::Message { flow, message } => {
                        messages.entry(flow.peer).or_default().push(body(&message));
                    }
                    Inbound::Garbage { .. } => garbage += 1,
                    Inbound::TooLarge { message, .. } => {
                        assert!(body(&message).contains(" large "));
                        too_large += 1;
                    }
                    Inbound::Closed(_) | Inbound::Connected(_) => {
                        panic!("UDP has no connection")
                    }
                }
            });
            assert!(this_turn <= 8, "at most the batch asked for");
            turns += 1;
        }
        assert!(turns >= 65 / 8, "read in bounded batches");
        assert_eq!((garbage, too_large), (5, 5));
        for (p, peer) in peers.iter().enumerate() {
            let from = peer.local_addr().expect("an address");
            let expected: Vec<String> = (0..10).map(|n| format!("{p} {n}")).collect();
            assert_eq!(
                messages[&from], expected,
                "whole, in order, keep-alives ignored"
            );
        }
        // The socket was emptied; the next datagram still wakes the loop.
        peers[0]
            .send_to(options("0 late").as_bytes(), local)
            .await
            .expect("sent");
        let index = tokio::time::timeout(Duration::from_secs(10), transports.udp_readable())
            .await
            .expect("woken by the next datagram");
        let mut late = Vec::new();
        transports.read_udp(index, 8, &mut buffers, |item| late.push(item));
        assert!(
            matches!(&late[..], [Inbound::Message { message, .. }] if body(message) == "0 late")
        );
    }
}
