//! The proxy: INVITE, CANCEL, ACK, BYE and the other requests, and the responses of the
//! branches it forwards. It turns SIP into core events and carries out the core's effects
//! as SIP: pushes, forwarded INVITEs, CANCELs, relayed and generated responses.
//!
//! Dialogs are record-routed with a flow token (RFC 5626 §5.3.1 in spirit): the
//! Record-Route user part names the caller's flow and the device's flow, so a BYE from
//! either side goes back over the other side's flow even when the device sits behind NAT.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use pushpark_model::{CallId, Callee, DeviceId, Effect, EndReason, Event, Flow as CoreFlow};
use tracing::{debug, info};

use super::registrar::{aor_of, without_pn_params};
use super::{log_failure, Node, Outgoing, PushTag};
use crate::auth::{parse_authorization, ChallengeKind, Verdict};
use crate::config::Transport;
use crate::push::{PushKind, PushRequest};
use crate::sip::{
    default_reason, parse_datagram_bytes, validate_request, HeaderName, Message, Method, SipUri,
    Uri,
};
use crate::transaction::{
    self, Key, RequestOutcome, ResponseOutcome, Timer as TxTimer, TuEvent, MAGIC_COOKIE,
};
use crate::transport::{Flow, FlowId};
use crate::Map;

/// Branches of requests forwarded without a transaction (in-dialog requests).
const STATELESS: &str = "z9hG4bKpps";
/// Branches of INVITEs and CANCELs the proxy sends on behalf of a call.
const STATEFUL: &str = "z9hG4bKppc";

/// The calls in progress, by the core's id and by their INVITE server transaction.
#[derive(Default)]
pub(crate) struct Calls {
    by_id: Map<CallId, CallContext>,
    by_invite: Map<Key, CallId>,
    next: u64,
    /// Calls waiting for a pushed phone to wake (those with `parked_since`).
    parked: usize,
}

/// What the proxy keeps of a call beside the core: the SIP the core never sees.
pub(crate) struct CallContext {
    invite: Message,
    flow: Flow,
    key: Key,
    aor: String,
    to_tag: String,
    answered: bool,
    branches: HashMap<DeviceId, BranchContext>,
    /// Since when the call waits for a pushed phone to wake: from its first push until a
    /// phone that registered gets it, or it ends.
    parked_since: Option<Instant>,
}

struct BranchContext {
    key: Key,
    flow: Flow,
    /// The INVITE as sent to the device.
    invite: Message,
    provisional: bool,
    /// A CANCEL is due (with the reason to give, if any), waiting for a provisional. A
    /// notice of an ended call has one due from the start.
    cancel_pending: Option<Option<EndReason>>,
    cancel_sent: bool,
    /// The last response of the branch, to relay.
    response: Option<Message>,
    /// The branch has its final response (or gave up waiting).
    finished: bool,
    answered: bool,
}

/// Dialogs record-routed through us, by Call-ID, with the device in them: a device in a
/// call is awake, however long its flow has been silent (specs/parking.md §3).
/// A dialog ends with a BYE through us; one whose BYE we never saw goes after a day.
#[derive(Default)]
pub(crate) struct Dialogs {
    by_call_id: Map<String, (DeviceId, Instant)>,
    per_device: Map<DeviceId, u32>,
}

/// How long a dialog whose BYE we never saw is taken to last.
const DIALOG_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Dialogs {
    fn open(&mut self, call_id: &str, device: DeviceId, now: Instant) {
        if self
            .by_call_id
            .insert(call_id.to_owned(), (device, now))
            .is_none()
        {
            *self.per_device.entry(device).or_default() += 1;
        }
    }

    fn close(&mut self, call_id: &str) {
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

/// Client transactions of branches, back to their call and device.
#[derive(Default)]
pub(crate) struct Branches {
    by_key: Map<Key, (CallId, DeviceId, FlowId)>,
    /// The branches sent over each flow, so a closed connection fails them at once.
    by_flow: Map<FlowId, Vec<Key>>,
    /// Branches given up without a response (`DropBranch`), with when: a 2xx that still
    /// comes on one is hung up. Kept a few minutes.
    dropped: Map<Key, Instant>,
}

/// How long a dropped branch's late 2xx is still recognised (the device's 2xx is
/// retransmitted for 64·T1 at most, RFC 3261 §13.3.1.4).
const DROPPED_KEPT: Duration = Duration::from_secs(300);

impl Calls {
    /// Calls the proxy keeps SIP for.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Calls waiting for a pushed phone to wake.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Marks `call` parked; whether it just became so.
    fn park(&mut self, call: CallId, now: Instant) -> bool {
        match self.by_id.get_mut(&call) {
            Some(ctx) if ctx.parked_since.is_none() => {
                ctx.parked_since = Some(now);
                self.parked += 1;
                true
            }
            _ => false,
        }
    }

    /// Marks `call` no longer parked; since when it was, if it was.
    fn unpark(&mut self, call: CallId) -> Option<Instant> {
        let since = self.by_id.get_mut(&call)?.parked_since.take()?;
        self.parked -= 1;
        Some(since)
    }
}

impl Branches {
    /// The branch `key` is for `call` and `device`, over `flow` (again, if it moved).
    fn insert(&mut self, key: Key, (call, device): (CallId, DeviceId), flow: FlowId) {
        if let Some((_, _, old)) = self.by_key.insert(key.clone(), (call, device, flow)) {
            self.unlist(&key, old);
        }
        self.by_flow.entry(flow).or_default().push(key);
    }

    fn get(&self, key: &Key) -> Option<(CallId, DeviceId)> {
        self.by_key
            .get(key)
            .map(|&(call, device, _)| (call, device))
    }

    fn unlist(&mut self, key: &Key, flow: FlowId) {
        if let Some(keys) = self.by_flow.get_mut(&flow) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_flow.remove(&flow);
            }
        }
    }

    pub fn terminated(&mut self, key: &Key) {
        if let Some((_, _, flow)) = self.by_key.remove(key) {
            self.unlist(key, flow);
        }
    }

    /// The branches whose INVITE went over `flow`.
    pub fn over(&self, flow: FlowId) -> Vec<Key> {
        self.by_flow.get(&flow).cloned().unwrap_or_default()
    }

    /// The branch `key` was given up at `now`.
    fn dropped(&mut self, key: Key, now: Instant) {
        self.dropped.insert(key, now);
    }

    fn was_dropped(&self, key: &Key) -> bool {
        self.dropped.contains_key(key)
    }

    /// Forgets branches dropped long ago.
    pub fn prune(&mut self, now: Instant) {
        self.dropped
            .retain(|_, at| now.saturating_duration_since(*at) < DROPPED_KEPT);
    }
}

/// The ACK an INVITE client transaction sends for a 3xx–6xx (RFC 3261 §17.1.1.3): the
/// INVITE's Request-URI, top Via, From, Call-ID and Route, the response's To.
pub(crate) fn ack_for_non_2xx(invite: &Outgoing, response: &Outgoing) -> Outgoing {
    let bytes = match (
        parse_datagram_bytes(invite.bytes.clone()),
        parse_datagram_bytes(response.bytes.clone()),
    ) {
        (Ok(invite), Ok(response)) => {
            let header = |m: &Message, name| raw(m, name).unwrap_or_default().to_owned();
            let mut text = format!(
                "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\n",
                invite.request_uri_str().unwrap_or_default(),
                header(&invite, HeaderName::Via),
                header(&invite, HeaderName::From),
                header(&response, HeaderName::To),
                header(&invite, HeaderName::CallId),
                invite.cseq().and_then(Result::ok).map_or(1, |c| c.seq),
            );
            for route in invite.values(HeaderName::Route) {
                text.push_str(&format!("Route: {}\r\n", String::from_utf8_lossy(route)));
            }
            text.push_str("Content-Length: 0\r\n\r\n");
            Bytes::from(text)
        }
        _ => Bytes::new(),
    };
    Outgoing {
        flow: invite.flow.clone(),
        bytes,
    }
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
    match flow.transport {
        Transport::Udp => transaction::Transport::Unreliable,
        Transport::Tcp => transaction::Transport::Reliable,
    }
}

/// Where a SIP URI leads: its address and transport (numeric hosts only; pushpark routes
/// dialogs of devices it serves, which register with their addresses).
fn uri_target(uri: &SipUri<'_>) -> Option<(Transport, SocketAddr)> {
    let ip: IpAddr = uri.host.ip()?;
    let transport = match uri.transport() {
        Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
        _ => Transport::Udp,
    };
    Some((transport, SocketAddr::new(ip, uri.port.unwrap_or(5060))))
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
        match request.routes().next() {
            Some(Ok(route)) => match &route.uri {
                Uri::Sip(uri) => {
                    uri.user.is_some_and(|u| u.starts_with("pp-"))
                        && self.is_local_host(uri.host_raw)
                }
                _ => false,
            },
            _ => false,
        }
    }

    fn on_invite(&mut self, flow: Flow, key: Key, invite: Message) {
        let reply = |node: &mut Node, code: u16, extra: &[(&str, String)]| {
            node.reply(&flow, &key, &invite, code, extra)
        };
        // RFC 3261 §16.3 step 4: an INVITE that already went through us comes back in a loop.
        if self.already_forwarded_by_us(&invite) {
            return reply(self, 482, &[]);
        }
        let Some(Ok(Uri::Sip(ruri))) = invite.request_uri() else {
            return reply(self, 416, &[]);
        };
        // No open relay: only our own domains are served.
        if !self.is_local_host(ruri.host_raw) {
            return reply(self, 403, &[]);
        }
        let Some(aor) = aor_of(&ruri) else {
            return reply(self, 404, &[]);
        };
        if let Some(challenge) = self.invite_needs_auth(&flow, &invite) {
            return reply(self, 407, &challenge);
        }
        // 100 Trying at once: it quenches retransmissions and lets the caller CANCEL.
        reply(self, 100, &[]);
        self.metrics.call();
        let callee = match &self.auth {
            Some((_, users))
                if !users
                    .entries()
                    .iter()
                    .any(|u| aor_user(&aor) == Some(u.username.as_str())) =>
            {
                Callee::Unknown
            }
            _ => Callee::Devices(
                self.bindings
                    .targets(&aor, self.unix_now(), |d, f| self.flow_facts(d, f)),
            ),
        };
        self.calls.next += 1;
        let call = CallId(self.calls.next);
        let aor_id = self.bindings.aor_id(&aor);
        let to_tag = format!("pp{}", self.next_id());
        self.calls.by_invite.insert(key.clone(), call);
        self.calls.by_id.insert(
            call,
            CallContext {
                invite,
                flow,
                key,
                aor,
                to_tag,
                answered: false,
                branches: HashMap::new(),
                parked_since: None,
            },
        );
        self.feed(Event::CallArrived {
            call,
            aor: aor_id,
            callee,
        });
    }

    /// One of the request's Vias is ours, from a branch of a call: it has looped back.
    fn already_forwarded_by_us(&self, request: &Message) -> bool {
        request.vias().flatten().any(|via| {
            let ours = via.branch().is_some_and(|b| b.starts_with(STATEFUL));
            let here = self.addrs.iter().any(|(_, a)| {
                via.host.ip() == Some(a.ip()) && via.port.unwrap_or(5060) == a.port()
            });
            ours && here
        })
    }

    /// The 407 challenge an INVITE from one of our own users must answer, if any.
    fn invite_needs_auth(
        &self,
        flow: &Flow,
        invite: &Message,
    ) -> Option<Vec<(&'static str, String)>> {
        let (digest, users) = self.auth.as_ref()?;
        if self
            .config
            .auth
            .trusted_peers
            .iter()
            .any(|net| net.contains(&flow.peer.ip()))
        {
            return None;
        }
        let from = invite.from_header()?.ok()?;
        let Uri::Sip(from_uri) = &from.uri else {
            return None;
        };
        if !self.is_local_host(from_uri.host_raw) {
            return None;
        }
        let now = self.unix_now();
        let uri = invite.request_uri_str().unwrap_or_default();
        let verdict = invite
            .first_str(HeaderName::ProxyAuthorization)
            .and_then(Result::ok)
            .and_then(|v| parse_authorization(v).ok())
            .map(|c| {
                let uri = self.digest_uri(&c.uri, uri);
                digest.verify_user(&c, "INVITE", uri, users, now)
            });
        match verdict {
            Some(Verdict::Authenticated { username })
                if from_uri.user == Some(username.as_str()) =>
            {
                None
            }
            other => {
                let stale = matches!(other, Some(Verdict::Stale));
                let header = ChallengeKind::Proxy.challenge_header();
                Some(
                    digest
                        .challenges(now, stale)
                        .into_iter()
                        .map(|c| (header, c))
                        .collect(),
                )
            }
        }
    }

    fn on_cancel(&mut self, flow: Flow, key: Key, cancel: Message) {
        let call = key
            .cancelled_invite()
            .and_then(|invite| self.calls.by_invite.get(&invite).copied());
        match call {
            Some(call) => {
                // RFC 3261 §16.10: 200 to the CANCEL at once; the core decides the rest.
                self.reply(&flow, &key, &cancel, 200, &[]);
                self.feed(Event::CallerCancelled { call });
            }
            // The INVITE is already answered: the CANCEL has no effect, but it matched
            // (RFC 3261 §9.2).
            None if key
                .cancelled_invite()
                .is_some_and(|invite| self.transactions.state(&invite).is_some()) =>
            {
                self.reply(&flow, &key, &cancel, 200, &[])
            }
            None => self.reply(&flow, &key, &cancel, 481, &[]),
        }
    }

    /// A response from a peer: a branch of ours, or one we forwarded statelessly.
    pub(crate) fn on_response(&mut self, flow: Flow, response: Message) {
        let Some(Ok(via)) = response.top_via() else {
            return;
        };
        let branch = via.branch().unwrap_or_default().to_owned();
        if branch.starts_with(STATELESS) {
            return self.forward_response_statelessly(response);
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
                self.ack_and_bye(&flow, &response, None);
                false
            }
            Ok(ResponseOutcome::Absorbed) | Ok(ResponseOutcome::Stray(_)) | Err(_) => false,
        };
        if !delivered || method != transaction::Method::Invite {
            return;
        }
        let Some((call, device)) = self.branches.get(&key) else {
            return;
        };
        self.on_branch_response(call, device, status, response);
    }

    fn on_branch_response(
        &mut self,
        call: CallId,
        device: DeviceId,
        status: u16,
        response: Message,
    ) {
        let Some(ctx) = self.calls.by_id.get_mut(&call) else {
            return;
        };
        let Some(branch) = ctx.branches.get_mut(&device) else {
            return;
        };
        if (101..200).contains(&status) {
            branch.provisional = true;
        }
        branch.finished |= status >= 200;
        let cancel_now = branch.cancel_pending.is_some() && branch.provisional && status < 200;
        let event = match status {
            100 => Event::BranchTrying { call, device },
            101..=199 => {
                branch.response = Some(response);
                Event::BranchRang { call, device }
            }
            200..=299 if branch.answered => {
                // A retransmitted 2xx (RFC 6026): pass it on to the caller as it is.
                let bytes = toward_caller(&response).into();
                let flow = ctx.flow.clone();
                return self.send(&flow, bytes);
            }
            200..=299 => {
                branch.answered = true;
                branch.response = Some(response);
                Event::BranchAnswered { call, device }
            }
            // RFC 5626 §7: the device's edge could not reach it over its flow: the INVITE
            // never arrived, as when its connection closes.
            430 => Event::BranchUnreachable { call, device },
            _ => {
                branch.response = Some(response);
                Event::BranchRejected {
                    call,
                    device,
                    code: status,
                }
            }
        };
        if cancel_now {
            self.send_cancel(call, device);
        }
        self.feed(event);
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
                    self.finish_branch(call, device);
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
                    self.finish_branch(call, device);
                    self.feed(Event::BranchUnreachable { call, device });
                }
            }
        }
    }

    /// A branch gave up (transaction time-out or transport error).
    fn finish_branch(&mut self, call: CallId, device: DeviceId) {
        let branch = self
            .calls
            .by_id
            .get_mut(&call)
            .and_then(|c| c.branches.get_mut(&device));
        if let Some(branch) = branch {
            branch.finished = true;
        }
    }

    fn branch(&self, call: CallId, device: DeviceId) -> Option<&BranchContext> {
        self.calls.by_id.get(&call)?.branches.get(&device)
    }

    /// Carries out one effect of the core.
    pub(crate) fn apply_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Push { call, device } => {
                if self.calls.park(call, self.instant()) {
                    self.metrics.parked();
                }
                self.push(call, device);
            }
            Effect::Forward { call, device } => {
                // Forwarded after a push: a phone woke and registered.
                if let Some(since) = self.calls.unpark(call) {
                    self.metrics
                        .woke(self.instant().saturating_duration_since(since));
                }
                self.forward(call, device, None);
            }
            Effect::Reroute { call, device } => self.reroute(call, device),
            Effect::TellEnded {
                call,
                device,
                reason,
            } => self.forward(call, device, Some(reason)),
            Effect::DropBranch { call, device } => {
                let key = self.branch(call, device).map(|b| b.key.clone());
                if let Some(key) = key {
                    let _ = self.transactions.abandon(&key);
                    self.branches.dropped(key, self.instant());
                    self.finish_branch(call, device);
                }
            }
            Effect::CancelBranch { call, device } => {
                let ready = match self
                    .calls
                    .by_id
                    .get_mut(&call)
                    .and_then(|c| c.branches.get_mut(&device))
                {
                    Some(branch) => {
                        branch.cancel_pending = Some(None);
                        branch.provisional
                    }
                    None => false,
                };
                // RFC 3261 §9.1: a CANCEL waits for the branch's first provisional.
                if ready {
                    self.send_cancel(call, device);
                }
            }
            Effect::HangUpBranch { call, device } => {
                if let Some(response) = self.branch(call, device).and_then(|b| b.response.clone()) {
                    self.hang_up(call, device, &response);
                }
            }
            Effect::RelayProvisional { call, device } => self.relay(call, device),
            Effect::Respond { call, code, relay } => {
                match relay {
                    Some(device) => self.relay(call, device),
                    None => self.respond(call, code),
                }
                if let (200, Some(device)) = (code, relay) {
                    self.dialog_opened(call, device);
                }
                if let Some(ctx) = self.calls.by_id.get_mut(&call) {
                    ctx.answered = true;
                }
                self.calls.unpark(call);
                self.metrics.outcome(code);
                info!("call {call}: final response {code}");
            }
            Effect::ArmTimer { .. } | Effect::DisarmTimer { .. } => {}
            Effect::ForgetPushToken { device } => {
                if let Some((id, prid)) = self.bindings.forget_push(device) {
                    self.with_store(
                        move |store| store.forget_push_token(id, &prid),
                        log_failure("forgetting a dead token"),
                    );
                }
            }
        }
    }

    /// The device answered the call: a dialog through us is up on its flow.
    fn dialog_opened(&mut self, call: CallId, device: DeviceId) {
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        if let Some(call_id) = raw(&ctx.invite, HeaderName::CallId) {
            self.dialogs.open(call_id, device, self.instant());
        }
    }

    /// What the core is told of `device`'s flow: whether it is open, and for UDP, when it
    /// was last heard from and whether the device is in a dialog through us.
    pub(crate) fn flow_facts(&self, device: DeviceId, flow: &Flow) -> CoreFlow {
        if !self.is_open(flow) {
            return CoreFlow::Closed;
        }
        match flow.transport {
            Transport::Tcp => CoreFlow::Connected,
            Transport::Udp => CoreFlow::Datagram {
                heard_at: self
                    .flows
                    .get(&flow.id)
                    .map_or(0, |(_, seen)| self.millis_at(*seen)),
                in_dialog: self.dialogs.with(device),
            },
        }
    }

    fn push(&mut self, call: CallId, device: DeviceId) {
        let id = format!("{call}-{device}-{}", self.next_id());
        let (Some(ctx), Some(binding)) = (self.calls.by_id.get(&call), self.bindings.get(device))
        else {
            return self.feedback.push(Event::PushFailed {
                call,
                device,
                permanent: false,
            });
        };
        let Some(push) = binding.push.clone() else {
            return self.feedback.push(Event::PushFailed {
                call,
                device,
                permanent: true,
            });
        };
        if !self.push_budget.allow(device, self.instant()) {
            tracing::warn!("push to {device} for {call} refused: over the per-device rate limit");
            return self.feedback.push(Event::PushFailed {
                call,
                device,
                permanent: false,
            });
        }
        let from = ctx.invite.from_header().and_then(Result::ok);
        let request = PushRequest {
            id,
            kind: PushKind::IncomingCall,
            callee_aor: ctx.aor.clone(),
            pn_provider: push.provider,
            pn_prid: push.prid,
            pn_param: push.param,
            caller_uri: from
                .as_ref()
                .map(|f| f.uri_raw.to_owned())
                .unwrap_or_default(),
            caller_display_name: from
                .as_ref()
                .and_then(|f| f.display_name)
                .map(|d| crate::sip::unquote(d).to_owned()),
            call_id: raw(&ctx.invite, HeaderName::CallId)
                .unwrap_or_default()
                .to_owned(),
            deadline: UNIX_EPOCH
                + Duration::from_secs(self.unix_now())
                + Duration::from_millis(self.driver.core().config().park_timeout),
        };
        // Whether queued or refused, the outcome comes back as a report.
        self.submit_push(request, PushTag::Call(call, device));
    }

    /// The caller's INVITE as the branch with `branch` sends it to `contact` over `flow`:
    /// our Via, one hop less, and a Record-Route whose flow token names both flows.
    fn branch_invite(&self, ctx: &CallContext, contact: &str, flow: &Flow, branch: &str) -> Bytes {
        let local = format_addr(flow.local);
        let via = format!("SIP/2.0/{} {local};branch={branch}", flow.transport);
        let record_route = format!("<sip:pp-{}-{}@{local};lr>", ctx.flow.id.0, flow.id.0);
        let max_forwards = ctx
            .invite
            .max_forwards_or_default()
            .unwrap_or(70)
            .saturating_sub(1);
        let mut forward = ctx
            .invite
            .forward()
            .request_uri(contact)
            .push_via(&via)
            .max_forwards(max_forwards)
            .record_route(&record_route);
        if self.is_routed_through_us(&ctx.invite) {
            forward = forward.pop_route();
        }
        forward.to_bytes().into()
    }

    /// The open flow of `device`'s last REGISTER and its Contact without pn-* parameters.
    fn device_flow(&self, device: DeviceId) -> Option<(Flow, String)> {
        let flow = self
            .bindings
            .flow(device)
            .filter(|f| self.is_open(f))?
            .clone();
        let contact = without_pn_params(&self.bindings.get(device)?.contact);
        Some((flow, contact))
    }

    /// Sends the caller's INVITE to the device over the flow of its last REGISTER, as a
    /// live call's branch or, with `notice`, as the notice of an ended call: its CANCEL with
    /// that reason is due as soon as the device rings.
    fn forward(&mut self, call: CallId, device: DeviceId, notice: Option<EndReason>) {
        let Some((flow, contact)) = self.device_flow(device) else {
            return self
                .feedback
                .push(Event::BranchUnreachable { call, device });
        };
        let branch = format!("{STATEFUL}{}", self.next_id());
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let bytes = self.branch_invite(ctx, &contact, &flow, &branch);
        let Ok(invite) = parse_datagram_bytes(bytes.clone()) else {
            return;
        };
        let Ok(key) = Key::client(&branch, &transaction::Method::Invite) else {
            return;
        };
        let out = Outgoing {
            flow: flow.clone(),
            bytes,
        };
        let now = self.now();
        if self
            .transactions
            .start_proxied_invite(now, key.clone(), tx_transport(&flow), out)
            .is_err()
        {
            return;
        }
        self.branches.insert(key.clone(), (call, device), flow.id);
        if let Some(ctx) = self.calls.by_id.get_mut(&call) {
            ctx.branches.insert(
                device,
                BranchContext {
                    key,
                    flow,
                    invite,
                    provisional: false,
                    cancel_pending: notice.map(Some),
                    cancel_sent: false,
                    response: None,
                    finished: false,
                    answered: false,
                },
            );
        }
    }

    /// Sends a branch's INVITE again, as the same transaction, over the flow of the device's
    /// latest REGISTER: a device that slept through it gets it now, one that has it absorbs
    /// the retransmission. Nothing to do if the flow is the one the branch already uses.
    fn reroute(&mut self, call: CallId, device: DeviceId) {
        let Some((flow, contact)) = self.device_flow(device) else {
            return;
        };
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let Some(branch) = ctx.branches.get(&device).filter(|b| b.flow.id != flow.id) else {
            return;
        };
        let key = branch.key.clone();
        let bytes = self.branch_invite(ctx, &contact, &flow, key.branch());
        let Ok(invite) = parse_datagram_bytes(bytes.clone()) else {
            return;
        };
        let out = Outgoing {
            flow: flow.clone(),
            bytes,
        };
        if self
            .transactions
            .reroute(&key, tx_transport(&flow), out)
            .is_err()
        {
            return;
        }
        self.branches.insert(key, (call, device), flow.id);
        if let Some(branch) = self
            .calls
            .by_id
            .get_mut(&call)
            .and_then(|c| c.branches.get_mut(&device))
        {
            branch.flow = flow;
            branch.invite = invite;
        }
    }

    /// CANCELs a branch (RFC 3261 §9.1), with an RFC 3326 Reason when a woken device is
    /// told why its call ended.
    fn send_cancel(&mut self, call: CallId, device: DeviceId) {
        let now = self.now();
        let Some(branch) = self
            .calls
            .by_id
            .get_mut(&call)
            .and_then(|c| c.branches.get_mut(&device))
        else {
            return;
        };
        if branch.cancel_sent {
            return;
        }
        branch.cancel_sent = true;
        let invite = &branch.invite;
        let mut text = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\n",
            invite.request_uri_str().unwrap_or_default(),
            raw(invite, HeaderName::Via).unwrap_or_default(),
            raw(invite, HeaderName::From).unwrap_or_default(),
            raw(invite, HeaderName::To).unwrap_or_default(),
            raw(invite, HeaderName::CallId).unwrap_or_default(),
            invite.cseq().and_then(Result::ok).map_or(1, |c| c.seq),
        );
        if let Some(Some(reason)) = branch.cancel_pending {
            text.push_str(&format!("Reason: {}\r\n", reason_header(reason)));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let Ok(cancel_key) = Key::client(branch.key.branch(), &transaction::Method::Cancel) else {
            return;
        };
        let out = Outgoing {
            flow: branch.flow.clone(),
            bytes: Bytes::from(text),
        };
        let transport = tx_transport(&branch.flow);
        let invite_key = branch.key.clone();
        let _ = self
            .transactions
            .start_client(now, cancel_key, transport, out);
        let _ = self.transactions.cancel_sent(now, &invite_key);
    }

    /// Acknowledges a 2xx that came too late and ends its dialog with a BYE.
    fn hang_up(&mut self, call: CallId, device: DeviceId, response: &Message) {
        let Some(branch) = self.branch(call, device) else {
            return;
        };
        let flow = branch.flow.clone();
        let fallback = branch.invite.request_uri_str().map(str::to_owned);
        self.ack_and_bye(&flow, response, fallback);
    }

    /// ACK and BYE for a 2xx nobody is on the line for (RFC 3261 §13.2.2.4, §15): to its
    /// Contact (else `fallback`), in the dialog the 2xx set up, over `flow`.
    fn ack_and_bye(&mut self, flow: &Flow, response: &Message, fallback: Option<String>) {
        let contact = response
            .contacts()
            .next()
            .and_then(Result::ok)
            .and_then(|c| c.addr().map(|a| a.uri_raw.to_owned()));
        let Some(target) = contact.or(fallback) else {
            return;
        };
        let seq = response.cseq().and_then(Result::ok).map_or(1, |c| c.seq);
        let common = format!(
            "Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n",
            raw(response, HeaderName::From).unwrap_or_default(),
            raw(response, HeaderName::To).unwrap_or_default(),
            raw(response, HeaderName::CallId).unwrap_or_default(),
        );
        let local = format_addr(flow.local);
        for (method, seq) in [("ACK", seq), ("BYE", seq + 1)] {
            let text = format!(
                "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{} {local};branch={STATELESS}h{}\r\n{common}CSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n",
                flow.transport,
                self.next_id(),
            );
            self.send(flow, Bytes::from(text));
        }
    }

    /// Relays the branch's last response to the caller, less our Via.
    fn relay(&mut self, call: CallId, device: DeviceId) {
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let Some(response) = ctx.branches.get(&device).and_then(|b| b.response.as_ref()) else {
            return;
        };
        let Some(status) = response.status() else {
            return;
        };
        let out = Outgoing {
            flow: ctx.flow.clone(),
            bytes: toward_caller(response).into(),
        };
        let key = ctx.key.clone();
        let _ = self
            .transactions
            .send_response(self.now(), &key, status, out);
    }

    /// A final response the proxy makes itself (404, 480, 486, 487, 500, 503).
    fn respond(&mut self, call: CallId, code: u16) {
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let mut response = ctx
            .invite
            .response(code)
            .reason(default_reason(code))
            .to_tag(&ctx.to_tag);
        if code == 503 {
            response = response.header("Retry-After", "5");
        }
        let out = Outgoing {
            flow: ctx.flow.clone(),
            bytes: response.to_bytes().into(),
        };
        let key = ctx.key.clone();
        let _ = self.transactions.send_response(self.now(), &key, code, out);
    }

    /// Drops what the proxy keeps of a call once the core has let it go and its caller is
    /// answered.
    pub(crate) fn forget_if_done(&mut self, call: CallId) {
        let done = self.calls.by_id.get(&call).is_some_and(|c| c.answered)
            && !self.driver.core().holds(call);
        if done {
            self.calls.unpark(call);
            if let Some(ctx) = self.calls.by_id.remove(&call) {
                self.calls.by_invite.remove(&ctx.key);
            }
        }
    }

    /// Forwards a request inside a dialog we record-routed: over the other side's flow
    /// when the flow token names one, else to its next hop's address.
    fn route_in_dialog(&mut self, arrived: &Flow, request: Message) {
        let Some(Ok(route)) = request.routes().next() else {
            return;
        };
        let Uri::Sip(route_uri) = &route.uri else {
            return;
        };
        let token = route_uri.user.unwrap_or_default();
        let mut flows = token
            .trim_start_matches("pp-")
            .split('-')
            .filter_map(|s| s.parse().ok());
        let (a, b) = (flows.next().map(FlowId), flows.next().map(FlowId));
        let other = if Some(arrived.id) == a { b } else { a };
        let out_flow = other
            .and_then(|id| self.flows.get(&id).map(|(flow, _)| flow.clone()))
            .filter(|f| self.is_open(f));
        let is_ack = request.method().is_some_and(|m| m.as_str() == "ACK");
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
        let incoming_branch = request
            .top_via()
            .and_then(Result::ok)
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let branch = format!("{STATELESS}{:x}", fnv(&incoming_branch));
        let next_target = match request.routes().nth(1) {
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
        let transport = direct.map_or(flow.transport, |(t, _)| t);
        let via = format!(
            "SIP/2.0/{transport} {};branch={branch}",
            format_addr(via_local)
        );
        let bytes: Bytes = request
            .forward()
            .pop_route()
            .push_via(&via)
            .max_forwards(max_forwards - 1)
            .to_bytes()
            .into();
        match direct {
            None => self.send(&flow, bytes),
            Some((transport, addr)) => self.send_to(transport, addr, bytes),
        }
    }

    /// A response to a request we forwarded without a transaction: our Via off, and on to
    /// the next Via's address (RFC 3261 §18.2.2: `received` and `rport` first).
    fn forward_response_statelessly(&mut self, response: Message) {
        let Some(Ok(next)) = response.vias().nth(1) else {
            return;
        };
        let ip = next.received().or_else(|| next.host.ip());
        let port = match next.rport() {
            Some(Some(port)) => port,
            _ => next.port.unwrap_or(5060),
        };
        let Some(ip) = ip else { return };
        let addr = SocketAddr::new(ip, port);
        let bytes: Bytes = response.forward().pop_via().to_bytes().into();
        if !next.transport.eq_ignore_ascii_case("TCP") {
            return self.send_to(Transport::Udp, addr, bytes);
        }
        // Over TCP, back through the connection the request came on if it is still open.
        let existing = self
            .flows
            .values()
            .map(|(flow, _)| flow)
            .find(|f| f.transport == Transport::Tcp && f.peer == addr && self.is_open(f))
            .cloned();
        match existing {
            Some(flow) => self.send(&flow, bytes),
            None => self.send_to(Transport::Tcp, addr, bytes),
        }
    }
}

/// A device's response as the caller gets it: our Via off, and the RFC 8599 pn-* parameters
/// off its Contact URIs (many apps put them in every Contact), so that no push token reaches
/// another user (RFC 8599 §13).
fn toward_caller(response: &Message) -> Vec<u8> {
    let forward = response.forward().pop_via();
    let mut cleaned = Vec::new();
    let mut changed = false;
    for (element, contact) in response
        .elements(HeaderName::Contact)
        .zip(response.contacts())
    {
        let (Ok(element), Ok(contact)) = (element, contact) else {
            return forward.to_bytes();
        };
        match contact.addr().map(|a| a.uri_raw) {
            Some(uri) if uri.to_ascii_lowercase().contains(";pn-") => {
                changed = true;
                cleaned.push(element.replacen(uri, &without_pn_params(uri), 1));
            }
            _ => cleaned.push(element.to_owned()),
        }
    }
    if !changed {
        return forward.to_bytes();
    }
    cleaned
        .iter()
        .fold(forward.remove_header("Contact"), |f, c| {
            f.add_header("Contact", c)
        })
        .to_bytes()
}

/// RFC 3261 §18.2.1 and RFC 3581: the top Via records the address the request really came
/// from (`received`) and, when the client asked with `rport`, its port, so responses and
/// requests in the dialog find their way back through NAT.
fn with_received(flow: &Flow, request: Message) -> Message {
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

/// The methods pushpark handles.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO";

fn aor_user(aor: &str) -> Option<&str> {
    aor.strip_prefix("sip:")?.split('@').next()
}

/// RFC 3326 Reason for a CANCEL telling a woken device why its call ended (specs/parking.md §6).
fn reason_header(reason: EndReason) -> &'static str {
    match reason {
        EndReason::AnsweredElsewhere => "SIP;cause=200;text=\"Call completed elsewhere\"",
        EndReason::DeclinedElsewhere => "SIP;cause=603;text=\"Declined elsewhere\"",
        EndReason::CallerCancelled => "SIP;cause=487;text=\"Caller cancelled\"",
        EndReason::Unanswered => "SIP;cause=480;text=\"Call ended before device woke\"",
    }
}

/// A small stable hash for stateless branches (FNV-1a).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
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
    fn a_response_toward_the_caller_carries_no_push_token_and_keeps_the_rest() {
        let response = parse_datagram(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKppc1\r\n\
              Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=1\r\n\
              To: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
              Contact: <sip:b@192.0.2.7:5062;pn-provider=apns;pn-prid=SECRET;pn-param=T.b.voip;transport=udp>;expires=60\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .expect("parses");
        let out = String::from_utf8(toward_caller(&response)).expect("text");
        assert!(!out.contains("pn-") && !out.contains("SECRET"), "{out}");
        assert!(
            out.contains("Contact: <sip:b@192.0.2.7:5062;transport=udp>;expires=60\r\n"),
            "{out}"
        );
        assert!(!out.contains("z9hG4bKppc1"), "our Via is off: {out}");
        let plain = parse_datagram(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKppc1\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa\r\nContact: <sip:b@192.0.2.7>\r\nCSeq: 1 INVITE\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n")
            .expect("parses");
        assert!(String::from_utf8(toward_caller(&plain))
            .expect("text")
            .contains("Contact: <sip:b@192.0.2.7>"));
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
