//! Calls and their branches: the INVITE of a local user, its CANCEL, the responses of the
//! branches it was forwarded on, and the core's effects carried out as SIP (pushes, forwarded
//! INVITEs, reroutes, CANCELs, relayed and generated responses, notices).

use std::collections::HashMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use pushpark_model::{CallId, Callee, DeviceId, Effect, EndReason, Event, Flow as CoreFlow};
use tracing::{debug, info};

use super::super::registrar::{aor_of, claimed_user, security_failure, without_pn_params};
use super::super::{log_failure, Node, Outgoing, PushTag};
use super::*;
use crate::auth::{parse_authorization, ChallengeKind, Verdict};
use crate::config::Transport;
use crate::push::{PushKind, PushRequest};
use crate::sip::{default_reason, parse_datagram_bytes, HeaderName, Message, Uri};
use crate::transaction::{self, Key};
use crate::transport::{Flow, FlowId};
use crate::{Map, Set};

/// The calls in progress, by the core's id and by their INVITE server transaction.
#[derive(Default)]
pub(crate) struct Calls {
    pub(crate) by_id: Map<CallId, CallContext>,
    pub(crate) by_invite: Map<Key, CallId>,
    pub(crate) next: u64,
    /// Calls waiting for a pushed phone to wake (those with `parked_since`).
    pub(crate) parked: usize,
}

/// What the proxy keeps of a call beside the core: the SIP the core never sees.
pub(crate) struct CallContext {
    pub(crate) invite: Message,
    pub(crate) flow: Flow,
    pub(crate) key: Key,
    pub(crate) aor: String,
    pub(crate) to_tag: String,
    pub(crate) answered: bool,
    pub(crate) branches: HashMap<DeviceId, BranchContext>,
    /// Since when the call waits for a pushed phone to wake: from its first push until a
    /// phone that registered gets it, or it ends.
    pub(crate) parked_since: Option<Instant>,
}

pub(crate) struct BranchContext {
    pub(crate) key: Key,
    pub(crate) flow: Flow,
    /// The INVITE as sent to the device.
    pub(crate) invite: Message,
    pub(crate) provisional: bool,
    /// A CANCEL is due (with the reason to give, if any), waiting for a provisional. A
    /// notice of an ended call has one due from the start.
    pub(crate) cancel_pending: Option<Option<EndReason>>,
    pub(crate) cancel_sent: bool,
    /// The last response of the branch, to relay.
    pub(crate) response: Option<Message>,
    pub(crate) answered: bool,
    /// Its 2xx came after the call was over and was hung up (ACK and BYE).
    pub(crate) hung_up: bool,
}

/// Client transactions of branches, back to their call and device.
#[derive(Default)]
pub(crate) struct Branches {
    pub(crate) by_key: Map<Key, (CallId, DeviceId, FlowId)>,
    /// The branches sent over each flow, so a closed connection fails them at once. A set:
    /// one flow may carry a great many (an SBC in front of many phones, a load generator's
    /// socket), and a list scanned at each branch's end made that quadratic (at 4,000 calls/s
    /// the loop stalled once the first branches ended, 32 s in).
    pub(crate) by_flow: Map<FlowId, Set<Key>>,
    /// Branches given up without a response (`DropBranch`), with when: a 2xx that still
    /// comes on one is hung up. Kept a few minutes.
    pub(crate) dropped: Map<Key, Instant>,
}

/// How long a dropped branch's late 2xx is still recognised (the device's 2xx is
/// retransmitted for 64·T1 at most, RFC 3261 §13.3.1.4).
pub(crate) const DROPPED_KEPT: Duration = Duration::from_secs(300);

impl BranchContext {
    /// Where an in-dialog request goes when the 2xx names no Contact: the INVITE's URI.
    fn fallback(&self) -> Option<String> {
        self.invite.request_uri_str().map(str::to_owned)
    }
}

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
    pub(crate) fn park(&mut self, call: CallId, now: Instant) -> bool {
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
    pub(crate) fn unpark(&mut self, call: CallId) -> Option<Instant> {
        let since = self.by_id.get_mut(&call)?.parked_since.take()?;
        self.parked -= 1;
        Some(since)
    }
}

impl Branches {
    /// The branch `key` is for `call` and `device`, over `flow` (again, if it moved).
    pub(crate) fn insert(&mut self, key: Key, (call, device): (CallId, DeviceId), flow: FlowId) {
        if let Some((_, _, old)) = self.by_key.insert(key.clone(), (call, device, flow)) {
            self.unlist(&key, old);
        }
        self.by_flow.entry(flow).or_default().insert(key);
    }

    pub(crate) fn get(&self, key: &Key) -> Option<(CallId, DeviceId)> {
        self.by_key
            .get(key)
            .map(|&(call, device, _)| (call, device))
    }

    pub(crate) fn unlist(&mut self, key: &Key, flow: FlowId) {
        if let Some(keys) = self.by_flow.get_mut(&flow) {
            keys.remove(key);
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
        (self.by_flow.get(&flow).into_iter().flatten().cloned()).collect()
    }

    /// The branch `key` was given up at `now`.
    pub(crate) fn dropped(&mut self, key: Key, now: Instant) {
        self.dropped.insert(key, now);
    }

    pub(crate) fn was_dropped(&self, key: &Key) -> bool {
        self.dropped.contains_key(key)
    }

    /// Forgets branches dropped long ago.
    pub fn prune(&mut self, now: Instant) {
        self.dropped
            .retain(|_, at| now.saturating_duration_since(*at) < DROPPED_KEPT);
    }
}

/// What [`Node::admit_caller`] makes of an INVITE's caller.
enum Admission {
    /// Rings the callee's phones.
    Caller,
    /// 407 with these challenges.
    Challenge(Vec<(&'static str, String)>),
    /// 403: a caller from another domain, or no From to tell.
    Refused,
}

impl Node {
    pub(super) fn on_invite(&mut self, flow: Flow, key: Key, invite: Message) {
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
        match self.admit_caller(&flow, &invite) {
            Admission::Caller => {}
            Admission::Challenge(challenge) => return reply(self, 407, &challenge),
            Admission::Refused => return reply(self, 403, &[]),
        }
        // 100 Trying at once: it quenches retransmissions and lets the caller CANCEL.
        reply(self, 100, &[]);
        self.metrics.call();
        let realm = self.config.realm();
        let callee = match &self.auth {
            // One hash lookup, whoever the user: no timing tells users apart either.
            Some((_, users)) if aor_user(&aor).is_none_or(|u| users.get(u, realm).is_none()) => {
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
        let waking_limit = self.config.parking.callee_limits.get(&aor).copied();
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
            waking_limit,
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

    /// Who may ring a phone. Without a users file (a server on loopback) anyone may. With
    /// one: a trusted peer (an SBC, a PBX), or one of our users who authenticates as the
    /// From address (407 until then); a caller from another domain only where
    /// `auth.accept_foreign_callers` opens the server to them, else 403.
    fn admit_caller(&mut self, flow: &Flow, invite: &Message) -> Admission {
        let Some((digest, users)) = self.auth.as_ref() else {
            return Admission::Caller;
        };
        let trusted = (self.config.auth.trusted_peers.iter()).any(|n| n.contains(&flow.peer.ip()));
        if trusted {
            return Admission::Caller;
        }
        let from_uri = match invite.from_header().and_then(Result::ok) {
            Some(NameAddr {
                uri: Uri::Sip(uri), ..
            }) => uri,
            _ => return Admission::Refused,
        };
        if !self.is_local_host(from_uri.host_raw) {
            return if self.config.auth.accept_foreign_callers {
                Admission::Caller
            } else {
                Admission::Refused
            };
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
                Admission::Caller
            }
            other => {
                match &other {
                    Some(Verdict::Invalid(reason)) => {
                        let user = claimed_user(invite, HeaderName::ProxyAuthorization);
                        let reason = reason.to_string();
                        let failure = (flow.peer.ip(), user.as_str(), "INVITE", reason.as_str());
                        security_failure(&mut self.pike, &self.metrics, self.clock, failure);
                    }
                    Some(Verdict::Authenticated { username }) => {
                        let failure = (
                            flow.peer.ip(),
                            username.as_str(),
                            "INVITE",
                            "not the caller's address",
                        );
                        security_failure(&mut self.pike, &self.metrics, self.clock, failure);
                    }
                    _ => {}
                }
                let stale = matches!(other, Some(Verdict::Stale));
                let header = ChallengeKind::Proxy.challenge_header();
                Admission::Challenge(
                    digest
                        .challenges(now, stale)
                        .into_iter()
                        .map(|c| (header, c))
                        .collect(),
                )
            }
        }
    }

    pub(super) fn on_cancel(&mut self, flow: Flow, key: Key, cancel: Message) {
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

    pub(super) fn on_branch_response(
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
        // Any provisional, 100 included, allows the CANCEL (RFC 3261 §9.1).
        if (100..200).contains(&status) {
            branch.provisional = true;
        }
        let cancel_now = branch.cancel_pending.is_some() && branch.provisional && status < 200;
        let event = match status {
            100 => Event::BranchTrying { call, device },
            101..=199 => {
                branch.response = Some(response);
                Event::BranchRang { call, device }
            }
            200..=299 if branch.answered && branch.hung_up => {
                // A retransmitted 2xx of a branch hung up: our ACK was lost; again.
                let (flow, fallback) = (branch.flow.clone(), branch.fallback());
                return self.acknowledge(&flow, &response, fallback, false);
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
    fn branch(&self, call: CallId, device: DeviceId) -> Option<&BranchContext> {
        self.calls.by_id.get(&call)?.branches.get(&device)
    }

    fn branch_mut(&mut self, call: CallId, device: DeviceId) -> Option<&mut BranchContext> {
        self.calls.by_id.get_mut(&call)?.branches.get_mut(&device)
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
                // No longer retransmitted; what the device answers on it still comes in,
                // until Timer B ends it (`BranchUnreachable`).
                let key = self.branch(call, device).map(|b| b.key.clone());
                if let Some(key) = key {
                    let _ = self.transactions.silence(&key);
                    self.branches.dropped(key, self.instant());
                }
            }
            Effect::CancelBranch { call, device } => {
                let ready = match self.branch_mut(call, device) {
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
            Effect::RelayProvisional { call, device } => self.relay(call, device, None),
            Effect::Respond { call, code, relay } => {
                match relay {
                    Some(device) => self.relay(call, device, Some(code)),
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
            Effect::RefreshPush { device } => self.refresh_push(device),
            // A 180 of our own: an app shows the call from its push (specs/parking.md §9).
            Effect::Ringback { call } => self.respond(call, 180),
            Effect::ReplyToApp { reply, .. } => self.app_reply = Some(reply),
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
        // Registered on another node: heard of when its notice came (node/cluster.rs).
        if let Some(since) = self.bindings.remote_since(device) {
            return CoreFlow::Datagram {
                heard_at: self.millis_at(since),
                in_dialog: self.dialogs.with(device),
            };
        }
        match flow.transport {
            Transport::Tcp | Transport::Tls => CoreFlow::Connected,
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
        // Taken from both budgets, or from neither. The caller is its From address (any
        // case), which only our authenticated users and trusted peers reach here with.
        let now = self.instant();
        let from = ctx.invite.from_header().and_then(Result::ok);
        let caller = from.as_ref().map_or("", |f| f.uri_raw);
        let token = self.budget_key(&[&push.provider, &push.prid]);
        let pair = self.budget_key(&[&caller.to_ascii_lowercase(), &ctx.aor]);
        let over = if !self.push_budget.has_left(token, now) {
            Some("the push token's")
        } else if !self.caller_budget.allow(pair, now) {
            Some("the caller's")
        } else {
            self.push_budget.allow(token, now);
            None
        };
        if let Some(budget) = over {
            tracing::warn!("push to {device} for {call} refused: over {budget} push budget");
            return self.feedback.push(Event::PushFailed {
                call,
                device,
                permanent: false,
            });
        }
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
            answer_token: self.answer_token(call, device),
            answer_url: self.answer_url.clone(),
        };
        // Whether queued or refused, the outcome comes back as a report.
        self.submit_push(request, PushTag::Call(call, device));
    }

    /// Our Record-Route with the dialog's `token`, for a request going out over `out` that
    /// came in over `back`. Where they use other transports or addresses of ours, we
    /// record-route twice (RFC 5658 §4): each side's route set then leads it back over its
    /// own flow.
    pub(super) fn record_route(&self, token: &str, out: &Flow, back: &Flow) -> String {
        let local = self.sent_by(out.transport, out.local);
        let record_route = format!("<sip:{token}@{local}{};lr>", out.transport.uri_param());
        if (back.transport, back.local) == (out.transport, out.local) {
            return record_route;
        }
        format!(
            "{record_route}, <sip:{token}@{}{};lr>",
            self.sent_by(back.transport, back.local),
            back.transport.uri_param()
        )
    }

    /// The caller's INVITE as the branch with `branch` sends it to `contact` over `flow`
    /// (through the node of the cluster that `path` leads through, when it is given):
    /// our Via, one hop less, and a Record-Route whose flow token names both flows. Where
    /// the caller reached us over another transport or address than the device's flow
    /// leaves from, we record-route twice (RFC 5658 §4): the device's route set then leads
    /// it back over its own flow, the caller's over its own.
    fn branch_invite(
        &self,
        ctx: &CallContext,
        contact: &str,
        flow: &Flow,
        path: Option<&str>,
        branch: &str,
    ) -> Bytes {
        let local = self.sent_by(flow.transport, flow.local);
        let via = format!("SIP/2.0/{} {local};branch={branch}", flow.transport);
        let call_id = raw(&ctx.invite, HeaderName::CallId).unwrap_or_default();
        let token = self.route_key.token(ctx.flow.id, flow.id, call_id);
        let record_route = self.record_route(&token, flow, &ctx.flow);
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
            .record_route(&record_route)
            .pop_routes(self.routes_naming_us(&ctx.invite, false));
        if let Some(path) = path {
            forward = forward.add_header("Route", path);
        }
        forward.to_bytes().into()
    }

    /// The open flow of `device`'s last REGISTER, its Contact without pn-* parameters, and
    /// for a device registered on another node of the cluster, the Path that leads to it
    /// from the far end of the flow.
    fn device_flow(&self, device: DeviceId) -> Option<DeviceFlow> {
        let flow = self
            .bindings
            .flow(device)
            .filter(|f| self.is_open(f))?
            .clone();
        let binding = self.bindings.get(device)?;
        let path = (self.bindings.remote_since(device).is_some())
            .then(|| binding.path.clone())
            .flatten();
        let contact = without_pn_params(&binding.contact);
        Some(DeviceFlow {
            flow,
            contact,
            path,
        })
    }

    /// Sends the caller's INVITE to the device over the flow of its last REGISTER, as a
    /// live call's branch or, with `notice`, as the notice of an ended call: its CANCEL with
    /// that reason is due as soon as the device rings.
    fn forward(&mut self, call: CallId, device: DeviceId, notice: Option<EndReason>) {
        let Some(to) = self.device_flow(device) else {
            return self
                .feedback
                .push(Event::BranchUnreachable { call, device });
        };
        let DeviceFlow {
            flow,
            contact,
            path,
        } = to;
        // One INVITE per call and device: every one sent for them carries the same branch,
        // so a device takes a later one (a notice after a dropped INVITE, a forward after
        // its flow failed) for a retransmission of what it may hold already, and answers
        // it once. An earlier one still in its transaction gives way to it.
        let branch = self.invite_branch(call, device);
        let Ok(key) = Key::client(&branch, &transaction::Method::Invite) else {
            return;
        };
        match self.transactions.state(&key) {
            // It has had a provisional: the device holds it and answers on it.
            Some(transaction::State::Proceeding) => {
                return debug!("call {call}: {device} holds its INVITE already");
            }
            Some(_) => self.transactions.discard(&key),
            None => {}
        }
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let bytes = self.branch_invite(ctx, &contact, &flow, path.as_deref(), &branch);
        let Ok(invite) = parse_datagram_bytes(bytes.clone()) else {
            return;
        };
        let out = Outgoing {
            flow: flow.clone(),
            bytes,
        };
        let now = self.now();
        if self
            .transactions
            .start_proxied_invite(now, key.clone(), branch_transport(&flow, &path), out)
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
                    answered: false,
                    hung_up: false,
                },
            );
        }
    }

    /// The branch of every INVITE sent to `device` for `call`: unique to them, and to this
    /// run of the node (its start time).
    fn invite_branch(&self, call: CallId, device: DeviceId) -> String {
        format!("{STATEFUL}{:x}{call}{device}", self.unix_at_start)
    }

    /// Sends a branch's INVITE again, as the same transaction, over the flow of the device's
    /// latest REGISTER: a device that slept through it gets it now, one that has it absorbs
    /// the retransmission. Over the flow the branch already uses (a UDP device woken on
    /// the address it had), it is a retransmission sent at once. An INVITE that has had a
    /// provisional is sent once more (an app started afresh has lost it); one being
    /// cancelled is not, but its CANCEL is.
    fn reroute(&mut self, call: CallId, device: DeviceId) {
        let Some(DeviceFlow {
            flow,
            contact,
            path,
        }) = self.device_flow(device)
        else {
            return;
        };
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let Some(branch) = ctx.branches.get(&device) else {
            return;
        };
        let key = branch.key.clone();
        // A branch being cancelled that the device answered: only its CANCEL follows it,
        // never the INVITE of a call that is over.
        let cancelling = branch.cancel_sent;
        let branch = self.invite_branch(call, device);
        let bytes = self.branch_invite(ctx, &contact, &flow, path.as_deref(), &branch);
        let Ok(invite) = parse_datagram_bytes(bytes.clone()) else {
            return;
        };
        let out = Outgoing {
            flow: flow.clone(),
            bytes,
        };
        if !cancelling
            && self
                .transactions
                .reroute(self.now(), &key, branch_transport(&flow, &path), out)
                .is_err()
        {
            return;
        }
        self.branches.insert(key, (call, device), flow.id);
        let Some(branch) = self.branch_mut(call, device) else {
            return;
        };
        branch.flow = flow;
        branch.invite = invite;
        // A CANCEL on its way to the old flow goes again over the new one.
        if std::mem::take(&mut branch.cancel_sent) {
            self.send_cancel(call, device);
        }
    }

    /// CANCELs a branch (RFC 3261 §9.1), with an RFC 3326 Reason when a woken device is
    /// told why its call ended.
    pub(super) fn send_cancel(&mut self, call: CallId, device: DeviceId) {
        let now = self.now();
        let Some(branch) = self.branch_mut(call, device) else {
            return;
        };
        if branch.cancel_sent {
            return;
        }
        branch.cancel_sent = true;
        let invite = &branch.invite;
        let seq = invite.cseq().and_then(Result::ok).map_or(1, |c| c.seq);
        let mut cancel = in_transaction(invite, "CANCEL", seq)
            .header("To", raw(invite, HeaderName::To).unwrap_or_default());
        if let Some(Some(reason)) = branch.cancel_pending {
            cancel = cancel.header("Reason", reason_header(reason));
        }
        let Ok(cancel_key) = Key::client(branch.key.branch(), &transaction::Method::Cancel) else {
            return;
        };
        let out = Outgoing {
            flow: branch.flow.clone(),
            bytes: Bytes::from(cancel.to_bytes()),
        };
        // Through another node of the cluster (the INVITE's Route is its Path) as the INVITE.
        let path = raw(invite, HeaderName::Route).map(str::to_owned);
        let transport = branch_transport(&branch.flow, &path);
        let invite_key = branch.key.clone();
        // A CANCEL of an earlier INVITE of this call and device (same branch) is done with.
        self.transactions.discard(&cancel_key);
        let _ = self
            .transactions
            .start_client(now, cancel_key, transport, out);
        let _ = self.transactions.cancel_sent(now, &invite_key);
    }

    /// Acknowledges a 2xx that came too late and ends its dialog with a BYE.
    fn hang_up(&mut self, call: CallId, device: DeviceId, response: &Message) {
        let Some(branch) = self.branch_mut(call, device) else {
            return;
        };
        branch.hung_up = true;
        let (flow, fallback) = (branch.flow.clone(), branch.fallback());
        self.acknowledge(&flow, response, fallback, true);
    }

    /// ACK (and, with `bye`, BYE) for a 2xx nobody is on the line for (RFC 3261 §13.2.2.4,
    /// §15): to its Contact (else `fallback`), in the dialog the 2xx set up, over `flow`.
    pub(super) fn acknowledge(
        &mut self,
        flow: &Flow,
        response: &Message,
        fallback: Option<String>,
        bye: bool,
    ) {
        let contact = response
            .contacts()
            .next()
            .and_then(Result::ok)
            .and_then(|c| c.addr().map(|a| a.uri_raw.to_owned()));
        let Some(target) = contact.or(fallback) else {
            return;
        };
        let seq = response.cseq().and_then(Result::ok).map_or(1, |c| c.seq);
        let local = self.sent_by(flow.transport, flow.local);
        let requests = [("ACK", seq), ("BYE", seq + 1)];
        for &(method, seq) in &requests[..if bye { 2 } else { 1 }] {
            let via = format!(
                "SIP/2.0/{} {local};branch={STATELESS}h{}",
                flow.transport,
                self.next_id()
            );
            let request = RequestBuilder::new(method, &target)
                .header("Via", &via)
                .header("Max-Forwards", "70")
                .header("From", raw(response, HeaderName::From).unwrap_or_default())
                .header("To", raw(response, HeaderName::To).unwrap_or_default())
                .header(
                    "Call-ID",
                    raw(response, HeaderName::CallId).unwrap_or_default(),
                )
                .header("CSeq", &format!("{seq} {method}"));
            self.send(flow, Bytes::from(request.to_bytes()));
        }
    }

    /// Relays the last response of `device`'s branch: its provisional (`final_code` none),
    /// or the final response `final_code` it ended with — made here when the branch only
    /// acted as if it had received it (a 408 on Timer C, RFC 3261 §16.8).
    fn relay(&mut self, call: CallId, device: DeviceId, final_code: Option<u16>) {
        let Some(ctx) = self.calls.by_id.get(&call) else {
            return;
        };
        let response = ctx
            .branches
            .get(&device)
            .and_then(|b| b.response.as_ref())
            .and_then(|r| r.status().map(|s| (r, s)));
        let (response, status) = match (response, final_code) {
            (Some((r, s)), None) if s < 200 => (r, s),
            (Some((r, s)), Some(code)) if s == code => (r, s),
            (_, Some(code)) => return self.respond(call, code),
            (_, None) => return,
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

    /// A response the proxy makes itself: a final one (404, 480, 486, 487, 500, 503, 603) or
    /// the 180 of an app ringing from its push (specs/parking.md §9); all with the call's
    /// one To tag of ours. The 180 opens an early dialog at the caller, so it names us as
    /// Contact (RFC 3261 §12.1.1); it has no body, and is not sent to a caller that requires
    /// reliable provisionals (RFC 3262 §3: an unreliable 180 would break its Require).
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
        if code == 180 {
            let reliable = (ctx.invite.option_tags(HeaderName::Require))
                .is_ok_and(|tags| tags.iter().any(|t| t.eq_ignore_ascii_case("100rel")));
            if reliable {
                return;
            }
            let (transport, local) = (ctx.flow.transport, ctx.flow.local);
            let contact = format!(
                "<sip:{}{}>",
                self.sent_by(transport, local),
                transport.uri_param()
            );
            response = response.header("Contact", &contact);
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
        // The caller is answered and the core has let go; a branch answered 2xx still
        // has its 2xx retransmitted by the device until the caller's ACK arrives, and
        // each goes on to the caller (RFC 6026 §7.2): kept until that transaction ends.
        let done = self.calls.by_id.get(&call).is_some_and(|c| {
            c.answered
                && !c
                    .branches
                    .values()
                    .any(|b| b.answered && self.branches.get(&b.key).is_some())
        }) && !self.driver.core().holds(call);
        if done {
            self.calls.unpark(call);
            if let Some(ctx) = self.calls.by_id.remove(&call) {
                self.calls.by_invite.remove(&ctx.key);
            }
        }
    }
}

/// A device's response as the caller gets it: our Via off, and the RFC 8599 pn-* parameters
/// off its Contact URIs (many apps put them in every Contact), so that no push token reaches
/// another user (RFC 8599 §13).
/// How a branch's transaction sends over `flow`. Through another node of the cluster
/// (`path`) it retransmits as over UDP, whatever the connection to that node: the node
/// relays it statelessly, possibly over UDP to the device, where only our retransmissions
/// make up for a datagram lost (the device absorbs a duplicate).
fn branch_transport(flow: &Flow, path: &Option<String>) -> transaction::Transport {
    if path.is_some() {
        transaction::Transport::Unreliable
    } else {
        tx_transport(flow)
    }
}

/// Where a device's INVITE goes: see [`Node::device_flow`].
struct DeviceFlow {
    flow: Flow,
    contact: String,
    path: Option<String>,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse_datagram;

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
}
