//! The loop's outgoing UDP datagrams: a turn's worth is collected here, in the order the
//! node produced it, and sent with as few system calls as the platform allows (one
//! `sendmmsg` per [`SEND_BATCH`] datagrams of a socket on Linux).
//!
//! A datagram is never dropped nor overtaken here: when a socket's send buffer is full, what
//! is left of its queue waits, and datagrams queued meanwhile line up behind it, until the
//! loop sees the socket writable again ([`Transports::udp_writable`]). (Sending the rest
//! from a task of its own, as each datagram once did, could reorder one peer's messages.)
//! A datagram the system refuses (no route, too large) is handed back with its tag, so the
//! node hears of the failed send as it did before batching.

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use tracing::debug;

use super::udp::{self, Datagram};
use super::{Flow, SendError, Transports};
use crate::config::Transport;

/// The most datagrams handed to the system in one call.
const SEND_BATCH: usize = 64;

/// The datagrams waiting to go out over each UDP socket of a [`Transports`], each with a
/// tag of `T` handed back if it cannot be sent.
pub struct UdpOutbox<T> {
    /// One per UDP socket, in the order [`Transports`] has them.
    queues: Vec<Queue<T>>,
}

struct Queue<T> {
    datagrams: VecDeque<Datagram<T>>,
    /// Its socket's buffer was full: the rest waits until the socket is writable.
    waiting: bool,
}

impl<T> UdpOutbox<T> {
    /// An empty outbox for the UDP sockets of `transports`.
    pub fn new(transports: &Transports) -> Self {
        let queues = transports
            .inner
            .udp
            .iter()
            .map(|_| Queue {
                datagrams: VecDeque::new(),
                waiting: false,
            })
            .collect();
        Self { queues }
    }

    /// Queues `bytes` for the peer of `flow` (a UDP flow), to go out at the next
    /// [`flush`](Self::flush). A flow from an address no socket of ours is bound to is
    /// refused at once, with its tag.
    pub fn push(
        &mut self,
        transports: &Transports,
        flow: &Flow,
        bytes: Bytes,
        tag: T,
    ) -> Result<(), (T, SendError)> {
        let socket = (flow.transport == Transport::Udp)
            .then(|| {
                transports
                    .inner
                    .udp
                    .iter()
                    .position(|(local, _)| *local == flow.local)
            })
            .flatten();
        match socket.and_then(|index| self.queues.get_mut(index)) {
            Some(queue) => {
                queue.datagrams.push_back(Datagram {
                    peer: flow.peer,
                    bytes,
                    tag,
                });
                Ok(())
            }
            None => Err((tag, SendError::NoListener(flow.transport))),
        }
    }

    /// Sends what is queued, each socket's datagrams in order. A socket whose buffer is full
    /// keeps the rest for later; a datagram the system refuses is handed to `failed` with its
    /// tag, and those behind it still go.
    pub fn flush(&mut self, transports: &Transports, mut failed: impl FnMut(T, io::Error)) {
        for (queue, (local, socket)) in self.queues.iter_mut().zip(&transports.inner.udp) {
            if queue.datagrams.is_empty() {
                continue;
            }
            queue.flush(
                |batch| udp::send_batch(socket, batch),
                |datagram, e| {
                    debug!("UDP {local} -> {}: send failed: {e}", datagram.peer);
                    failed(datagram.tag, e);
                },
            );
        }
    }

    /// Whether some datagrams wait for their socket to have room.
    pub fn is_waiting(&self) -> bool {
        self.queues.iter().any(|queue| queue.waiting)
    }

    /// Whether the datagrams of UDP socket `index` wait for it to have room.
    pub(super) fn is_waiting_on(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|queue| queue.waiting)
    }
}

impl<T> Queue<T> {
    /// Hands the datagrams to `send` in batches, in order, until none is left or `send`
    /// would block. `send` says how many of a batch it sent: those are done; the first one
    /// left is either sent by the next call or refused by it (an error then is about that
    /// datagram, handed to `failed`, and the rest go on).
    fn flush(
        &mut self,
        mut send: impl FnMut(&[Datagram<T>]) -> io::Result<usize>,
        mut failed: impl FnMut(Datagram<T>, io::Error),
    ) {
        self.waiting = false;
        while !self.datagrams.is_empty() {
            let queued = self.datagrams.make_contiguous();
            let batch = queued.len().min(SEND_BATCH);
            match send(&queued[..batch]) {
                Ok(sent) => {
                    self.datagrams.drain(..sent.min(batch));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.waiting = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Some(datagram) = self.datagrams.pop_front() {
                        failed(datagram, e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn peer(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 40_000 + n))
    }

    fn queue(count: u16) -> Queue<u16> {
        let datagrams = (0..count)
            .map(|n| Datagram {
                peer: peer(n % 7),
                bytes: Bytes::from(format!("message {n}")),
                tag: n,
            })
            .collect();
        Queue {
            datagrams,
            waiting: false,
        }
    }

    #[test]
    fn a_flush_sends_everything_in_order_in_batches() {
        let mut q = queue(150);
        let mut calls = Vec::new();
        let mut wire = Vec::new();
        q.flush(
            |batch| {
                calls.push(batch.len());
                wire.extend(batch.iter().map(|d| d.tag));
                Ok(batch.len())
            },
            |_, e| panic!("nothing fails: {e}"),
        );
        assert_eq!(calls, [64, 64, 22], "{SEND_BATCH} a call");
        assert_eq!(wire, (0..150).collect::<Vec<_>>());
        assert!(q.datagrams.is_empty() && !q.waiting);
    }

    #[test]
    fn a_full_buffer_keeps_the_rest_in_order_for_the_next_flush() {
        let mut q = queue(100);
        let mut wire = Vec::new();
        // The buffer takes 10, then 5 of the next batch, then is full.
        let mut room = [10usize, 5, 0].into_iter();
        let mut send = |batch: &[Datagram<u16>]| match room.next() {
            Some(0) | None => Err(io::ErrorKind::WouldBlock.into()),
            Some(n) => {
                let n = n.min(batch.len());
                wire.extend(batch[..n].iter().map(|d| d.tag));
                Ok(n)
            }
        };
        q.flush(&mut send, |_, e| panic!("nothing fails: {e}"));
        assert!(q.waiting, "waits for room");
        assert_eq!(q.datagrams.len(), 85);
        // Meanwhile the node queues more; they line up behind.
        q.datagrams.push_back(Datagram {
            peer: peer(0),
            bytes: Bytes::from_static(b"later"),
            tag: 100,
        });
        q.flush(
            |batch| {
                wire.extend(batch.iter().map(|d| d.tag));
                Ok(batch.len())
            },
            |_, e| panic!("nothing fails: {e}"),
        );
        assert!(!q.waiting && q.datagrams.is_empty());
        assert_eq!(
            wire,
            (0..=100).collect::<Vec<_>>(),
            "none lost, none reordered"
        );
    }

    #[test]
    fn a_refused_datagram_is_reported_and_those_behind_it_still_go() {
        let mut q = queue(20);
        let mut wire = Vec::new();
        let mut refused = Vec::new();
        q.flush(
            |batch| {
                // Datagram 7 is refused (as sendmmsg does: those before it are sent, and
                // the call that starts with it fails).
                let n = batch.iter().take_while(|d| d.tag != 7).count();
                if n == 0 {
                    return Err(io::Error::other("message too long"));
                }
                wire.extend(batch[..n].iter().map(|d| d.tag));
                Ok(n)
            },
            |datagram, _| refused.push(datagram.tag),
        );
        assert_eq!(refused, [7]);
        assert_eq!(wire, (0..20).filter(|&n| n != 7).collect::<Vec<_>>());
        assert!(q.datagrams.is_empty());
    }
}
