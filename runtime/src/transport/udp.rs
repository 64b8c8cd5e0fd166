//! UDP listeners: sockets with large buffers, read by the server's loop itself, and flows
//! named by their two addresses.

use std::io;
use std::net::SocketAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
