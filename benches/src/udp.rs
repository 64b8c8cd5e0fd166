//! Fixtures for the perf gate's UDP scenarios: a pushpark UDP listener on loopback with
//! [`PEERS`] peers, its datagrams read and sent in batches as the server's loop does
//! ([`Transports::read_udp`] into [`UdpBuffers`], an [`UdpOutbox`] flushed once per turn).
//! The work to count is in [`UdpFixture::read_batch`] and [`UdpFixture::flush_batch`],
//! which are never inlined so that callgrind can count them alone: the system calls
//! themselves run in the kernel, which callgrind does not see, so what it counts is the
//! batching's own code and the parse.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use bytes::Bytes;
use pushpark::config::{Connections, Listener, Transport};
use pushpark::metrics::Metrics;
use pushpark::transport::{Flow, Inbound, TransportOptions, Transports, UdpBuffers, UdpOutbox};

/// How many peers send to the listener and are sent to.
pub const PEERS: usize = 16;
/// Datagrams a turn reads or sends, as the server's loop does at most.
pub const BATCH: usize = 64;

/// A UDP listener on loopback, its peers, and what the loop keeps from turn to turn.
pub struct UdpFixture {
    runtime: tokio::runtime::Runtime,
    transports: Transports,
    local: SocketAddr,
    peers: Vec<UdpSocket>,
    /// The peers' addresses, in the same order.
    peer_addrs: Vec<SocketAddr>,
    buffers: UdpBuffers,
    outbox: UdpOutbox<()>,
}

impl UdpFixture {
    /// A listener bound to a free port on 127.0.0.1, and its peers.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let transports = runtime.block_on(async {
            let listener = Listener {
                transport: Transport::Udp,
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                certificate: None,
                private_key: None,
                advertised_address: None,
            };
            let options = TransportOptions {
                connections: Connections::default(),
                trusted: Vec::new(),
                max_message: 65_535,
                metrics: Arc::new(Metrics::default()),
                cluster_tls: None,
            };
            let (inbound, _) = tokio::sync::mpsc::channel(1);
            Transports::bind(&[listener], options, inbound)
                .await
                .expect("a UDP listener")
        });
        let local = transports.local_addrs()[0].1;
        let peers: Vec<UdpSocket> = (0..PEERS)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a peer socket"))
            .collect();
        let peer_addrs = peers
            .iter()
            .map(|peer| peer.local_addr().expect("an address"))
            .collect();
        let outbox = UdpOutbox::new(&transports);
        Self {
            runtime,
            transports,
            local,
            peers,
            peer_addrs,
            buffers: UdpBuffers::new(BATCH),
            outbox,
        }
    }

    /// `datagram` arrives from the peers in turn, `count` times, and the listener reads
    /// them in batches of up to [`BATCH`]; says how many messages it handed on.
    pub fn receive(&mut self, datagram: &[u8], count: usize) -> usize {
        let mut handed = 0;
        let mut left = count;
        while left > 0 {
            let round = left.min(BATCH);
            for n in 0..round {
                self.peers[n % PEERS]
                    .send_to(datagram, self.local)
                    .expect("sent");
            }
            let mut read = 0;
            while read < round {
                let index = self.runtime.block_on(self.transports.udp_readable());
                read += self.read_batch(index);
            }
            handed += read;
            left -= round;
        }
        handed
    }

    /// One turn's read: the datagrams waiting, up to [`BATCH`].
    #[inline(never)]
    pub fn read_batch(&mut self, index: usize) -> usize {
        let mut handed = 0;
        self.transports
            .read_udp(index, BATCH, &mut self.buffers, |item| {
                if let Inbound::Message { message, .. } = item {
                    handed += usize::from(message.is_request());
                }
            });
        handed
    }

    /// `datagram` is sent to the peers in turn, `count` times, a turn of up to [`BATCH`]
    /// at a time; what the peers receive is left to their sockets (dropped once full).
    pub fn send(&mut self, datagram: &Bytes, count: usize) {
        let mut left = count;
        while left > 0 {
            let round = left.min(BATCH);
            for n in 0..round {
                let flow = Flow::udp(self.local, self.peer_addrs[n % PEERS]);
                let queued = self
                    .outbox
                    .push(&self.transports, &flow, datagram.clone(), ());
                if let Err(((), e)) = queued {
                    panic!("the flow is from the listener: {e}");
                }
            }
            self.flush_batch();
            while self.outbox.is_waiting() {
                self.runtime
                    .block_on(self.transports.udp_writable(&self.outbox));
                self.flush_batch();
            }
            left -= round;
        }
    }

    /// One turn's sends: what the outbox holds.
    #[inline(never)]
    pub fn flush_batch(&mut self) {
        self.outbox.flush(&self.transports, |(), e| {
            panic!("a datagram was refused: {e}")
        });
    }
}

impl Default for UdpFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datagram_is_read_and_every_one_sent_arrives() {
        let mut f = UdpFixture::new();
        let invite = crate::invite_1k();
        assert_eq!(f.receive(&invite, 200), 200);
        f.send(&Bytes::from(invite.clone()), 3 * PEERS);
        let mut buf = vec![0; 65_536];
        for peer in &f.peers {
            let wait = Some(std::time::Duration::from_secs(10));
            peer.set_read_timeout(wait).expect("a timeout");
            for _ in 0..3 {
                let (len, from) = peer.recv_from(&mut buf).expect("received");
                assert_eq!((len, from), (invite.len(), f.local));
            }
        }
    }
}
