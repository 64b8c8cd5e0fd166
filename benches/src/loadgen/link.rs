//! Links: the few UDP sockets and TCP connections that all calls and devices share.
//!
//! A link has one reader task, which stamps each arriving message with the time it came,
//! parses it with the server's own parser and hands it to the [`Router`]. UDP sockets get
//! large kernel buffers, so a burst does not overflow them; TCP connections have a writer
//! task that batches whatever is queued into one write.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use pushpark::config::Transport;
use pushpark::sip::{frame_stream, parse_datagram, Frame, ParseError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::router::{Incoming, Router};
use super::sip::Local;

/// Kernel buffer asked for each UDP socket (Linux caps it at `net.core.rmem_max`).
const UDP_BUFFER: usize = 8 << 20;
/// Most bytes one TCP write gathers from the queue.
const TCP_BATCH: usize = 64 << 10;

/// Which side of the calls a link serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Callers: they send INVITE, ACK, BYE and CANCEL.
    Caller,
    /// Devices: they REGISTER and answer INVITEs.
    Device,
}

enum Kind {
    Udp(Arc<UdpSocket>),
    Tcp(Mutex<Option<mpsc::UnboundedSender<Bytes>>>),
}

/// One UDP socket or one TCP connection to the server.
pub(crate) struct Link {
    side: Side,
    local: Local,
    kind: Kind,
    reader: Mutex<Option<AbortHandle>>,
    /// Set when the load generator closes the link itself.
    closing: AtomicBool,
}

impl Link {
    /// A UDP socket on 127.0.0.1 with large buffers, and its reader.
    pub async fn udp(side: Side, router: &Arc<Router>) -> io::Result<Arc<Link>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: a smaller buffer only means more retransmissions under load.
        let _ = socket.set_recv_buffer_size(UDP_BUFFER);
        let _ = socket.set_send_buffer_size(UDP_BUFFER);
        let any: SocketAddr = "127.0.0.1:0".parse().map_err(io::Error::other)?;
        socket.bind(&any.into())?;
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(socket.into())?;
        let local = Local {
            addr: socket.local_addr()?,
            transport: Transport::Udp,
        };
        let link = Arc::new(Link {
            side,
            local,
            kind: Kind::Udp(Arc::new(socket)),
            reader: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        let task = tokio::spawn(read_udp(Arc::clone(&link), Arc::clone(router)));
        link.set_reader(task.abort_handle());
        Ok(link)
    }

    /// A TCP connection to `server`, its reader and its writer.
    pub async fn tcp(
        side: Side,
        server: SocketAddr,
        router: &Arc<Router>,
    ) -> io::Result<Arc<Link>> {
        let stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let local = Local {
            addr: stream.local_addr()?,
            transport: Transport::Tcp,
        };
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_tcp(write, rx));
        let link = Arc::new(Link {
            side,
            local,
            kind: Kind::Tcp(Mutex::new(Some(tx))),
            reader: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        let reader = read_tcp(Arc::clone(&link), read, server, Arc::clone(router));
        let task = tokio::spawn(reader);
        link.set_reader(task.abort_handle());
        Ok(link)
    }

    /// A link of `transport`: a UDP socket, or a connection to `server` (the load generator
    /// has no TLS client: it measures the server's SIP path, not a TLS library).
    pub async fn open(
        transport: Transport,
        side: Side,
        server: SocketAddr,
        router: &Arc<Router>,
    ) -> io::Result<Arc<Link>> {
        match transport {
            Transport::Udp => Link::udp(side, router).await,
            Transport::Tcp => Link::tcp(side, server, router).await,
            Transport::Tls => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the load generator speaks UDP and TCP only",
            )),
        }
    }

    fn set_reader(&self, handle: AbortHandle) {
        *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// The local address and transport, as messages sent over the link name them.
    pub fn local(&self) -> Local {
        self.local
    }

    /// Which side of the calls the link serves.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Sends one message without waiting: over UDP to `to` (a task waits for room in the
    /// rare case the socket buffer is full), over TCP down the connection's queue. `false`
    /// when it could not be sent.
    pub fn send(&self, bytes: &Bytes, to: SocketAddr) -> bool {
        match &self.kind {
            Kind::Udp(socket) => match socket.try_send_to(bytes, to) {
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let (socket, bytes) = (Arc::clone(socket), bytes.clone());
                    tokio::spawn(async move { socket.send_to(&bytes, to).await });
                    true
                }
                Err(_) => false,
            },
            Kind::Tcp(writer) => writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|tx| tx.send(bytes.clone()).is_ok()),
        }
    }

    /// Closes the link: a TCP connection is shut down once what is queued has been written
    /// (its reader ends when the server closes its side); a UDP socket stops reading.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        match &self.kind {
            Kind::Udp(_) => self.stop_reading(),
            Kind::Tcp(writer) => {
                writer.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
        }
    }

    /// Closes the link and stops its reader at once.
    pub fn shutdown(&self) {
        self.close();
        self.stop_reading();
    }

    fn stop_reading(&self) {
        if let Some(reader) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            reader.abort();
        }
    }
}

async fn read_udp(link: Arc<Link>, router: Arc<Router>) {
    let Kind::Udp(socket) = &link.kind else {
        return;
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP errors surface here on some systems; the socket itself is fine.
            Err(_) => continue,
        };
        let at = Instant::now();
        match parse_datagram(&buf[..len]) {
            Ok(message) => {
                let incoming = Incoming {
                    message,
                    at,
                    link: Arc::clone(&link),
                    from,
                };
                router.receive(incoming);
            }
            Err(ParseError::KeepAlive) => {}
            Err(_) => router.unparsable(),
        }
    }
}

async fn write_tcp(mut write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch = Vec::with_capacity(TCP_BATCH);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < TCP_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if write.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_tcp(
    link: Arc<Link>,
    mut read: OwnedReadHalf,
    server: SocketAddr,
    router: Arc<Router>,
) {
    let mut buf = BytesMut::with_capacity(TCP_BATCH);
    'connection: loop {
        buf.reserve(16 << 10);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let at = Instant::now();
        loop {
            match frame_stream(&buf) {
                Ok(None) => break,
                Ok(Some((consumed, frame))) => {
                    buf.advance(consumed);
                    match frame {
                        Frame::Message(message) => {
                            let incoming = Incoming {
                                message,
                                at,
                                link: Arc::clone(&link),
                                from: server,
                            };
                            router.receive(incoming);
                        }
                        Frame::Ping => {
                            let pong = Bytes::from_static(b"\r\n");
                            link.send(&pong, server);
                        }
                        Frame::Pong => {}
                    }
                }
                Err(_) => {
                    router.unparsable();
                    break 'connection;
                }
            }
        }
    }
    if !link.closing.load(Ordering::Relaxed) {
        router.closed_by_server();
    }
}
