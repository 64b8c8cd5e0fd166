//! Requests inside dialogs we record-routed, routed by the flow token of our Record-Route;
//! responses to requests forwarded without a transaction; and the dialogs through us, which
//! make a device count as awake.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushpark_model::DeviceId;
use tracing::warn;

use super::super::Node;
use super::*;
use crate::config::Transport;
use crate::sip::{parse_datagram_bytes, HeaderName, Message, SipUri, Uri, Via};
use crate::transport::Flow;
use crate::Map;

/// Dialogs record-routed through us, by Call-ID, with the device in them: a device in a
/// call is awake, however long its flow has been silent (specs/parking.md §3).
/// A dialog ends with a BYE through us; one whose BYE we never saw goes after a day.
#[derive(Default)]
pub(crate) struct Dialogs {
    pub(crate) by_call_id: Map<String, (DeviceId, Instant)>,
    pub(crate) per_device: Map<DeviceId, u32>,
}

/// How long a dialog whose BYE we never saw is taken to last.
pub(crate) const DIALOG_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Dialogs {
    pub(crate) fn open(&mut self, call_id: &str, device: DeviceId, now: Instant) {
        if self
            .by_call_id
            .insert(call_id.to_owned(), (device, now))
            .is_none()
        {
            *self.per_device.entry(device).or_default() += 1;
        }
    }

    pub(crate) fn close(&mut self, call_id: &str) {
        let Some((device, _)) = self.by_call_id.remove(call_id) else {
            return;
        };
        if let Some(n) = self.per_device.get_mut(&device) {
            *n -= 1;
            if *n == 0 {
                self.per_device.remove(&device);
            }
        }
    }

    /// A dialog through us is up with `device`.
    pub fn with(&self, device: DeviceId) -> bool {
        self.per_device.contains_key(&device)
    }

    /// Forgets dialogs older than a day.
    pub fn prune(&mut self, now: Instant) {
        let old: Vec<String> = self
            .by_call_id
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) > DIALOG_MAX_AGE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.close(&id);
        }
    }
}

/// Where a SIP URI leads: its address and transport (numeric hosts only; pushpark routes
/// dialogs of devices it serves, which register with their addresses). A `sips:` URI or
/// `transport=tls` leads over TLS (RFC 5630), to port 5061 unless one is given; a transport
/// pushpark does not speak leads nowhere.
pub(crate) fn uri_target(uri: &SipUri<'_>) -> Option<(Transport, SocketAddr)> {
    let ip: IpAddr = uri.host.ip()?;
    let transport = match uri.transport() {
        _ if uri.secure => Transport::Tls,
        Some(t) => Transport::from_token(t)?,
        None => Transport::Udp,
    };
    let default_port = if transport == Transport::Tls {
        5061
    } else {
        5060
    };
    Some((
        transport,
        SocketAddr::new(ip, uri.port.unwrap_or(default_port)),
    ))
}

impl Node {
    /// The flow of the device in the request's dialog, when the flow the dialog began on is
    /// gone: the device connected again (a TCP connection cut, an app woken on a new
    /// one) and its dialog follows it, where RFC 5626 §5.3 would answer 430.
    fn device_in_dialog_flow(&self, arrived: &Flow, request: &Message) -> Option<Flow> {
        let call_id = request.call_id()?.ok()?;
        let &(device, _) = self.dialogs.by_call_id.get(call_id)?;
        self.bindings
            .flow(device)
            .filter(|f| f.id != arrived.id && self.is_open(f))
            .cloned()
    }

    /// Forwards a request inside a dialog we record-routed: over the other side's flow
    /// when the flow token names one, else to its next hop's address if that may be sent
    /// to ([`Targets`](super::Targets)). A token that is not ours for this dialog gets 403.
    pub(super) fn route_in_dialog(&mut self, arrived: &Flow, request: Message) {
        let is_ack = request.method().is_some_and(|m| m.as_str() == "ACK");
        let refuse = |node: &mut Node, reason: &str| {
            warn!(
                "security: route refused from {} ({}): {reason}",
                arrived.peer.ip(),
                request.method().map_or("request", |m| m.as_str())
            );
            if !is_ack {
                node.respond_stateless(arrived, &request, 403, reason);
            }
        };
        let token = match request.routes().next() {
            Some(Ok(route)) => route
                .uri
                .as_sip()
                .and_then(|uri| uri.user)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        let call_id = request.call_id().and_then(Result::ok).unwrap_or_default();
        let open_flow = |node: &Node, id| {
            node.flows
                .get(&id)
                .map(|(flow, _)| flow.clone())
                .filter(|f| node.is_open(f))
        };
        // A dialog's token, or the Path of a binding another node of the cluster sends the
        // device's INVITE (and its CANCEL and ACK) by.
        let (out_flow, initial) = match self.route_key.verify(&token, call_id) {
            Some((a, b)) => {
                let other = if arrived.id == a { b } else { a };
                let out = open_flow(self, other)
                    .or_else(|| self.device_in_dialog_flow(arrived, &request));
                (out, false)
            }
            None => {
                let Some(device_flow) = self.route_key.verify_path(&token, self.boot) else {
                    return refuse(self, "Invalid route token");
                };
                let Some(out) = open_flow(self, device_flow) else {
                    // RFC 5626 §5.3: the node that sent it falls back to a push.
                    if !is_ack {
                        self.respond_stateless(arrived, &request, 430, "Flow Failed");
                    }
                    return;
                };
                let tagged = matches!(request.to_header(), Some(Ok(to)) if to.tag().is_some());
                let invite = request.method().is_some_and(|m| m.as_str() == "INVITE");
                (Some(out), invite && !tagged)
            }
        };
        if request.method().is_some_and(|m| m.as_str() == "BYE") {
            if let Some(Ok(call_id)) = request.call_id() {
                self.dialogs.close(call_id);
            }
        }
        let max_forwards = request.max_forwards_or_default().unwrap_or(70);
        if max_forwards == 0 {
            if !is_ack {
                self.respond_stateless(arrived, &request, 483, "Too Many Hops");
            }
            return;
        }
        let Some(Ok(top)) = request.top_via() else {
            return;
        };
        let Some(back_to) = reply_target(&top) else {
            return;
        };
        let branch = self.route_key.branch(
            STATELESS,
            top.branch().unwrap_or_default(),
            top.transport,
            back_to,
        );
        let own_routes = self.own_routes(&request);
        let next_target = match request.routes().nth(own_routes) {
            Some(Ok(next)) => next.uri.as_sip().and_then(uri_target),
            _ => match request.request_uri() {
                Some(Ok(Uri::Sip(uri))) => uri_target(&uri),
                _ => None,
            },
        };
        let (via_local, send) = match (&out_flow, next_target) {
            (Some(flow), _) => (flow.local, Some((flow.clone(), None))),
            (None, Some((transport, addr))) => (
                arrived.local,
                Some((arrived.clone(), Some((transport, addr)))),
            ),
            (None, None) => (arrived.local, None),
        };
        let Some((flow, direct)) = send else {
            if !is_ack {
                self.respond_stateless(arrived, &request, 404, "No route");
            }
            return;
        };
        if let Some((_, addr)) = direct.filter(|&(_, addr)| !self.targets.allow(addr)) {
            return refuse(self, &format!("Forbidden target {addr}"));
        }
        let transport = direct.map_or(flow.transport, |(t, _)| t);
        let via = format!(
            "SIP/2.0/{transport} {};branch={branch}",
            self.sent_by(transport, via_local)
        );
        let mut forward = request
            .forward()
            .pop_routes(own_routes)
            .push_via(&via)
            .max_forwards(max_forwards - 1);
        // An INVITE that starts a dialog through the cluster: in-dialog requests come back
        // through us to the device's flow, and to the node that sent it.
        let record_route;
        if initial {
            let token = self.route_key.token(arrived.id, flow.id, call_id);
            record_route = self.record_route(&token, &flow, arrived);
            forward = forward.record_route(&record_route);
        }
        let bytes: Bytes = forward.to_bytes().into();
        match direct {
            None => self.send(&flow, bytes),
            Some((transport, addr)) => self.send_to(transport, addr, bytes),
        }
    }

    /// A response to a request we forwarded without a transaction: our Via off, and on to
    /// the next Via's address (RFC 3261 §18.2.2: `received` and `rport` first), if our
    /// branch says we forwarded a request from there.
    pub(super) fn forward_response_statelessly(&mut self, flow: &Flow, response: Message) {
        let mut vias = response.vias();
        let (Some(Ok(ours)), Some(Ok(next))) = (vias.next(), vias.next()) else {
            return;
        };
        let Some(addr) = reply_target(&next) else {
            return;
        };
        let ours = self.route_key.verify_branch(
            ours.branch().unwrap_or_default(),
            STATELESS,
            next.branch().unwrap_or_default(),
            next.transport,
            addr,
        );
        if !ours {
            return warn!(
                "security: route refused from {} (response): forged branch",
                flow.peer.ip()
            );
        }
        let bytes: Bytes = response.forward().pop_via().to_bytes().into();
        let Some(transport) = Transport::from_token(next.transport) else {
            return;
        };
        if !transport.is_stream() {
            return self.send_to(Transport::Udp, addr, bytes);
        }
        // Over TCP or TLS, back through the connection the request came on if it is still
        // open (RFC 3261 §18.2.2).
        let existing = self
            .flows
            .values()
            .map(|(flow, _)| flow)
            .find(|f| f.transport == transport && f.peer == addr && self.is_open(f))
            .cloned();
        match existing {
            Some(flow) => self.send(&flow, bytes),
            None => self.send_to(transport, addr, bytes),
        }
    }
}

/// Where the response to a request with this Via goes (RFC 3261 §18.2.2, RFC 3581): its
/// `received` address, else its host, at its `rport`, else its port.
fn reply_target(via: &Via<'_>) -> Option<SocketAddr> {
    let ip = via.received().or_else(|| via.host.ip())?;
    let port = match via.rport() {
        Some(Some(port)) => port,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// RFC 3261 §18.2.1 and RFC 3581: the top Via records the address the request really came
/// from (`received`) and, when the client asked with `rport`, its port, so responses and
/// requests in the dialog find their way back through NAT.
pub(crate) fn with_received(flow: &Flow, request: Message) -> Message {
    let Some(Ok(via)) = request.top_via() else {
        return request;
    };
    let wants_port = matches!(via.rport(), Some(None));
    let moved = via.host.ip() != Some(flow.peer.ip());
    if !wants_port && !moved {
        return request;
    }
    let Some(Ok(top)) = request.elements(HeaderName::Via).next() else {
        return request;
    };
    let mut value = String::with_capacity(top.len() + 40);
    for (i, param) in top.split(';').enumerate() {
        let name = param.split('=').next().unwrap_or_default().trim();
        let replaced = name.eq_ignore_ascii_case("received")
            || (wants_port && name.eq_ignore_ascii_case("rport"));
        if i > 0 && replaced {
            continue;
        }
        if i > 0 {
            value.push(';');
        }
        value.push_str(param);
    }
    // RFC 3261's grammar writes an IPv6 `received` without brackets.
    let _ = write!(value, ";received={}", flow.peer.ip());
    if wants_port {
        let _ = write!(value, ";rport={}", flow.peer.port());
    }
    match request.with_top_via(&value) {
        Some(edited) => edited,
        None => {
            let bytes = request.forward().pop_via().push_via(&value).to_bytes();
            parse_datagram_bytes(bytes.into()).unwrap_or(request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse_datagram;
    use crate::transport::FlowId;

    fn from(peer: &str) -> Flow {
        Flow {
            id: FlowId(1),
            transport: Transport::Udp,
            local: "127.0.0.1:5060".parse().expect("an address"),
            peer: peer.parse().expect("an address"),
        }
    }

    fn top_via_after(via: &str, peer: &str) -> String {
        let request = format!(
            "OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP edge;branch=z9hG4bKe\r\n\
             Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let message = parse_datagram(request.as_bytes()).expect("parses");
        let edited = with_received(&from(peer), message);
        let vias: Vec<&[u8]> = edited.values(HeaderName::Via).collect();
        assert_eq!(vias.len(), 2, "the other Via stays");
        String::from_utf8(vias[0].to_vec()).expect("text")
    }

    #[test]
    fn rport_is_filled_and_a_stale_received_replaced() {
        assert_eq!(
            top_via_after(
                "SIP/2.0/UDP 10.0.0.7:5060;received=10.9.9.9;branch=z9hG4bK1;RPORT",
                "192.0.2.9:40000"
            ),
            "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK1;received=192.0.2.9;rport=40000"
        );
    }

    #[test]
    fn without_rport_only_received_is_added_and_a_filled_rport_kept() {
        assert_eq!(
            top_via_after(
                "SIP/2.0/UDP 10.0.0.7:5060;rport=5062;branch=z9hG4bK1",
                "192.0.2.9:40000"
            ),
            "SIP/2.0/UDP 10.0.0.7:5060;rport=5062;branch=z9hG4bK1;received=192.0.2.9"
        );
    }

    #[test]
    fn a_via_that_is_already_right_is_left_alone() {
        let via = "SIP/2.0/UDP 192.0.2.9:40000;branch=z9hG4bK1";
        assert_eq!(top_via_after(via, "192.0.2.9:40000"), via);
    }
}
