//! SIP over UDP, TCP and TLS: listeners, flows, and how inbound messages reach the
//! server's loop (the loop reads UDP sockets itself; each TCP or TLS connection has a
//! reader task that queues its messages for the loop; see [`stream`] for their limits).
//!
//! A **flow** is what a device can be reached on (RFC 5626): a connection, or a UDP peer
//! address on one of our sockets. Inbound messages carry their flow, so a response or a
//! forwarded INVITE goes back exactly where the device's REGISTER came from. A connection's
//! flow lives as long as the connection; when it closes, [`Inbound::Closed`] says so and
//! its bindings become push-only again.

mod admission;
mod stream;
mod tls;
mod udp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub(crate) use self::admission::Admission;
use self::stream::Streams;
pub use self::tls::{ClusterTls, TlsError, TlsFiles};
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
        inbound: mpsc::Sender<Inbound>,
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

    /// Reads up to `max` datagrams waiting on UDP socket `index` (see
    /// [`udp_readable`](Self::udp_readable)), using `buf` (64 KiB), and hands each to
    /// `each` as what arrived: a message, or garbage that cannot be answered.
    pub fn read_udp(
        &self,
        index: usize,
        max: usize,
        buf: &mut [u8],
        mut each: impl FnMut(Inbound),
    ) {
        let Some((local, socket)) = self.inner.udp.get(index) else {
            return;
        };
        for _ in 0..max {
            let (len, peer) = match socket.try_recv_from(buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP port unreachable and the like surface here on some systems.
                Err(e) => {
                    debug!("UDP {local}: {e}");
                    continue;
                }
            };
            let flow = Flow::udp(*local, peer);
            let datagram = Bytes::copy_from_slice(&buf[..len]);
            each(match sip::parse_datagram_bytes(datagram) {
                // A CRLF keep-alive over UDP needs no answer (RFC 5626 uses STUN there).
                Err(ParseError::KeepAlive) => continue,
                Err(error) => Inbound::Garbage { flow, error },
                Ok(message) if len > self.inner.max_message => Inbound::TooLarge { flow, message },
                Ok(message) => Inbound::Message { flow, message },
            });
        }
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

    /// Sends `bytes` over `flow` without waiting.
    pub fn send(&self, flow: &Flow, bytes: Bytes) -> Result<(), SendError> {
        match flow.transport {
            Transport::Udp => {
                let Some((_, socket)) = self.inner.udp.iter().find(|(l, _)| *l == flow.local)
                else {
                    return Err(SendError::NoListener(Transport::Udp));
                };
                match socket.try_send_to(&bytes, flow.peer) {
                    Ok(_) => Ok(()),
                    // The socket buffer is full: let a task wait for room.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let socket = Arc::clone(socket);
                        let peer = flow.peer;
                        tokio::spawn(async move { socket.send_to(&bytes, peer).await });
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Transport::Tcp | Transport::Tls => self.inner.streams.send(flow.id, bytes),
        }
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
