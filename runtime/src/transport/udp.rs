//! UDP listeners: sockets with large buffers, read by the server's loop itself, and flows
//! named by their two addresses.
//!
//! The loop moves datagrams in batches, many per system call: on Linux `recvmmsg` reads a
//! turn's worth into a set of buffers kept from turn to turn ([`UdpBuffers`]), and
//! `sendmmsg` sends a turn's worth of answers to many peers at once (see [`super::outbox`]).
//! At a few hundred octets per SIP message, the system call is much of what a datagram
//! costs; elsewhere one datagram per call does the same job more slowly.
//!
//! Why not quinn-udp, which batches for QUIC: its socket set-up forbids IP fragmentation
//! (`IP_PMTUDISC_PROBE`, `IPV6_DONTFRAG`), and SIP over UDP needs it for messages over the
//! path MTU (an INVITE with a Record-Route set and a rich SDP often is); its sends batch
//! (GSO) only segments of one size to one destination, where the loop answers many peers;
//! and its receive offload (GRO) merges only same-sized datagrams of one peer, which SIP
//! messages seldom are. `recvmmsg` comes from nix, `sendmmsg` from rustix: each is the one
//! of the two whose interface for it needs no `unsafe` here.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket;

use super::FlowId;

/// The socket buffers a UDP listener asks for. The kernel's default (~200 KB) holds only
/// a few hundred datagrams, so a burst that arrives while the loop is busy is dropped and
/// comes back only through retransmissions, seconds later. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`; raise those to let it have all of it.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `address`, with [`UDP_SOCKET_BUFFER`]-sized buffers.
pub(super) fn bind(address: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: a smaller buffer than asked for still works.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    // The kernel's receive time of each datagram: how long it waited for the loop tells
    // when the server is overloaded (`sip.overload_delay`).
    #[cfg(target_os = "linux")]
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )
    .map_err(io::Error::from)?;
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// UDP flow ids have the top bit set; stream flows count up from 1 below it.
pub(super) fn flow_id(local: SocketAddr, peer: SocketAddr) -> FlowId {
    use std::hash::{Hash, Hasher};
    // A fixed-key hasher: the id must be the same for the same pair, run after run.
    let mut hasher = std::hash::DefaultHasher::new();
    (local, peer).hash(&mut hasher);
    FlowId(hasher.finish() | 1 << 63)
}

/// The largest datagram there is (a UDP length is 16 bits): a buffer this size takes any
/// datagram whole, so one larger than `max_message_size` can still be parsed and answered
/// 513.
const DATAGRAM_MAX: usize = 65_536;

/// The fewest datagrams a turn's first read asks for (see [`UdpBuffers::first_ask`]).
const FIRST_ASK_MIN: usize = 8;

/// The buffers the loop reads datagrams into, kept from turn to turn, and what the last
/// read put where.
pub struct UdpBuffers {
    /// `slots` buffers of [`DATAGRAM_MAX`] octets, one after the other. Only the pages a
    /// datagram lands on are ever touched.
    data: Vec<u8>,
    /// What the last read received: the buffer, the datagram's length, its source.
    received: Vec<(usize, usize, SocketAddr)>,
    /// How many datagrams the last turn took.
    last_turn: usize,
    /// When the kernel received the newest datagram of the turn (Linux: `SO_TIMESTAMPNS`).
    newest: Option<SystemTime>,
}

impl UdpBuffers {
    /// Room for `slots` datagrams (at least one) per read.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Self {
            data: vec![0; slots * DATAGRAM_MAX],
            received: Vec::with_capacity(slots),
            last_turn: 0,
            newest: None,
        }
    }

    /// How many datagrams one read can take.
    pub(super) fn slots(&self) -> usize {
        self.data.len() / DATAGRAM_MAX
    }

    /// How many datagrams a turn's first read asks for: twice what the last turn took, at
    /// least [`FIRST_ASK_MIN`]. Each slot offered to `recvmmsg` is prepared first (≈ 50
    /// instructions), so a quiet socket is not offered a whole batch every turn; a busy one
    /// still has its batch in one call, and a read that fills what it asked for is followed
    /// by one asking for the rest.
    pub(super) fn first_ask(&self) -> usize {
        (self.last_turn * 2).max(FIRST_ASK_MIN)
    }

    /// Notes how many datagrams this turn took, for the next turn's [`first_ask`](Self::first_ask),
    /// and says how long the newest of them waited in the socket's buffer: the least wait of
    /// the turn (none where the system gives no receive times).
    pub(super) fn took(&mut self, datagrams: usize) -> Option<Duration> {
        self.last_turn = datagrams;
        let newest = self.newest.take()?;
        Some(SystemTime::now().duration_since(newest).unwrap_or_default())
    }

    /// The datagrams the last read received, in the order they arrived, with their sources.
    pub(super) fn received(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.received.iter().map(|&(slot, len, peer)| {
            let start = slot * DATAGRAM_MAX;
            (&self.data[start..start + len], peer)
        })
    }
}

/// Reads up to `max` datagrams (no more than `buffers` has slots) waiting on `socket` in one
/// `recvmmsg`, and says how many it took: [`UdpBuffers::received`] has them. Nothing
/// waiting is a `WouldBlock` error.
///
/// A batch shorter than asked for means the socket's queue is empty, so the read tells
/// tokio the socket would block: it then waits for the next datagram instead of having the
/// loop make a call that finds nothing. (On our unconnected sockets without `IP_RECVERR`, an
/// ICMP error never cuts a batch short; if something else did, the datagrams behind it
/// would be read with the next one to arrive.)
#[cfg(target_os = "linux")]
pub(super) fn recv_batch(
    socket: &UdpSocket,
    buffers: &mut UdpBuffers,
    max: usize,
) -> io::Result<usize> {
    use nix::sys::socket::SockaddrStorage;
    use nix::sys::socket::{recvmmsg, ControlMessageOwned, MsgFlags, MultiHeaders};
    use nix::sys::time::TimeSpec;
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    let slots = max.min(buffers.slots());
    let UdpBuffers {
        data,
        received,
        newest,
        ..
    } = buffers;
    received.clear();
    let mut count = 0;
    let read = socket.try_io(Interest::READABLE, || {
        let cmsg = nix::cmsg_space!(TimeSpec);
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slots, Some(cmsg));
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = data
            .chunks_exact_mut(DATAGRAM_MAX)
            .take(slots)
            .map(|buf| [IoSliceMut::new(buf)])
            .collect();
        let messages = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::empty(),
            None,
        )?;
        for (slot, message) in messages.enumerate() {
            count = slot + 1;
            let peer = message.address.and_then(|address| {
                (address.as_sockaddr_in().map(|&a| SocketAddr::from(a)))
                    .or_else(|| address.as_sockaddr_in6().map(|&a| SocketAddr::from(a)))
            });
            let stamps = message.cmsgs().into_iter().flatten();
            for stamp in stamps {
                if let ControlMessageOwned::ScmTimestampns(at) = stamp {
                    let since_epoch = Duration::new(
                        u64::try_from(at.tv_sec()).unwrap_or_default(),
                        u32::try_from(at.tv_nsec()).unwrap_or_default(),
                    );
                    let at = SystemTime::UNIX_EPOCH + since_epoch;
                    *newest = Some(newest.map_or(at, |n| n.max(at)));
                }
            }
            // Every datagram on an IP socket has an IP source; one without is dropped.
            if let Some(peer) = peer {
                received.push((slot, message.bytes, peer));
            }
        }
        if count < slots {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && count > 0 => Ok(count),
        Err(e) => Err(e),
        Ok(()) => Ok(count),
    }
}

/// [`recv_batch`] where there is no `recvmmsg`: one datagram per system call.
#[cfg(not(target_os = "linux"))]
pub(super) fn recv_batch(
    socket: &UdpSocket,
    buffers: &mut UdpBuffers,
    max: usize,
) -> io::Result<usize> {
    let UdpBuffers { data, received, .. } = buffers;
    received.clear();
    for (slot, buf) in data.chunks_exact_mut(DATAGRAM_MAX).take(max).enumerate() {
        match socket.try_recv_from(buf) {
            Ok((len, peer)) => received.push((slot, len, peer)),
            // What stopped the batch is seen again at the next read, or was only an ICMP
            // error, which is skipped either way.
            Err(_) if !received.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(received.len())
}

/// A datagram for a UDP peer, and what to report if it cannot be sent.
pub(super) struct Datagram<T> {
    pub peer: SocketAddr,
    pub bytes: Bytes,
    pub tag: T,
}

/// Sends the datagrams of `batch`, in order, in one `sendmmsg`, and says how many went: on
/// an error the first one not sent is the one that failed, which the next call reports
/// (an error only comes back when the first datagram of a call fails).
#[cfg(target_os = "linux")]
pub(super) fn send_batch<T>(socket: &UdpSocket, batch: &[Datagram<T>]) -> io::Result<usize> {
    use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;
    use tokio::io::Interest;

    let addresses: Vec<SocketAddrAny> = batch.iter().map(|d| d.peer.into()).collect();
    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|d| [IoSlice::new(&d.bytes)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut headers: Vec<MMsgHdr<'_>> = addresses
        .iter()
        .zip(&slices)
        .zip(&mut controls)
        .map(|((address, slice), control)| MMsgHdr::new_with_addr(address, slice, control))
        .collect();
    socket.try_io(Interest::WRITABLE, || {
        Ok(sendmmsg(socket, &mut headers, SendFlags::empty())?)
    })
}

/// [`send_batch`] where there is no `sendmmsg`: one datagram per system call.
#[cfg(not(target_os = "linux"))]
pub(super) fn send_batch<T>(socket: &UdpSocket, batch: &[Datagram<T>]) -> io::Result<usize> {
    for (sent, datagram) in batch.iter().enumerate() {
        if let Err(e) = socket.try_send_to(&datagram.bytes, datagram.peer) {
            return if sent == 0 { Err(e) } else { Ok(sent) };
        }
    }
    Ok(batch.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_first_asks_for_twice_what_the_last_one_took() {
        let mut buffers = UdpBuffers::new(64);
        assert_eq!(buffers.first_ask(), FIRST_ASK_MIN, "a quiet socket: a few");
        buffers.took(1);
        assert_eq!(buffers.first_ask(), FIRST_ASK_MIN);
        buffers.took(20);
        assert_eq!(buffers.first_ask(), 40);
        buffers.took(64);
        assert_eq!(buffers.first_ask(), 128, "read_udp caps it at the slots");
    }

    #[test]
    fn a_udp_flow_keeps_its_id_and_never_takes_a_stream_one() {
        let local: SocketAddr = "127.0.0.1:5060".parse().expect("an address");
        let phone: SocketAddr = "192.0.2.7:40000".parse().expect("an address");
        let other: SocketAddr = "192.0.2.7:40001".parse().expect("an address");
        assert_eq!(flow_id(local, phone), flow_id(local, phone));
        assert_ne!(flow_id(local, phone), flow_id(local, other));
        assert!(
            flow_id(local, phone).0 >= 1 << 63,
            "stream ids count up from 1"
        );
    }
}
