//! TCP and TLS connections: each has a reader task that frames its messages and queues
//! them for the loop, and a writer task that drains what the loop sends it. Everything a
//! peer can make the server hold here is bounded (`[connections]` in the configuration):
//!
//! * connections in all, and from one source address (trusted peers exempt): beyond
//!   either, a new connection is closed at once;
//! * time: a message (and a new connection's TLS handshake and first message) must be
//!   complete `message_timeout` after its first octet — a slowloris client sending a byte
//!   now and then is cut off —, and a connection with nothing to say for `idle_timeout`
//!   is closed;
//! * memory: at most `max_message_size` octets are buffered for a message (a larger one is
//!   answered 513 and its body skipped), and at most `max_write_queue` octets wait for a
//!   peer that does not read, which is then dropped;
//! * CPU: the buffer is scanned once, not again on every read (a message arriving an
//!   octet at a time costs linear time, not quadratic).
//!
//! Each limit hit counts in `pushpark_limit_hits_total{limit=...}`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::admission::{Admission, Slot};
use super::tls::ClusterTls;
use super::tls::TlsFiles;
use super::{Flow, FlowId, Inbound, Queued, SendError};
use crate::config::{Connections, Transport};
use crate::metrics::Metrics;
use crate::sip::{self, Frame, Message, ParseError};

/// The open connections and their limits.
pub(super) struct Streams {
    table: Mutex<Table>,
    next_id: AtomicU64,
    limits: Connections,
    /// Connections in all and per source address.
    admission: Arc<Admission>,
    max_message: usize,
    inbound: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Table {
    open: HashMap<FlowId, Connection>,
}

/// What the loop needs to send over a connection, or to close it.
struct Connection {
    tx: mpsc::UnboundedSender<Bytes>,
    /// Octets handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    close: Arc<Notify>,
    /// Its queue went over the limit: it is closing, and takes nothing more.
    over: std::sync::atomic::AtomicBool,
}

impl Streams {
    pub(super) fn new(
        limits: Connections,
        trusted: Vec<ipnet::IpNet>,
        max_message: usize,
        inbound: mpsc::Sender<Queued>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let admission =
            Admission::new(limits.max, limits.max_per_ip, trusted, Arc::clone(&metrics));
        Self {
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
            limits,
            admission: Arc::new(admission),
            max_message,
            inbound,
            metrics,
        }
    }

    /// A place for a new connection with `peer` (counted against its address when
    /// `inbound` and not trusted), or `None` when a limit says no.
    fn admit(&self, peer: IpAddr, inbound: bool) -> Option<Slot> {
        self.admission.admit(peer, inbound)
    }

    /// Queues `bytes` for the connection of `id`; a peer that leaves more than
    /// `max_write_queue` octets unread is dropped.
    pub(super) fn send(&self, id: FlowId, bytes: Bytes) -> Result<(), SendError> {
        let table = lock(&self.table);
        let connection = table.open.get(&id).ok_or(SendError::FlowClosed(id))?;
        let max = self.limits.max_write_queue;
        if connection.over.load(Ordering::Relaxed) {
            return Err(SendError::FlowClosed(id));
        }
        let before = connection.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        if before + bytes.len() > max {
            // Counted once, when the queue first goes over (what the writer drains later
            // does not let it take more); the connection is closing.
            connection.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            connection.over.store(true, Ordering::Relaxed);
            connection.close.notify_one();
            drop(table);
            self.metrics.limit_hit("write_queue");
            return Err(SendError::FlowClosed(id));
        }
        connection
            .tx
            .send(bytes)
            .map_err(|_| SendError::FlowClosed(id))
    }

    /// Opens a connection to `peer` (within `connect_timeout`), over TLS with `tls` (the
    /// handshake within the same time), and sends `bytes` over it.
    pub(super) async fn connect(
        self: &Arc<Self>,
        peer: SocketAddr,
        tls: Option<&ClusterTls>,
        bytes: Bytes,
    ) -> Result<Flow, SendError> {
        let slot = self
            .admit(peer.ip(), false)
            .ok_or(SendError::LimitReached)?;
        let by = Instant::now() + self.limits.connect_timeout;
        let timed_out = || SendError::from(io::Error::from(io::ErrorKind::TimedOut));
        let stream = tokio::time::timeout_at(by, TcpStream::connect(peer))
            .await
            .map_err(|_| timed_out())??;
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let flow = self.flow(transport, &stream)?;
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let streams = Arc::clone(self);
        match tls {
            None => {
                tokio::spawn(streams.serve(stream, flow.clone(), slot, None, ready_tx));
            }
            Some(tls) => {
                // The node is named by its address: its certificate must name it so.
                let name = rustls::pki_types::ServerName::from(peer.ip());
                let stream = tokio::time::timeout_at(by, tls.connector().connect(name, stream))
                    .await
                    .map_err(|_| timed_out())??;
                tokio::spawn(streams.serve(stream, flow.clone(), slot, None, ready_tx));
            }
        }
        let _ = ready.await;
        // Before anything comes back over it: the node may send over it at once.
        let _ = self
            .inbound
            .send((std::time::Instant::now(), Inbound::Connected(flow.clone())))
            .await;
        self.send(flow.id, bytes)?;
        Ok(flow)
    }

    fn flow(&self, transport: Transport, stream: &TcpStream) -> io::Result<Flow> {
        stream.set_nodelay(true)?;
        Ok(Flow {
            id: FlowId(self.next_id.fetch_add(1, Ordering::Relaxed)),
            transport,
            local: stream.local_addr()?,
            peer: stream.peer_addr()?,
        })
    }

    /// Accepts connections on `listener` for ever, over TLS when `tls` is given.
    pub(super) async fn accept(self: Arc<Self>, listener: TcpListener, tls: Option<Arc<TlsFiles>>) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(peer.ip(), true) else {
                debug!("{peer}: connection refused, limit reached");
                continue;
            };
            let transport = if tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            };
            let flow = match self.flow(transport, &stream) {
                Ok(flow) => flow,
                Err(e) => {
                    debug!("{peer}: {e}");
                    continue;
                }
            };
            // The handshake and the first message must both be done by then.
            let first_by = Instant::now() + self.limits.message_timeout;
            let streams = Arc::clone(&self);
            let (ready, _) = tokio::sync::oneshot::channel();
            match &tls {
                None => {
                    tokio::spawn(streams.serve(stream, flow, slot, Some(first_by), ready));
                }
                Some(files) => {
                    let acceptor = files.acceptor();
                    tokio::spawn(async move {
                        match tokio::time::timeout_at(first_by, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                streams
                                    .serve(stream, flow, slot, Some(first_by), ready)
                                    .await;
                            }
                            Ok(Err(e)) => debug!("{}: TLS handshake failed: {e}", flow.peer),
                            Err(_) => streams.metrics.limit_hit("message_timeout"),
                        }
                    });
                }
            }
        }
    }

    /// Runs one connection until it closes, then says so to the loop. `first_by`: when
    /// its first message must be complete (connections we accepted).
    async fn serve<S>(
        self: Arc<Self>,
        io: S,
        flow: Flow,
        slot: Slot,
        first_by: Option<Instant>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, writer) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        lock(&self.table).open.insert(
            flow.id,
            Connection {
                tx,
                queued: Arc::clone(&queued),
                close: Arc::clone(&close),
                over: std::sync::atomic::AtomicBool::new(false),
            },
        );
        let _ = ready.send(());
        let writing = tokio::spawn(write(writer, rx, queued, Arc::clone(&close)));
        let why = self.read(&mut reader, &flow, first_by, &close).await;
        if let Some(limit) = why {
            debug!("{flow}: closed: {limit}");
            self.metrics.limit_hit(limit);
        }
        writing.abort();
        lock(&self.table).open.remove(&flow.id);
        drop(slot);
        let _ = self
            .inbound
            .send((std::time::Instant::now(), Inbound::Closed(flow.id)))
            .await;
    }

    /// Reads and frames until the connection ends; `Some(limit)` when a limit ended it.
    async fn read<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        flow: &Flow,
        mut first_by: Option<Instant>,
        close: &Notify,
    ) -> Option<&'static str> {
        let mut buf = BytesMut::with_capacity(8192);
        let mut framer = Framer::default();
        let mut last_read = Instant::now();
        // When the first octet of the message still incomplete in `buf` arrived.
        let mut message_since: Option<Instant> = None;
        loop {
            let mut framed = false;
            loop {
                let item = match framer.next(&mut buf, self.max_message) {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    // The framing is lost: nothing after this can be trusted (RFC 3261 §18.3).
                    Err(error) => {
                        let _ = self
                            .inbound
                            .send((
                                std::time::Instant::now(),
                                Inbound::Garbage {
                                    flow: flow.clone(),
                                    error,
                                },
                            ))
                            .await;
                        return None;
                    }
                };
                framed = true;
                let item = match item {
                    // RFC 5626 §4.4.1: answer a CRLFCRLF ping with a CRLF pong.
                    Item::Frame(Frame::Ping) => {
                        let _ = self.send(flow.id, Bytes::from_static(b"\r\n"));
                        continue;
                    }
                    Item::Frame(Frame::Pong) => continue,
                    Item::Frame(Frame::Message(message)) => {
                        first_by = None;
                        Inbound::Message {
                            flow: flow.clone(),
                            message,
                        }
                    }
                    Item::TooLarge(message) => {
                        self.metrics.limit_hit("max_message_size");
                        Inbound::TooLarge {
                            flow: flow.clone(),
                            message,
                        }
                    }
                };
                if self
                    .inbound
                    .send((std::time::Instant::now(), item))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            let now = Instant::now();
            message_since = match message_since {
                _ if framer.is_idle(&buf) => None,
                Some(since) if !framed => Some(since),
                _ => Some(now),
            };
            let (deadline, limit) = [
                (first_by, "message_timeout"),
                (
                    message_since.map(|t| t + self.limits.message_timeout),
                    "message_timeout",
                ),
                (Some(last_read + self.limits.idle_timeout), "idle_timeout"),
            ]
            .into_iter()
            .filter_map(|(at, limit)| Some((at?, limit)))
            .min_by_key(|&(at, _)| at)
            .unwrap_or((now + self.limits.idle_timeout, "idle_timeout"));
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {
                        last_read = Instant::now();
                        message_since.get_or_insert(last_read);
                    }
                },
                () = tokio::time::sleep_until(deadline) => return Some(limit),
                () = close.notified() => return None,
            }
        }
    }
}

/// Writes what the loop queued, in order; a write error closes the connection.
async fn write<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    close: Arc<Notify>,
) {
    while let Some(bytes) = rx.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
        queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        // TLS buffers records: push them out once nothing else is waiting.
        if rx.is_empty() && writer.flush().await.is_err() {
            break;
        }
    }
    close.notify_one();
}

/// What the framer found at the front of the buffer.
enum Item {
    Frame(Frame),
    /// The head of a message longer than allowed; its body is being skipped.
    TooLarge(Message),
}

/// Frames a stream buffer without scanning it again on every read: until the header
/// section's empty line has arrived only the new octets are searched for it, and once the
/// head is parsed only the length matters.
#[derive(Default)]
struct Framer {
    /// Octets at the front of the buffer known not to complete a header section.
    scanned: usize,
    /// The whole length of the message at the front, once its head is complete.
    total: Option<usize>,
    /// Octets still to skip: the rest of a message too large to keep.
    skip: usize,
}

impl Framer {
    /// Whether nothing of a message is pending (line breaks are keep-alives, not a
    /// message begun).
    fn is_idle(&self, buf: &BytesMut) -> bool {
        buf.iter().all(|b| matches!(b, b'\r' | b'\n')) && self.skip == 0
    }

    fn next(&mut self, buf: &mut BytesMut, max: usize) -> Result<Option<Item>, ParseError> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        // Part of a keep-alive ping: a server must see "\r\n\r\n" split across reads as
        // one ping to answer (RFC 5626 §4.4.1), not as two pongs it ignores.
        if buf.len() < 4 && b"\r\n\r\n".starts_with(buf) {
            return Ok(None);
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        // Keep-alives (and stray line breaks) between messages.
        if first != b'\r' && first != b'\n' {
            match self.total {
                Some(total) if buf.len() < total => return Ok(None),
                Some(_) => {}
                None => {
                    let from = self.scanned.saturating_sub(2);
                    let window = &buf[from..];
                    let ended = memchr::memmem::find(window, b"\n\r\n").is_some()
                        || memchr::memmem::find(window, b"\n\n").is_some();
                    if !ended {
                        self.scanned = buf.len();
                        return if buf.len() > max {
                            Err(ParseError::MessageTooLarge)
                        } else {
                            Ok(None)
                        };
                    }
                    let Some((total, head)) = sip::stream_head(buf)? else {
                        // An empty line inside the start line's garbage, say: wait on.
                        self.scanned = buf.len();
                        return Ok(None);
                    };
                    if total > max {
                        self.skip = total;
                        self.scanned = 0;
                        return Ok(Some(Item::TooLarge(head)));
                    }
                    self.total = Some(total);
                    if buf.len() < total {
                        return Ok(None);
                    }
                }
            }
        }
        let Some((consumed, frame)) = sip::frame_stream(buf)? else {
            return Ok(None);
        };
        buf.advance(consumed);
        self.scanned = 0;
        self.total = None;
        Ok(Some(Item::Frame(frame)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the table itself consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:b@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
        Max-Forwards: 70\r\nTo: <sip:b@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\n\
        Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nbody";

    fn frames(chunks: &[&[u8]], max: usize) -> Vec<Result<String, ParseError>> {
        let mut framer = Framer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match framer.next(&mut buf, max) {
                    Ok(Some(Item::Frame(Frame::Message(m)))) => {
                        out.push(Ok(format!("message {}", m.as_bytes().len())));
                    }
                    Ok(Some(Item::Frame(f))) => out.push(Ok(format!("{f:?}"))),
                    Ok(Some(Item::TooLarge(m))) => {
                        out.push(Ok(format!(
                            "too large {}",
                            m.call_id().and_then(Result::ok).unwrap_or_default()
                        )));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_message_arriving_an_octet_at_a_time_frames_like_a_whole_one() {
        let whole = frames(&[INVITE, b"\r\n\r\n", INVITE], 65_535);
        let mut stream = INVITE.to_vec();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(INVITE);
        let octets: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(&octets, 65_535), whole);
        assert_eq!(whole.len(), 3, "{whole:?}");
    }

    #[test]
    fn a_message_over_the_limit_is_answered_by_its_head_and_skipped() {
        let mut stream = INVITE.to_vec();
        stream.extend_from_slice(INVITE);
        let max = INVITE.len() - 1;
        let out = frames(&stream.chunks(7).collect::<Vec<_>>(), max);
        assert_eq!(
            out,
            [Ok("too large c1".to_owned()), Ok("too large c1".to_owned())]
        );
    }

    #[test]
    fn a_head_that_never_ends_is_refused_at_the_limit() {
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut chunks: Vec<&[u8]> = vec![b"OPTIONS sip:b@example.com SIP/2.0\r\n"];
        chunks.extend(std::iter::repeat_n(&line[..], 100));
        let out = frames(&chunks, 1_000);
        assert_eq!(out, [Err(ParseError::MessageTooLarge)]);
    }
}
