//! SIP over UDP and TCP: listeners, flows, and how inbound messages reach the server's loop
//! (the loop reads UDP sockets itself; each TCP connection has a reader task that queues
//! its messages for the loop).
//!
//! A **flow** is what a device can be reached on (RFC 5626): a TCP connection, or a UDP
//! peer address on one of our sockets. Inbound messages carry their flow, so a response or
//! a forwarded INVITE goes back exactly where the device's REGISTER came from. A TCP flow
//! lives as long as its connection; when it closes, [`Inbound::Closed`] says so and its
//! bindings become push-only again.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::{Listener, Transport};
use crate::sip::{self, Frame, Message, ParseError};

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
            id: udp_flow_id(local, peer),
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
    /// A TCP connection closed: its flow is gone.
    Closed(FlowId),
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("flow {0:?} is closed")]
    FlowClosed(FlowId),
    #[error("no {0} listener to send from")]
    NoListener(Transport),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The bound listeners and the open connections.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    /// The UDP sockets and the addresses they are bound to.
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    tcp_local: Vec<SocketAddr>,
    connections: Mutex<HashMap<FlowId, mpsc::UnboundedSender<Bytes>>>,
    next_id: AtomicU64,
    inbound: mpsc::Sender<Inbound>,
    max_message: usize,
}

impl Transports {
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

    /// Binds every listener and starts receiving; messages arrive on `inbound`.
    pub async fn bind(
        listeners: &[Listener],
        max_message: usize,
        inbound: mpsc::Sender<Inbound>,
    ) -> io::Result<Self> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for listener in listeners {
            match listener.transport {
                Transport::Udp => {
                    let socket = bind_udp(listener.address)?;
                    udp.push((socket.local_addr()?, Arc::new(socket)));
                }
                Transport::Tcp => tcp.push(TcpListener::bind(listener.address).await?),
            }
        }
        let inner = Arc::new(Inner {
            tcp_local: tcp
                .iter()
                .map(|l| l.local_addr())
                .collect::<io::Result<_>>()?,
            udp,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            inbound,
            max_message,
        });
        for listener in tcp {
            tokio::spawn(accept_tcp(Arc::clone(&inner), listener));
        }
        Ok(Self { inner })
    }

    /// The addresses actually bound (port 0 in the configuration picks a free one).
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        let udp = self.inner.udp.iter().map(|&(a, _)| (Transport::Udp, a));
        let tcp = self.inner.tcp_local.iter().map(|&a| (Transport::Tcp, a));
        udp.chain(tcp).collect()
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
            Transport::Tcp => lock(&self.inner.connections)
                .get(&flow.id)
                .and_then(|tx| tx.send(bytes).ok())
                .ok_or(SendError::FlowClosed(flow.id)),
        }
    }

    /// Sends to an address no flow leads to yet: over UDP from our first UDP socket of the
    /// same address family, or over a new TCP connection (RFC 3261 §18.2.2: a response
    /// whose connection closed is sent over a new one to the Via's address).
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
            Transport::Tcp => {
                let stream = TcpStream::connect(peer).await?;
                let flow = self.inner.open_connection(stream)?;
                self.send(&flow, bytes)?;
                Ok(flow)
            }
        }
    }
}

/// The socket buffers a UDP listener asks for. The kernel's default (~200 KB) holds only
/// a few hundred datagrams, so a burst that arrives while the loop is busy is dropped and
/// comes back only through retransmissions, seconds later. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`; raise those to let it have all of it.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `address`, with [`UDP_SOCKET_BUFFER`]-sized buffers.
fn bind_udp(address: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: a smaller buffer than asked for still works.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// UDP flow ids have the top bit set; TCP flows count up from 1 below it.
fn udp_flow_id(local: SocketAddr, peer: SocketAddr) -> FlowId {
    use std::hash::{Hash, Hasher};
    // A fixed-key hasher: the id must be the same for the same pair, run after run.
    let mut hasher = std::hash::DefaultHasher::new();
    (local, peer).hash(&mut hasher);
    FlowId(hasher.finish() | 1 << 63)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the map itself consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn new_id(&self) -> FlowId {
        FlowId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a connection and starts its reader and writer.
    fn open_connection(self: &Arc<Self>, stream: TcpStream) -> io::Result<Flow> {
        stream.set_nodelay(true)?;
        let flow = Flow {
            id: self.new_id(),
            transport: Transport::Tcp,
            local: stream.local_addr()?,
            peer: stream.peer_addr()?,
        };
        let (reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        lock(&self.connections).insert(flow.id, tx);
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(read_tcp(Arc::clone(self), flow.clone(), reader));
        Ok(flow)
    }
}

async fn accept_tcp(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(e) = inner.open_connection(stream) {
                    debug!("TCP accept: {e}");
                }
            }
            Err(e) => {
                warn!("TCP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_tcp(inner: Arc<Inner>, flow: Flow, mut reader: tokio::net::tcp::OwnedReadHalf) {
    let mut buf = BytesMut::with_capacity(8192);
    'connection: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match sip::frame_stream(&buf) {
                Ok(None) if buf.len() > inner.max_message => {
                    let error = ParseError::MessageTooLarge;
                    let _ = inner
                        .inbound
                        .send(Inbound::Garbage {
                            flow: flow.clone(),
                            error,
                        })
                        .await;
                    break 'connection;
                }
                Ok(None) => break,
                Ok(Some((consumed, frame))) => {
                    let _ = buf.split_to(consumed);
                    match frame {
                        // RFC 5626 §4.4.1: answer a CRLFCRLF ping with a CRLF pong.
                        Frame::Ping => {
                            if let Some(tx) = lock(&inner.connections).get(&flow.id) {
                                let _ = tx.send(Bytes::from_static(b"\r\n"));
                            }
                        }
                        Frame::Pong => {}
                        Frame::Message(message) => {
                            let item = Inbound::Message {
                                flow: flow.clone(),
                                message,
                            };
                            if inner.inbound.send(item).await.is_err() {
                                break 'connection;
                            }
                        }
                    }
                }
                // The framing is lost: nothing after this can be trusted (RFC 3261 §18.3).
                Err(error) => {
                    let _ = inner
                        .inbound
                        .send(Inbound::Garbage {
                            flow: flow.clone(),
                            error,
                        })
                        .await;
                    break 'connection;
                }
            }
        }
    }
    lock(&inner.connections).remove(&flow.id);
    let _ = inner.inbound.send(Inbound::Closed(flow.id)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_flow_keeps_its_id_and_never_takes_a_tcp_one() {
        let local: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let phone: SocketAddr = "192.0.2.7:40000".parse().expect("an address");
        let other: SocketAddr = "192.0.2.7:40001".parse().expect("an address");
        assert_eq!(udp_flow_id(local, phone), udp_flow_id(local, phone));
        assert_ne!(udp_flow_id(local, phone), udp_flow_id(local, other));
        assert!(
            udp_flow_id(local, phone).0 >= 1 << 63,
            "TCP ids count up from 1"
        );
    }
}
