//! [`SipSocket`]: a UDP socket, a set of TCP connections, or one TLS connection on
//! 127.0.0.1 that sends and receives whole SIP messages.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rsip::SipMessage;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sip::to_wire;
use super::{UaError, UaResult};

/// The SIP transport of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One UDP socket; a message is one datagram.
    Udp,
    /// TCP connections; messages framed by `Content-Length` (RFC 3261 §18.3).
    Tcp,
    /// One TLS connection to the server, framed like TCP; the server's certificate is
    /// checked against the test authority ([`super::tls`]).
    Tls,
}

impl Transport {
    /// `UDP` or `TCP`, as in a Via.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// `udp` or `tcp`, as in a `transport=` URI parameter.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.via_name())
    }
}

/// What the reader tasks deliver: a message and where it came from, or why bytes that came
/// did not parse.
type Incoming = Result<(SipMessage, SocketAddr), String>;

type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;
type Writers = Arc<Mutex<HashMap<SocketAddr, Writer>>>;

/// The largest message a reader accepts before giving up on a connection.
const MAX_MESSAGE: usize = 1 << 20;

/// A SIP socket bound on 127.0.0.1: UDP, a TCP listener that accepts connections, or one
/// outgoing TCP connection. Over TCP, a send to a peer with no connection opens one.
///
/// Background tasks read the socket and queue messages for [`SipSocket::recv`]; over TCP
/// they also answer CRLFCRLF keep-alive pings with CRLF (RFC 5626 §3.5.1). Dropping the
/// socket (or [`SipSocket::close`]) closes everything.
pub struct SipSocket {
    transport: Transport,
    local: SocketAddr,
    default_peer: Option<SocketAddr>,
    udp: Mutex<Option<Arc<UdpSocket>>>,
    writers: Writers,
    tx: mpsc::UnboundedSender<Incoming>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pings_answered: Arc<AtomicUsize>,
    pongs_received: Arc<AtomicUsize>,
    /// The certificate (DER) the server presented, over TLS.
    server_certificate: Option<Vec<u8>>,
}

impl fmt::Debug for SipSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipSocket")
            .field("transport", &self.transport)
            .field("local", &self.local)
            .field("default_peer", &self.default_peer)
            .finish()
    }
}

impl SipSocket {
    fn empty(transport: Transport, local: SocketAddr, default_peer: Option<SocketAddr>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            transport,
            local,
            default_peer,
            udp: Mutex::new(None),
            writers: Arc::default(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            tasks: Arc::default(),
            pings_answered: Arc::default(),
            pongs_received: Arc::default(),
            server_certificate: None,
        }
    }

    /// A UDP socket on 127.0.0.1:0.
    pub async fn udp() -> UaResult<Self> {
        let socket = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let this = Self::empty(Transport::Udp, socket.local_addr()?, None);
        *this.udp.lock().expect("udp lock") = Some(socket.clone());
        let tx = this.tx.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let data = &buf[..n];
                if data.iter().all(|b| b.is_ascii_whitespace()) {
                    continue; // a keep-alive
                }
                let item = SipMessage::try_from(data)
                    .map(|m| (m, from))
                    .map_err(|e| format!("unparsable datagram from {from}: {e}"));
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        this.tasks.lock().expect("tasks lock").push(task);
        Ok(this)
    }

    /// A TCP listener on 127.0.0.1:0 that accepts connections; replies go back over the
    /// connection a message came in on (its peer address is the `from` of [`Self::recv_from`]).
    pub async fn tcp_listen() -> UaResult<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let this = Self::empty(Transport::Tcp, listener.local_addr()?, None);
        let (writers, tx, tasks) = (this.writers.clone(), this.tx.clone(), this.tasks.clone());
        let (pings, pongs) = (this.pings_answered.clone(), this.pongs_received.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let reader = spawn_connection(
                    stream,
                    peer,
                    writers.clone(),
                    tx.clone(),
                    pings.clone(),
                    pongs.clone(),
                );
                tasks.lock().expect("tasks lock").push(reader);
            }
        });
        this.tasks.lock().expect("tasks lock").push(accept);
        Ok(this)
    }

    /// One TCP connection from 127.0.0.1:<ephemeral> to `peer`, which becomes the default
    /// destination of [`Self::send`]. The local address is the connection's.
    pub async fn tcp_connect(peer: SocketAddr) -> UaResult<Self> {
        let stream = TcpStream::connect(peer).await?;
        let _ = stream.set_nodelay(true);
        let this = Self::empty(Transport::Tcp, stream.local_addr()?, Some(peer));
        this.adopt(stream, peer);
        Ok(this)
    }

    /// One TLS connection to `peer`, which must present a certificate for its address
    /// issued by the test authority; `peer` becomes the default destination.
    pub async fn tls_connect(peer: SocketAddr) -> UaResult<Self> {
        let tcp = TcpStream::connect(peer).await?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        let connector = tokio_rustls::TlsConnector::from(super::tls::client_config());
        let stream = connector
            .connect(ServerName::IpAddress(peer.ip().into()), tcp)
            .await?;
        let mut this = Self::empty(Transport::Tls, local, Some(peer));
        this.server_certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec());
        this.adopt(stream, peer);
        Ok(this)
    }

    /// A socket for a UA that talks to `peer`: UDP on 127.0.0.1:0, or a TCP or TLS
    /// connection to `peer`. Either way `peer` becomes the default destination of
    /// [`Self::send`].
    pub async fn connect(transport: Transport, peer: SocketAddr) -> UaResult<Self> {
        match transport {
            Transport::Udp => {
                let mut socket = Self::udp().await?;
                socket.default_peer = Some(peer);
                Ok(socket)
            }
            Transport::Tcp => Self::tcp_connect(peer).await,
            Transport::Tls => Self::tls_connect(peer).await,
        }
    }

    /// A socket that waits for peers: UDP on 127.0.0.1:0, or a TCP listener on 127.0.0.1:0
    /// (the test UAs take no TLS connections: pushpark opens none).
    pub async fn bind(transport: Transport) -> UaResult<Self> {
        match transport {
            Transport::Udp => Self::udp().await,
            Transport::Tcp => Self::tcp_listen().await,
            Transport::Tls => Err(UaError::State("the test UAs listen on UDP or TCP".into())),
        }
    }

    /// The certificate (DER) the server presented in the TLS handshake.
    pub fn server_certificate(&self) -> Option<&[u8]> {
        self.server_certificate.as_deref()
    }

    /// Reads and writes `stream`, a connection with `peer`, from now on.
    fn adopt<S: AsyncRead + AsyncWrite + Send + 'static>(&self, stream: S, peer: SocketAddr) {
        let reader = spawn_connection(
            stream,
            peer,
            self.writers.clone(),
            self.tx.clone(),
            self.pings_answered.clone(),
            self.pongs_received.clone(),
        );
        self.tasks.lock().expect("tasks lock").push(reader);
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The local address: the UDP socket's, the listener's, or the outgoing connection's.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where [`Self::send`] sends, if the socket was made for one peer.
    pub fn default_peer(&self) -> Option<SocketAddr> {
        self.default_peer
    }

    /// How many CRLFCRLF pings were answered with CRLF (TCP).
    pub fn pings_answered(&self) -> usize {
        self.pings_answered.load(Ordering::SeqCst)
    }

    /// How many lone CRLF pongs arrived (TCP).
    pub fn pongs_received(&self) -> usize {
        self.pongs_received.load(Ordering::SeqCst)
    }

    /// Sends a message to the default peer.
    pub async fn send(&self, message: impl Into<SipMessage>) -> UaResult<()> {
        let peer = self
            .default_peer
            .ok_or_else(|| UaError::State("send() on a socket with no default peer".into()))?;
        self.send_to(message, peer).await
    }

    /// Sends a message to `dest` (over TCP: on the connection with that peer, opened if
    /// there is none).
    pub async fn send_to(&self, message: impl Into<SipMessage>, dest: SocketAddr) -> UaResult<()> {
        self.send_raw_to(&to_wire(&message.into()), dest).await
    }

    /// Sends raw bytes to `dest` (e.g. a CRLFCRLF ping, or a message split by hand).
    pub async fn send_raw_to(&self, bytes: &[u8], dest: SocketAddr) -> UaResult<()> {
        if self.transport == Transport::Udp {
            let udp = self.udp.lock().expect("udp lock").clone();
            let udp = udp.ok_or_else(|| UaError::State("socket closed".into()))?;
            udp.send_to(bytes, dest).await?;
            return Ok(());
        }
        let existing = self
            .writers
            .lock()
            .expect("writers lock")
            .get(&dest)
            .cloned();
        let writer = match existing {
            Some(w) => w,
            None if self.transport == Transport::Tls => {
                return Err(UaError::State(format!("no TLS connection to {dest}")));
            }
            None => {
                let stream = TcpStream::connect(dest).await?;
                let _ = stream.set_nodelay(true);
                self.adopt(stream, dest);
                self.writers
                    .lock()
                    .expect("writers lock")
                    .get(&dest)
                    .cloned()
                    .ok_or_else(|| UaError::State(format!("connection to {dest} closed")))?
            }
        };
        let mut w = writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// Sends a CRLFCRLF keep-alive ping to `dest` (TCP).
    pub async fn ping(&self, dest: SocketAddr) -> UaResult<()> {
        self.send_raw_to(b"\r\n\r\n", dest).await
    }

    /// Receives the next message, or fails after `timeout`.
    pub async fn recv(&self, timeout: Duration) -> UaResult<SipMessage> {
        Ok(self.recv_from(timeout).await?.0)
    }

    /// Receives the next message and the address it came from (over TCP, the connection's
    /// peer), or fails after `timeout`.
    pub async fn recv_from(&self, timeout: Duration) -> UaResult<(SipMessage, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Err(_) => Err(UaError::Timeout(format!(
                "a SIP message on {} {} ({timeout:?})",
                self.transport, self.local
            ))),
            Ok(None) => Err(UaError::State("socket closed".into())),
            Ok(Some(Err(e))) => Err(UaError::Parse(e)),
            Ok(Some(Ok(m))) => Ok(m),
        }
    }

    /// Whether a TCP connection with `peer` is open.
    pub fn is_connected_to(&self, peer: SocketAddr) -> bool {
        self.writers
            .lock()
            .expect("writers lock")
            .contains_key(&peer)
    }

    /// Closes the socket and every connection (also done on drop).
    pub fn close(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        self.writers.lock().expect("writers lock").clear();
        self.udp.lock().expect("udp lock").take();
    }
}

impl Drop for SipSocket {
    fn drop(&mut self) {
        self.close();
    }
}

/// Registers the connection's write half under `peer` and spawns its reader.
fn spawn_connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    writers: Writers,
    tx: mpsc::UnboundedSender<Incoming>,
    pings: Arc<AtomicUsize>,
    pongs: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    let (mut read, write) = tokio::io::split(stream);
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(write)));
    writers
        .lock()
        .expect("writers lock")
        .insert(peer, writer.clone());
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        'read: loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            loop {
                match next_frame(&mut buf) {
                    Frame::NeedMore => break,
                    Frame::Ping => {
                        let mut w = writer.lock().await;
                        if w.write_all(b"\r\n").await.is_err() {
                            break 'read;
                        }
                        pings.fetch_add(1, Ordering::SeqCst);
                    }
                    Frame::Pong => {
                        pongs.fetch_add(1, Ordering::SeqCst);
                    }
                    Frame::Message(bytes) => {
                        let item = SipMessage::try_from(bytes.as_slice())
                            .map(|m| (m, peer))
                            .map_err(|e| format!("unparsable message from {peer}: {e}"));
                        if tx.send(item).is_err() {
                            break 'read;
                        }
                    }
                    Frame::Broken(why) => {
                        let _ = tx.send(Err(format!("TCP stream from {peer}: {why}")));
                        break 'read;
                    }
                }
            }
        }
        writers.lock().expect("writers lock").remove(&peer);
    })
}

/// One unit cut from a TCP stream.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    NeedMore,
    /// CRLFCRLF: a keep-alive ping.
    Ping,
    /// A lone CRLF: a keep-alive pong.
    Pong,
    Message(Vec<u8>),
    Broken(String),
}

/// Cuts the next frame off the front of `buf` (RFC 3261 §18.3, RFC 5626 §3.5.1).
fn next_frame(buf: &mut Vec<u8>) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        buf.drain(..4);
        return Frame::Ping;
    }
    if buf.starts_with(b"\r\n") {
        // A ping is written in one piece, so a CRLF that has arrived alone is a pong; only
        // CRLF CR may still grow into a ping.
        if buf.len() == 3 && buf[2] == b'\r' {
            return Frame::NeedMore;
        }
        buf.drain(..2);
        return Frame::Pong;
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_MESSAGE {
            Frame::Broken("header section too large".into())
        } else {
            Frame::NeedMore
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
                match value.trim().parse() {
                    Ok(n) => length = n,
                    Err(_) => return Frame::Broken(format!("bad Content-Length {value:?}")),
                }
            }
        }
    }
    if length > MAX_MESSAGE {
        return Frame::Broken(format!("Content-Length {length} too large"));
    }
    let total = end + 4 + length;
    if buf.len() < total {
        return Frame::NeedMore;
    }
    Frame::Message(buf.drain(..total).collect())
}

/// Branches for which a response arrived: a UDP client transaction stops retransmitting then.
pub type AnsweredBranches = Arc<Mutex<std::collections::HashSet<String>>>;

/// RFC 3261 T1 and T2.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// Over UDP, retransmits `bytes` to `dest` until a response for `branch` arrives or 64·T1
/// pass (Timer A for an INVITE, doubling without cap; Timer E otherwise, capped at T2).
/// Holds the socket weakly, so a closed or dropped socket ends it. Does nothing over TCP.
pub fn spawn_retransmit(
    socket: &Arc<SipSocket>,
    bytes: Vec<u8>,
    dest: SocketAddr,
    branch: String,
    answered: AnsweredBranches,
    invite: bool,
) {
    if socket.transport() != Transport::Udp {
        return;
    }
    let weak = Arc::downgrade(socket);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut interval = T1;
        loop {
            tokio::time::sleep(interval).await;
            if start.elapsed() >= T1 * 64
                || answered.lock().expect("answered lock").contains(&branch)
            {
                return;
            }
            let Some(socket) = weak.upgrade() else {
                return;
            };
            if socket.send_raw_to(&bytes, dest).await.is_err() {
                return;
            }
            interval = if invite {
                interval * 2
            } else {
                (interval * 2).min(T2)
            };
        }
    });
}
