//! The nodes of a cluster (bindings on Redis): what this node learns of REGISTERs stored by
//! the others, how it reaches their devices, and the Path its own bindings carry.
//!
//! - **Path** (RFC 3327): a REGISTER this node stores carries, with its binding, a route
//!   to the flow it came over: `<sip:pp-f<flow>.<boot>-<mac>@<this node>;transport=tcp;lr>`
//!   (`transport=tls` through its TLS listener when the cluster has an authority,
//!   `[cluster] ca_file`), a path token only nodes sharing the cluster's secret can make,
//!   for this run only.
//! - **Notices** ([`crate::store::Notice`]): a REGISTER stored by another node reaches this
//!   one through the store's stream. The node takes the AOR's bindings from it, tells its
//!   core of the devices removed, and of those that registered: the core delivers their
//!   parked calls as it would for a REGISTER here.
//! - **Peers**: such a device is reached through the node its Path names, over a TCP (or
//!   TLS) connection this node opens to it and keeps. Its INVITE carries the Path as its Route;
//!   that node relays it over the device's flow (or answers 430 if the flow is gone, and
//!   the core falls back to a push). Until the connection is up, the devices waiting for
//!   it are not reported registered.
//! - **Facts**: the core is told of a device registered elsewhere as of a UDP flow heard
//!   when the notice came (specs/parking.md §10): whether it still listens is the core's
//!   judgement, as for any datagram flow.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushpark_model::{DeviceId, Event};
use tracing::debug;

use super::registrar::device;
use super::{Destination, Node, Transmit};
use crate::config::{Backend, Transport};
use crate::store::{Applied, Notice};
use crate::transport::Flow;
use crate::Map;

/// How long a connection to a peer node may take before another notice tries again.
const CONNECT_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Another node of the cluster: how to reach it, and where.
type Peer = (Transport, SocketAddr);

/// The connections to the other nodes of the cluster, by the address their Paths name.
#[derive(Default)]
pub(crate) struct Peers {
    by_addr: Map<SocketAddr, Link>,
}

/// The connection to another node.
enum Link {
    /// A connection was asked for at `since`; these devices wait for it.
    Connecting {
        since: Instant,
        waiting: Vec<DeviceId>,
    },
    /// Connected over this flow.
    Up(Flow),
}

impl Node {
    /// A REGISTER another node of the cluster stored (read from the store's stream).
    pub fn handle_notice(&mut self, now: Instant, notice: Notice) {
        self.advance(now);
        let Notice {
            id,
            aor,
            bindings,
            removed,
            written,
            ..
        } = notice;
        // A REGISTER stored here since (or a later notice read) already brought a newer
        // state of the AOR: this one is older, and must not undo it.
        if !self.bindings.newer(&aor, &id) {
            return debug!("registration notice {id} for {aor}: older than what we know");
        }
        let applied = Applied {
            bindings,
            removed,
            version: Some(id),
        };
        self.take_bindings(&aor, &applied);
        for id in written {
            let device = device(id);
            // Its flow is on the other node now, not on one of ours.
            self.bindings.unbind_flow(device);
            let peer = (applied.bindings.iter().find(|b| b.id == id))
                .and_then(|b| b.path.as_deref())
                .and_then(|path| self.peer_of(path));
            match peer {
                Some(peer) => self.reach_through(now, device, peer),
                None => debug!("{device} registered on another node without a Path we can use"),
            }
        }
    }

    /// Reports `device` registered once the connection to `peer` is up, asking for one if
    /// there is none.
    fn reach_through(&mut self, now: Instant, device: DeviceId, (transport, peer): Peer) {
        let up = match self.peers.by_addr.get(&peer) {
            Some(Link::Up(flow)) if self.is_open(flow) => Some(flow.clone()),
            _ => None,
        };
        if let Some(flow) = up {
            return self.registered_through(device, flow);
        }
        let connect = match self.peers.by_addr.get_mut(&peer) {
            Some(Link::Connecting { since, waiting }) => {
                if !waiting.contains(&device) {
                    waiting.push(device);
                }
                let again = now.saturating_duration_since(*since) >= CONNECT_AGAIN_AFTER;
                if again {
                    *since = now;
                }
                again
            }
            _ => {
                self.peers.by_addr.insert(
                    peer,
                    Link::Connecting {
                        since: now,
                        waiting: vec![device],
                    },
                );
                true
            }
        };
        if connect {
            // A keep-alive (RFC 5626 §4.4.1) is all it carries: the flow is what matters.
            self.transmits.push_back(Transmit {
                destination: Destination::Address(transport, peer),
                bytes: Bytes::from_static(b"\r\n\r\n"),
                key: None,
            });
        }
    }

    /// A connection this node opened is up: a peer's, devices waiting for it are reached.
    pub(crate) fn on_connected(&mut self, flow: Flow) {
        self.flows.insert(flow.id, (flow.clone(), self.instant()));
        let Some(Link::Connecting { waiting, .. }) = self.peers.by_addr.remove(&flow.peer) else {
            return;
        };
        self.peers.by_addr.insert(flow.peer, Link::Up(flow.clone()));
        for device in waiting {
            // Still bound through that peer: the notice that sent it there is the last.
            let through = (self.bindings.get(device))
                .and_then(|b| b.path.as_deref())
                .and_then(|path| self.peer_of(path));
            if through == Some((flow.transport, flow.peer)) {
                self.registered_through(device, flow.clone());
            }
        }
    }

    fn registered_through(&mut self, device: DeviceId, flow: Flow) {
        let Some(aor) = self.bindings.get(device).map(|b| b.aor.clone()) else {
            return;
        };
        self.bindings.bind_remote(device, flow, self.instant());
        let aor = self.bindings.aor_id(&aor);
        self.feed(Event::DeviceRegistered { aor, device });
    }

    /// The node a Path names and how to reach it, unless it is this node (a Path of its
    /// own from an earlier run names no flow any more).
    fn peer_of(&self, path: &str) -> Option<Peer> {
        let uri = path.trim().strip_prefix("<sip:")?.split('>').next()?;
        let mut parts = uri.split_once('@')?.1.split(';');
        let host_port = parts.next()?;
        let transport = match parts.find_map(|p| p.strip_prefix("transport="))? {
            "tls" => Transport::Tls,
            "tcp" => Transport::Tcp,
            _ => return None,
        };
        let ours = (self.addrs.iter().filter(|(t, _)| t.is_stream()))
            .any(|&(t, local)| self.sent_by(t, local) == host_port);
        if ours {
            return None;
        }
        Some((transport, host_port.parse().ok()?))
    }

    /// The Path of a binding registered over `flow`, in a cluster: a route to that flow
    /// through this node's TCP listener. `None` on a single node, or with no TCP listener
    /// (then other nodes reach the device by push only).
    pub(crate) fn path_for(&self, flow: &Flow) -> Option<String> {
        if self.config.store.backend != Backend::Redis {
            return None;
        }
        let over = match self.config.cluster.ca_file {
            Some(_) => Transport::Tls,
            None => Transport::Tcp,
        };
        let &(_, local) = self.addrs.iter().find(|(t, _)| *t == over)?;
        let token = self.route_key.path_token(flow.id, self.boot);
        Some(format!(
            "<sip:{token}@{}{};lr>",
            self.sent_by(over, local),
            over.uri_param()
        ))
    }
}
