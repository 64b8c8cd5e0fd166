//! The proxy: INVITE, CANCEL, ACK, BYE and the other requests, and the responses of the
//! branches it forwards. It turns SIP into core events and carries out the core's effects
//! as SIP: pushes, forwarded INVITEs, CANCELs, relayed and generated responses.
//!
//! Dialogs are record-routed with a flow token (RFC 5626 §5.3.1 in spirit): the
//! Record-Route user part names the caller's flow and the device's flow, so a BYE from
//! either side goes back over the other side's flow even when the device sits behind NAT.
//! The token is MACed over those flows and the dialog's Call-ID ([`route`]): a forged one,
//! or one from another dialog, gets 403, and the proxy sends nothing anywhere for it.
//!
//! | module | what lives there |
//! |---|---|
//! | this one | dispatch: a request or response from a peer to the code that handles it |
//! | [`call`] | calls and their branches: INVITE, CANCEL, branch responses, the core's effects as SIP |
//! | [`dialog`] | in-dialog requests routed by our flow token, stateless responses, dialogs through us |
//! | [`route`] | the MACs of route tokens and stateless branches, and where requests may not go |

mod call;
mod dialog;
mod route;

pub(crate) use self::call::{Branches, Calls};
pub(crate) use self::dialog::Dialogs;
pub(crate) use self::route::{RouteKey, Targets};

use std::net::SocketAddr;

use bytes::Bytes;
use pushpark_model::Event;
use tracing::debug;

use self::dialog::with_received;
use super::{Node, Outgoing};
use crate::config::Transport;
use crate::sip::{
    default_reason, parse_datagram_bytes, validate_request, HeaderName, Message, Method, NameAddr,
    RequestBuilder, Uri,
};
use crate::transaction::{
    self, Key, RequestOutcome, ResponseOutcome, Timer as TxTimer, TuEvent, MAGIC_COOKIE,
};
use crate::transport::Flow;

/// The `Retry-After` of a request refused because the server is overloaded, in seconds.
const OVERLOAD_RETRY_AFTER: &str = "5";

/// Branches of requests forwarded without a transaction (in-dialog requests).
const STATELESS: &str = "z9hG4bKpps";
/// Branches of INVITEs and CANCELs the proxy sends on behalf of a call.
const STATEFUL: &str = "z9hG4bKppc";

/// The ACK an INVITE client transaction sends for a 3xx–6xx (RFC 3261 §17.1.1.3): the
/// INVITE's Request-URI, top Via, From, Call-ID and Route, the response's To.
pub(crate) fn ack_for_non_2xx(invite: &Outgoing, response: &Outgoing) -> Outgoing {
    let bytes = match (
        parse_datagram_bytes(invite.bytes.clone()),
        parse_datagram_bytes(response.bytes.clone()),
    ) {
        (Ok(invite), Ok(response)) => {
            let seq = invite.cseq().and_then(Result::ok).map_or(1, |c| c.seq);
            let ack = in_transaction(&invite, "ACK", seq)
                .header("To", raw(&response, HeaderName::To).unwrap_or_default());
            let ack = invite.values(HeaderName::Route).fold(ack, |ack, route| {
                ack.header("Route", &String::from_utf8_lossy(route))
            });
            Bytes::from(ack.to_bytes())
        }
        _ => Bytes::new(),
    };
    Outgoing {
        flow: invite.flow.clone(),
        bytes,
    }
}

/// The start of a request of the INVITE transaction `invite` (its CANCEL, the ACK of a
/// non-2xx, RFC 3261 §9.1, §17.1.1.3): its Request-URI, top Via, From and Call-ID, and CSeq
/// `seq` with `method`; the caller adds To (and Route, Reason).
fn in_transaction(invite: &Message, method: &str, seq: u32) -> RequestBuilder {
    let mut request = RequestBuilder::new(method, invite.request_uri_str().unwrap_or_default())
        .header("Via", raw(invite, HeaderName::Via).unwrap_or_default());
    // RFC 3261 §9.1, §17.1.1.3: the INVITE's Route (a Path through a node of the cluster).
    if let Some(route) = raw(invite, HeaderName::Route) {
        request = request.header("Route", route);
    }
    request
        .header("Max-Forwards", "70")
        .header("From", raw(invite, HeaderName::From).unwrap_or_default())
        .header(
            "Call-ID",
            raw(invite, HeaderName::CallId).unwrap_or_default(),
        )
        .header("CSeq", &format!("{seq} {method}"))
}

fn raw(message: &Message, name: HeaderName) -> Option<&str> {
    message
        .first(name)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn format_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

impl Node {
    /// How our Via and Record-Route name the listener a message leaves from over
    /// `transport` at `local`: its `advertised_address` if it has one, else the address.
    pub(crate) fn sent_by(&self, transport: Transport, local: SocketAddr) -> String {
        // A connection this node opened (to a node of its cluster) leaves from an ephemeral
        // port: what is named is our listener, where the peer reaches us.
        let listening =
            (self.addrs.iter()).any(|&(t, a)| t == transport && a.port() == local.port());
        let local = match self
            .addrs
            .iter()
            .find(|&&(t, a)| t == transport && a.is_ipv4() == local.is_ipv4())
        {
            Some(&(_, listener)) if transport.is_stream() && !listening => listener,
            _ => local,
        };
        self.config
            .listen
            .iter()
            .map(|l| l.as_ref())
            .find(|l| {
                l.transport == transport
                    && l.address.port() == local.port()
                    && (l.address.ip() == local.ip() || l.address.ip().is_unspecified())
            })
            .and_then(|l| l.advertised_address.clone())
            .unwrap_or_else(|| format_addr(local))
    }
}

/// The transaction key of a request: its top Via's branch and sent-by, and its method.
fn server_key(request: &Message) -> Result<(Key, transaction::Method), &'static str> {
    let via = match request.top_via() {
        Some(Ok(via)) => via,
        _ => return Err("Malformed Via"),
    };
    let sent_by = match via.port {
        Some(port) => format!("{}:{port}", via.host_raw),
        None => via.host_raw.to_owned(),
    };
    let branch = match via.branch() {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => branch.to_owned(),
        // RFC 3261 §17.2.3: a request from an RFC 2543 element has no usable branch; it is
        // matched by Call-ID, From tag, CSeq number and top Via instead, which an ACK
        // shares with its INVITE.
        other => {
            let from_tag = request
                .from_header()
                .and_then(Result::ok)
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default();
            let call_id = request.call_id().and_then(Result::ok).unwrap_or_default();
            let seq = request.cseq().and_then(Result::ok).map_or(0, |c| c.seq);
            let seed = format!(
                "{call_id}|{from_tag}|{seq}|{sent_by}|{}",
                other.unwrap_or_default()
            );
            format!("{MAGIC_COOKIE}-2543-{:x}", fnv(&seed))
        }
    };
    let method = transaction::Method::from_token(request.method().map_or("", |m| m.as_str()));
    Key::server(&branch, &sent_by, &method)
        .map(|key| (key, method))
        .map_err(|_| "Malformed Via")
}

fn tx_transport(flow: &Flow) -> transaction::Transport {
    if flow.transport.is_stream() {
        transaction::Transport::Reliable
    } else {
        transaction::Transport::Unreliable
    }
}

impl Node {
    /// A request from any peer: checked, matched to its transaction, then handled.
    pub(crate) fn on_request(&mut self, flow: Flow, request: Message) {
        if let Err(rejection) = validate_request(&request) {
            return self.respond_stateless(&flow, &request, rejection.code, &rejection.reason);
        }
        let request = with_received(&flow, request);
        let (key, method) = match server_key(&request) {
            Ok(found) => found,
            Err(reason) => return self.respond_stateless(&flow, &request, 400, reason),
        };
        // Requests routed through us inside a dialog are forwarded without a transaction.
        if self.is_routed_through_us(&request) {
            return self.route_in_dialog(&flow, request);
        }
        // Overload: no new transaction beyond the cap, and no new call or registration while
        // the node is behind (a retransmission still finds its own transaction, an ACK needs
        // none).
        let new = method != transaction::Method::Ack && self.transactions.state(&key).is_none();
        let full = self.transactions.len() >= self.config.sip.max_transactions;
        // Past the cap, what ends accepted work still goes through (a CANCEL, the wake-up
        // REGISTER of a phone a call waits for): at most one each per call the core holds.
        if new && full && !self.finishes_accepted_work(&request, &method) {
            self.metrics.limit_hit("max_transactions");
            return self.unavailable(&flow, &request);
        }
        if let Some(shed) = self.sheds(&request, &method).filter(|_| new) {
            self.metrics.shed(shed);
            return self.unavailable(&flow, &request);
        }
        let out = Outgoing {
            flow: flow.clone(),
            bytes: request.bytes(),
        };
        let now = self.now();
        match self
            .transactions
            .handle_request(now, &key, &method, tx_transport(&flow), out)
        {
            Ok(RequestOutcome::New(_)) => {}
            Ok(RequestOutcome::Absorbed) | Ok(RequestOutcome::Ack { matched: true, .. }) => return,
            Ok(RequestOutcome::Ack { matched: false, .. }) => {
                // An ACK for a 2xx that did not name our Record-Route: nothing to route it by.
                return debug!("{flow}: stray ACK dropped");
            }
            Err(e) => return debug!("{flow}: transaction: {e:?}"),
        }
        let method = request
            .method()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let for_us = self.request_is_for_us(&request);
        if method != "REGISTER" && method != "CANCEL" && !for_us {
            // RFC 3261 §16.3: checks of a request this server would proxy.
            if request.max_forwards_or_default().unwrap_or(70) == 0 {
                return self.reply(&flow, &key, &request, 483, &[]);
            }
            if let Ok(tags) = request.option_tags(HeaderName::ProxyRequire) {
                if !tags.is_empty() {
                    let unsupported = [("Unsupported", tags.join(", "))];
                    return self.reply(&flow, &key, &request, 420, &unsupported);
                }
            }
        }
        // A request inside a dialog this server did not record-route: no such dialog here.
        let dialog_method = matches!(method.as_str(), "BYE" | "UPDATE" | "INFO" | "PRACK");
        let tagged = matches!(request.to_header(), Some(Ok(to)) if to.tag().is_some());
        if dialog_method || (tagged && method != "REGISTER") {
            return self.reply(&flow, &key, &request, 481, &[]);
        }
        match request.method() {
            Some(m) if m.as_str() == "REGISTER" => self.on_register(flow, key, request),
            Some(m) if m.as_str() == "INVITE" => self.on_invite(flow, key, request),
            Some(m) if m.as_str() == "CANCEL" => self.on_cancel(flow, key, request),
            Some(m) if m.as_str() == "OPTIONS" && for_us => {
                self.reply(&flow, &key, &request, 200, &[("Allow", ALLOW.to_owned())]);
            }
            Some(Method::Extension(_)) => self.reply(&flow, &key, &request, 501, &[]),
            _ => self.reply(&flow, &key, &request, 405, &[("Allow", ALLOW.to_owned())]),
        }
    }

    /// The method of `request`, if it is refused because the node is overloaded (see
    /// `overload`: while it is, only a share of new requests is let in). What may be
    /// refused: a new call (an INVITE outside a dialog), and a REGISTER, unless a call waits
    /// for its AOR (a phone woken by a push, or one that is reachable for a call in
    /// progress). Everything else finishes work already accepted (CANCEL, BYE, in-dialog
    /// requests) or costs as little as an answer (OPTIONS).
    fn sheds(&mut self, request: &Message, method: &transaction::Method) -> Option<&'static str> {
        if !self.overload.is_shedding() {
            return None;
        }
        let shed = match method.as_str() {
            "INVITE" if !matches!(request.to_header(), Some(Ok(to)) if to.tag().is_some()) => {
                "INVITE"
            }
            "REGISTER" if !self.awaited(request) => "REGISTER",
            _ => return None,
        };
        (!self.overload.admits(self.instant())).then_some(shed)
    }

    /// Whether `request` only ends work already accepted: a CANCEL, or the REGISTER of a
    /// phone a call waits for.
    fn finishes_accepted_work(&self, request: &Message, method: &transaction::Method) -> bool {
        match method.as_str() {
            "CANCEL" => true,
            "REGISTER" => self.awaited(request),
            _ => false,
        }
    }

    /// Whether the core holds a call for the AOR a REGISTER names.
    fn awaited(&self, request: &Message) -> bool {
        let Some(Ok(to)) = request.to_header() else {
            return false;
        };
        let Uri::Sip(uri) = &to.uri else {
            return false;
        };
        (super::registrar::aor_of(uri)).is_some_and(|aor| {
            self.bindings
                .known_aor(&aor)
                .is_some_and(|id| self.driver.core().holds_callee(id))
        })
    }

    /// `503 Service Unavailable` with `Retry-After` (RFC 3261 §21.5.4), statelessly: the
    /// request never becomes a transaction.
    fn unavailable(&mut self, flow: &Flow, request: &Message) {
        let bytes = (request.response(503).reason("Service Unavailable"))
            .header("Retry-After", OVERLOAD_RETRY_AFTER)
            .to_bytes();
        self.send(flow, Bytes::from(bytes));
    }

    /// Answers a request through its server transaction.
    fn reply(
        &mut self,
        flow: &Flow,
        key: &Key,
        request: &Message,
        code: u16,
        extra: &[(&str, String)],
    ) {
        let mut response = request.response(code).reason(default_reason(code));
        if code >= 200 {
            response = response.to_tag(&format!("pp{}", self.next_id()));
        }
        for (name, value) in extra {
            response = response.header(name, value);
        }
        let out = Outgoing {
            flow: flow.clone(),
            bytes: response.to_bytes().into(),
        };
        let _ = self.transactions.send_response(self.now(), key, code, out);
    }

    /// The Request-URI names this server itself (no user part), as OPTIONS pings do.
    fn request_is_for_us(&self, request: &Message) -> bool {
        match request.request_uri() {
            Some(Ok(Uri::Sip(uri))) => uri.user.is_none() && self.is_local_host(uri.host_raw),
            _ => false,
        }
    }

    fn is_routed_through_us(&self, request: &Message) -> bool {
        self.own_routes(request) > 0
    }

    /// How many Route values on top name us with a flow token: one, or two where we
    /// record-routed twice because the dialog's two sides reach us over different
    /// transports or addresses (RFC 5658).
    fn own_routes(&self, request: &Message) -> usize {
        self.routes_naming_us(request, true)
    }

    /// How many Route values on top name us (RFC 3261 §16.4: a proxy removes them), with a
    /// flow token (`tokens`) or any: a caller's outbound-proxy route to us has none.
    pub(super) fn routes_naming_us(&self, request: &Message, tokens: bool) -> usize {
        request
            .routes()
            .take_while(|route| match route {
                Ok(NameAddr {
                    uri: Uri::Sip(uri), ..
                }) => {
                    (!tokens || uri.user.is_some_and(|u| u.starts_with("pp-")))
                        && self.is_local_host(uri.host_raw)
                        && uri.port.is_none_or(|port| self.listens_on(port))
                }
                _ => false,
            })
            .count()
    }

    /// Whether `port` is one of our listeners', as bound or as advertised: another node
    /// of a cluster may share our host.
    fn listens_on(&self, port: u16) -> bool {
        self.addrs.iter().any(|(_, a)| a.port() == port)
            || (self.config.listen.iter()).any(|l| {
                let l = l.as_ref();
                let advertised = l
                    .advertised_address
                    .as_deref()
                    .and_then(|a| a.rsplit_once(':'));
                advertised.is_some_and(|(_, p)| p.parse() == Ok(port))
            })
    }

    /// A response from a peer: a branch of ours, or one we forwarded statelessly.
    pub(crate) fn on_response(&mut self, flow: Flow, response: Message) {
        let Some(Ok(via)) = response.top_via() else {
            return;
        };
        let branch = via.branch().unwrap_or_default().to_owned();
        if branch.starts_with(STATELESS) {
            return self.forward_response_statelessly(&flow, response);
        }
        let Some(Ok(cseq)) = response.cseq() else {
            return;
        };
        let method = transaction::Method::from_token(cseq.method().as_str());
        let Ok(key) = Key::client(&branch, &method) else {
            return;
        };
        let Some(status) = response.status() else {
            return;
        };
        let out = Outgoing {
            flow: flow.clone(),
            bytes: response.bytes(),
        };
        let now = self.now();
        let delivered = match self.transactions.handle_response(now, &key, status, out) {
            Ok(ResponseOutcome::Deliver(_)) => true,
            // A device answered a branch given up before it had answered: nobody is on the
            // line, so its dialog is closed at once.
            Ok(ResponseOutcome::Stray(_))
                if (200..300).contains(&status) && self.branches.was_dropped(&key) =>
            {
                self.acknowledge(&flow, &response, None, true);
                false
            }
            Ok(ResponseOutcome::Absorbed) | Ok(ResponseOutcome::Stray(_)) | Err(_) => false,
        };
        if delivered && method == transaction::Method::Cancel && status == 481 {
            // The device holds no such INVITE (any more: its app restarted): no final
            // response will come on the branch, which is over as if it never arrived.
            if let Ok(invite) = Key::client(&branch, &transaction::Method::Invite) {
                let _ = self.transactions.transport_error(&invite);
            }
            return;
        }
        if !delivered || method != transaction::Method::Invite {
            return;
        }
        let Some((call, device)) = self.branches.get(&key) else {
            return;
        };
        self.on_branch_response(call, device, status, response);
    }

    pub(crate) fn on_transaction_event(&mut self, event: TuEvent) {
        match event {
            TuEvent::SendTrying { key } => {
                if let Some(ctx) = self
                    .calls
                    .by_invite
                    .get(&key)
                    .and_then(|c| self.calls.by_id.get(c))
                {
                    let bytes = ctx.invite.response(100).reason("Trying").to_bytes().into();
                    let out = Outgoing {
                        flow: ctx.flow.clone(),
                        bytes,
                    };
                    let _ = self.transactions.send_response(self.now(), &key, 100, out);
                }
            }
            TuEvent::Timeout { key, timer } => {
                if let Some((call, device)) = self.branches.get(&key) {
                    self.feed(match timer {
                        // Timer B runs only until the first response: nothing came back at
                        // all, so the INVITE never reached the device (RFC 3261 §17.1.1.2).
                        TxTimer::B => Event::BranchUnreachable { call, device },
                        _ => Event::BranchRejected {
                            call,
                            device,
                            code: 408,
                        },
                    });
                }
            }
            TuEvent::CancelNeeded { key } => {
                if let Some((call, device)) = self.branches.get(&key) {
                    self.send_cancel(call, device);
                }
            }
            TuEvent::TransportError { key } => {
                if let Some((call, device)) = self.branches.get(&key) {
                    self.feed(Event::BranchUnreachable { call, device });
                }
            }
        }
    }
}

/// The methods pushpark handles.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO";

/// A small stable hash for stateless branches and the store's lanes (FNV-1a).
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
