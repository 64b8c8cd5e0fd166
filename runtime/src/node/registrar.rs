//! REGISTER: bindings, their expiry, RFC 8599 push parameters and Feature-Caps, and the
//! flows devices are reachable on.
//!
//! A binding is written to the store before its 200 OK goes out, so an answered REGISTER
//! survives a restart. Only then is the core told the device registered: a parked call
//! goes to a device whose registration the registrar accepted (RFC 8599 §5.6.2).

use std::time::Instant;

use pushpark_model::{AorId, DeviceId, Event, Flow as CoreFlow, Target, TokenUse};

use super::pike::{log_block, Block, Pike};
use super::{log_failure, Node, Outgoing, PushTag, StoreDone, Stored};
use crate::auth::{parse_authorization, ChallengeKind, ParseError as AuthParseError, Verdict};
use crate::config::Backend;
use crate::metrics::Metrics;
use crate::push::{PushKind, PushRequest};
use crate::sip::{Contact, Message, SipUri, Uri};
use crate::store::{
    Applied, Binding, BindingId, Change, ContactSpec, Register, Store, StoreError, Version,
};
use crate::transaction::Key;
use crate::transport::{Flow, FlowId};
use crate::Map;

/// The Retry-After, in seconds, of the 503 a REGISTER gets while the bindings store cannot
/// be reached: long enough for a Redis restart or failover, short enough that a woken phone
/// still gets its parked call.
const STORE_RETRY_AFTER: u32 = 2;

/// The bindings of every callee, as in the store, plus what only lives in memory: the
/// flow each device last registered over, and the ids the core knows callees by.
#[derive(Default)]
pub(crate) struct Bindings {
    by_aor: Map<String, Vec<Binding>>,
    aor_of: Map<DeviceId, String>,
    flows: Map<DeviceId, Flow>,
    /// Devices registered on another node of the cluster, reached over the connection to
    /// it (their entry in `flows`), with when that node's notice came.
    remote: Map<DeviceId, Instant>,
    aor_ids: Map<String, AorId>,
    /// The expiry each binding last got a refresh push for: one push per expiry.
    refreshed: Map<DeviceId, u64>,
    /// The last callee id handed out.
    last_aor_id: u64,
    /// In a cluster, each AOR's version: that of the latest write of it this node knows of
    /// (its own REGISTERs' and the notices it read).
    versions: Map<String, Version>,
    /// Tokens forgotten as dead, by binding, until a snapshot of the store shows them gone:
    /// a REGISTER's snapshot read before the store forgot one must not bring it back.
    dead_tokens: Map<BindingId, String>,
}

impl Bindings {
    /// The bindings the store held at start (those not expired).
    pub fn new(stored: Vec<Binding>) -> Self {
        let mut bindings = Self::default();
        for binding in stored {
            let aor = binding.aor.clone();
            bindings.aor_of.insert(device(binding.id), aor.clone());
            bindings.by_aor.entry(aor).or_default().push(binding);
        }
        bindings
    }

    /// The id of `aor`, if it has one (a binding, or a call the core holds).
    pub fn known_aor(&self, aor: &str) -> Option<AorId> {
        self.aor_ids.get(aor).copied()
    }

    pub fn aor_id(&mut self, aor: &str) -> AorId {
        if let Some(&id) = self.aor_ids.get(aor) {
            return id;
        }
        self.last_aor_id += 1;
        let id = AorId(self.last_aor_id);
        self.aor_ids.insert(aor.to_owned(), id);
        id
    }

    /// Forgets the ids of callees with no binding that `in_use` (the core) no longer holds
    /// calls for: a stranger's INVITEs for made-up users leave nothing behind. An id is
    /// never handed out again.
    pub fn forget_unused_aors(&mut self, in_use: impl Fn(AorId) -> bool) {
        let by_aor = &self.by_aor;
        self.aor_ids
            .retain(|aor, id| by_aor.contains_key(aor) || in_use(*id));
        // A notice is read milliseconds after its write: one older than the write that
        // left an AOR without bindings is long read by the sweep that forgets it.
        self.versions.retain(|aor, _| by_aor.contains_key(aor));
    }

    /// The unexpired bindings of `aor`.
    pub fn of(&self, aor: &str, now: u64) -> impl Iterator<Item = &Binding> {
        self.by_aor
            .get(aor)
            .into_iter()
            .flatten()
            .filter(move |b| b.expires_at > now)
    }

    pub fn get(&self, id: DeviceId) -> Option<&Binding> {
        let aor = self.aor_of.get(&id)?;
        self.by_aor.get(aor)?.iter().find(|b| device(b.id) == id)
    }

    pub fn flow(&self, id: DeviceId) -> Option<&Flow> {
        self.flows.get(&id)
    }

    /// When the notice came that `id` registered on another node, if it did.
    pub fn remote_since(&self, id: DeviceId) -> Option<Instant> {
        self.remote.get(&id).copied()
    }

    /// `id` registered over `flow`, one of ours.
    pub fn bind_flow(&mut self, id: DeviceId, flow: Flow) {
        self.remote.remove(&id);
        self.flows.insert(id, flow);
    }

    /// `id` registered on another node, reached over `flow` to it; the notice came `at`.
    pub fn bind_remote(&mut self, id: DeviceId, flow: Flow, at: Instant) {
        self.remote.insert(id, at);
        self.flows.insert(id, flow);
    }

    /// `id` no longer registers over a flow this node knows.
    pub fn unbind_flow(&mut self, id: DeviceId) {
        self.remote.remove(&id);
        self.flows.remove(&id);
    }

    /// The core's view of `aor`'s devices: each one's push token, and what `facts` knows
    /// of the flow of its last REGISTER (`Closed` when it has none). Whether the device is
    /// awake is the core's judgement, not ours.
    pub fn targets(
        &self,
        aor: &str,
        now: u64,
        facts: impl Fn(DeviceId, &Flow) -> CoreFlow,
    ) -> Vec<Target> {
        self.of(aor, now)
            .map(|b| {
                let id = device(b.id);
                Target {
                    device: id,
                    flow: self
                        .flows
                        .get(&id)
                        .map_or(CoreFlow::Closed, |flow| facts(id, flow)),
                    pushable: b.push.is_some(),
                }
            })
            .collect()
    }

    /// Whether `version` (a notice's id) is newer than what this node knows of `aor`.
    pub fn newer(&self, aor: &str, version: &str) -> bool {
        match (self.versions.get(aor), Version::of(version)) {
            (Some(known), Some(version)) => version > *known,
            _ => true,
        }
    }

    fn replace(&mut self, aor: &str, applied: &Applied) {
        if let Some(version) = applied.version.as_deref().and_then(Version::of) {
            self.versions.insert(aor.to_owned(), version);
        }
        if let Some(old) = self.by_aor.get(aor) {
            for b in old {
                self.aor_of.remove(&device(b.id));
            }
        }
        for id in &applied.removed {
            self.unbind_flow(device(*id));
        }
        let mut bindings = applied.bindings.clone();
        for b in &mut bindings {
            self.aor_of.insert(device(b.id), aor.to_owned());
            let Some(dead) = self.dead_tokens.get(&b.id) else {
                continue;
            };
            if b.push.as_ref().is_some_and(|p| p.prid == *dead) {
                // Read before the store forgot it: still dead.
                b.push = None;
            } else {
                self.dead_tokens.remove(&b.id);
            }
        }
        self.by_aor.insert(aor.to_owned(), bindings);
    }

    /// The push token of `id` is dead.
    pub fn forget_push(&mut self, id: DeviceId) -> Option<(BindingId, String)> {
        let aor = self.aor_of.get(&id)?;
        let binding = self
            .by_aor
            .get_mut(aor)?
            .iter_mut()
            .find(|b| device(b.id) == id)?;
        let push = binding.push.take()?;
        self.dead_tokens.insert(binding.id, push.prid.clone());
        Some((binding.id, push.prid))
    }

    /// Drops the bindings that have expired and returns them, callee and device.
    pub fn expire(&mut self, now: u64) -> Vec<(String, DeviceId)> {
        let mut gone = Vec::new();
        for (aor, bindings) in self.by_aor.iter_mut() {
            bindings.retain(|b| {
                let keep = b.expires_at > now;
                if !keep {
                    gone.push((aor.clone(), device(b.id)));
                }
                keep
            });
        }
        self.by_aor.retain(|_, bindings| !bindings.is_empty());
        for (_, id) in &gone {
            self.aor_of.remove(id);
            self.unbind_flow(*id);
            self.refreshed.remove(id);
        }
        self.dead_tokens
            .retain(|id, _| !gone.iter().any(|(_, d)| *d == device(*id)));
        gone
    }

    /// Bindings held (some may have expired since the last sweep).
    pub fn count(&self) -> usize {
        self.aor_of.len()
    }

    /// Whether a device's binding is reached over `flow`.
    pub fn uses_flow(&self, flow: FlowId) -> bool {
        self.flows.values().any(|f| f.id == flow)
    }

    /// A TCP connection closed: the devices on it can only be pushed now.
    pub fn flow_closed(&mut self, flow: FlowId) {
        self.flows.retain(|_, f| f.id != flow);
        let flows = &self.flows;
        self.remote.retain(|id, _| flows.contains_key(id));
    }
}

/// The core's id of a binding: the store's, which survives restarts.
pub(crate) fn device(id: BindingId) -> DeviceId {
    DeviceId(id.0)
}

/// A REGISTER whose store write has finished.
pub(crate) struct RegisterDone {
    flow: Flow,
    key: Key,
    request: Message,
    aor: String,
    /// The contacts this REGISTER added or refreshed.
    upserted: Vec<ContactSpec>,
    feature_caps: Vec<String>,
    /// RFC 5626: the UA registered a flow (instance and reg-id) and supports outbound.
    outbound: bool,
    result: Result<Applied, StoreError>,
}

/// The normalised address-of-record of a To or From URI: `sip:user@domain`.
pub(crate) fn aor_of(uri: &SipUri<'_>) -> Option<String> {
    let user = uri.user?;
    Some(format!("sip:{user}@{}", uri.host_raw.to_ascii_lowercase()))
}

/// The Contact URI without the RFC 8599 parameters, which must never reach other users.
pub(crate) fn without_pn_params(contact: &str) -> String {
    let (uri, headers) = match contact.split_once('?') {
        Some((uri, headers)) => (uri, Some(headers)),
        None => (contact, None),
    };
    let mut parts = uri.split(';');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for p in parts.filter(|p| !p.to_ascii_lowercase().starts_with("pn-")) {
        out.push(';');
        out.push_str(p);
    }
    if let Some(headers) = headers {
        out.push('?');
        out.push_str(headers);
    }
    out
}

impl Node {
    /// The URI a digest response must be for: the Request-URI, or any SIP URI naming this
    /// server (SIPp and some phones put the registrar's address there). The response hash
    /// covers the URI, so accepting either lets no credentials be replayed elsewhere.
    pub(crate) fn digest_uri<'a>(&self, credentials_uri: &'a str, request_uri: &'a str) -> &'a str {
        match SipUri::parse(credentials_uri) {
            Ok(uri) if uri.user.is_none() && self.is_local_host(uri.host_raw) => credentials_uri,
            _ => request_uri,
        }
    }

    pub(crate) fn on_register(&mut self, flow: Flow, key: Key, request: Message) {
        let reply = |node: &mut Node, code: u16, reason: &str, extra: &[(&str, String)]| {
            let mut response = request.response(code).reason(reason);
            if code >= 200 {
                response = response.to_tag(&format!("pp{}", node.next_id()));
            }
            for (name, value) in extra {
                response = response.header(name, value);
            }
            let bytes = response.to_bytes().into();
            let out = Outgoing {
                flow: flow.clone(),
                bytes,
            };
            let _ = node.transactions.send_response(node.now(), &key, code, out);
        };
        // The AOR: a SIP URI of one of our domains (RFC 3261 §10.3 steps 1, 5).
        let to = match request.to_header() {
            Some(Ok(to)) => to,
            _ => return reply(self, 400, "Malformed To", &[]),
        };
        let Uri::Sip(to_uri) = &to.uri else {
            return reply(self, 400, "To is not a SIP URI", &[]);
        };
        let Some(aor) = aor_of(to_uri) else {
            return reply(self, 400, "To has no user", &[]);
        };
        if !self.is_local_host(to_uri.host_raw) {
            return reply(self, 403, "Not a domain of this registrar", &[]);
        }
        // Digest authentication: the authenticated user registers for its own AOR only.
        if let Some((digest, users)) = &self.auth {
            let now = self.unix_now();
            let uri = request.request_uri_str().unwrap_or_default();
            let verdict = request
                .first_str(crate::sip::HeaderName::Authorization)
                .and_then(Result::ok)
                .map(|value| match parse_authorization(value) {
                    Ok(credentials) => {
                        let uri = self.digest_uri(&credentials.uri, uri);
                        digest.verify_user(&credentials, "REGISTER", uri, users, now)
                    }
                    Err(AuthParseError::UnknownScheme(_)) | Err(_) => Verdict::Stale,
                });
            let user_ok = |name: &str| to_uri.user == Some(name);
            match verdict {
                Some(Verdict::Authenticated { username }) if user_ok(&username) => {}
                Some(Verdict::Authenticated { username }) => {
                    let failure = (
                        flow.peer.ip(),
                        username.as_str(),
                        "REGISTER",
                        "not the user's address",
                    );
                    security_failure(&mut self.pike, &self.metrics, self.clock, failure);
                    return reply(self, 403, "Not allowed to register this address", &[]);
                }
                other => {
                    if let Some(Verdict::Invalid(reason)) = &other {
                        let user = claimed_user(&request, crate::sip::HeaderName::Authorization);
                        let reason = reason.to_string();
                        let failure = (flow.peer.ip(), user.as_str(), "REGISTER", reason.as_str());
                        security_failure(&mut self.pike, &self.metrics, self.clock, failure);
                    }
                    let stale = matches!(other, Some(Verdict::Stale));
                    let header = ChallengeKind::Www.challenge_header();
                    let challenges: Vec<(&str, String)> = digest
                        .challenges(now, stale && other.is_some())
                        .into_iter()
                        .map(|c| (header, c))
                        .collect();
                    return reply(self, 401, "Unauthorized", &challenges);
                }
            }
        }
        let call_id = match request.call_id() {
            Some(Ok(id)) => id.to_owned(),
            _ => return reply(self, 400, "Missing Call-ID", &[]),
        };
        let cseq = match request.cseq() {
            Some(Ok(cseq)) => cseq.seq,
            _ => return reply(self, 400, "Bad CSeq", &[]),
        };
        let header_expires = match request.expires() {
            Some(Ok(e)) => Some(u64::from(e)),
            Some(Err(_)) => None,
            None => None,
        };
        let registrar = &self.config.registrar;
        let (min, max, default) = (
            registrar.min_expires.as_secs(),
            registrar.max_expires.as_secs(),
            registrar.default_expires.as_secs(),
        );
        let now = self.unix_now();
        let mut changes = Vec::new();
        let mut upserted = Vec::new();
        let mut feature_caps = Vec::new();
        let contacts: Vec<_> = request.contacts().collect();
        if contacts.len() > registrar.max_contacts_per_register {
            return reply(self, 403, "Too many contacts", &[]);
        }
        for contact in &contacts {
            let contact = match contact {
                Ok(c) => c,
                Err(_) => return reply(self, 400, "Malformed Contact", &[]),
            };
            let addr = match contact {
                Contact::Star => {
                    if contacts.len() != 1 || header_expires != Some(0) {
                        return reply(
                            self,
                            400,
                            "Contact: * needs Expires: 0 and no other Contact",
                            &[],
                        );
                    }
                    changes.push(Change::RemoveAll);
                    continue;
                }
                Contact::Addr(addr) => addr,
            };
            if !addr.bracketed && addr.uri_raw.contains('?') {
                return reply(self, 400, "Contact with headers must be in <>", &[]);
            }
            let Uri::Sip(uri) = &addr.uri else {
                return reply(self, 400, "Contact is not a SIP URI", &[]);
            };
            let mut spec = ContactSpec::new(addr.uri_raw);
            if let Some(instance) = contact.sip_instance() {
                spec = spec.instance(instance);
            }
            if let Some(reg_id) = contact.reg_id() {
                spec = spec.reg_id(reg_id);
            }
            spec = spec.pnsreg(addr.params.get("+sip.pnsreg").is_some());
            // In a cluster: how the other nodes reach the device, through us.
            if let Some(path) = self.path_for(&flow) {
                spec = spec.path(path);
            }
            // RFC 8599 §5.6.1: a push provider we do not serve gets 555; a pn-provider
            // without a token asks which providers we serve.
            if let Some(provider) = uri.pn_provider() {
                let supported: Vec<&String> = self.config.push.routes.keys().collect();
                match provider {
                    Some(p) if !self.config.serves_push_provider(p) => {
                        return reply(self, 555, "Push Notification Service Not Supported", &[]);
                    }
                    Some(p) => feature_caps.push(p.to_ascii_lowercase()),
                    None => feature_caps.extend(supported.into_iter().cloned()),
                }
            }
            let expires = contact
                .expires()
                .map(u64::from)
                .or(header_expires)
                .unwrap_or(default);
            if expires == 0 {
                changes.push(Change::Remove(spec));
                continue;
            }
            if expires < min {
                return reply(
                    self,
                    423,
                    "Interval Too Brief",
                    &[("Min-Expires", min.to_string())],
                );
            }
            changes.push(Change::Upsert {
                contact: spec.clone(),
                expires_at: now + expires.min(max),
            });
            upserted.push(spec);
        }
        feature_caps.sort();
        feature_caps.dedup();
        let supports_outbound = request
            .option_tags(crate::sip::HeaderName::Supported)
            .is_ok_and(|tags| tags.iter().any(|t| t.eq_ignore_ascii_case("outbound")));
        let outbound = supports_outbound
            && upserted
                .iter()
                .any(|s| s.instance.is_some() && s.reg_id.is_some());
        if changes.is_empty() {
            // A query of the current bindings (RFC 3261 §10.2.3).
            let bindings: Vec<Binding> = self.bindings.of(&aor, now).cloned().collect();
            let contacts = contact_headers(&bindings, now);
            return reply(self, 200, "OK", &contacts);
        }
        let register = Register {
            call_id,
            cseq,
            changes,
            max_bindings: registrar.max_bindings_per_aor,
        };
        let (done_aor, lane) = (aor.clone(), aor.clone());
        self.with_store_for(
            &lane,
            move |store: &mut Store| store.apply(&done_aor, &register, now),
            move |result, committed| {
                let result = committed
                    .map_err(|e| StoreError::NotCommitted(e.to_string()))
                    .and(result);
                StoreDone::new(Some(Stored::Registered(RegisterDone {
                    flow,
                    key,
                    request,
                    aor,
                    upserted,
                    feature_caps,
                    outbound,
                    result,
                })))
            },
        );
    }

    pub(crate) fn on_registered(&mut self, done: RegisterDone) {
        let RegisterDone {
            flow,
            key,
            request,
            aor,
            upserted,
            feature_caps,
            outbound,
            result,
        } = done;
        let now = self.unix_now();
        if let Err(e) = &result {
            tracing::debug!("REGISTER for {aor} not applied: {e}");
        }
        let (code, reason, headers, applied) = match result {
            Ok(applied) => {
                let mut headers = contact_headers(&applied.bindings, now);
                let pnsreg = upserted.iter().any(|s| s.pnsreg);
                for pns in &feature_caps {
                    let mut caps = format!("*;+sip.pns=\"{pns}\"");
                    if pnsreg {
                        caps.push_str(";+sip.pnsreg=\"130\"");
                    }
                    headers.push(("Feature-Caps", caps));
                }
                if outbound {
                    headers.push(("Require", "outbound".to_owned()));
                }
                (200, "OK", headers, Some(applied))
            }
            // RFC 3261 §10.3 step 7: the request is aborted; it is no fault of the syntax.
            Err(StoreError::OutOfOrder { .. }) => (500, "Out-of-order REGISTER", Vec::new(), None),
            Err(StoreError::TooManyBindings { .. }) => {
                (403, "Too many registered contacts", Vec::new(), None)
            }
            // RFC 3261 §21.5.4: nothing was stored; the phone tries again, here or on
            // another node.
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!("store: {e}");
                let retry = ("Retry-After", STORE_RETRY_AFTER.to_string());
                (503, "Bindings store unavailable", vec![retry], None)
            }
            Err(e) => {
                tracing::error!("store: {e}");
                (500, "Bindings store failed", Vec::new(), None)
            }
        };
        let mut response = request
            .response(code)
            .reason(reason)
            .to_tag(&format!("pp{}", self.next_id()));
        for (name, value) in &headers {
            response = response.header(name, value);
        }
        let out = Outgoing {
            flow: flow.clone(),
            bytes: response.to_bytes().into(),
        };
        let _ = self.transactions.send_response(self.now(), &key, code, out);
        let Some(applied) = applied else { return };
        let aor_id = self.take_bindings(&aor, &applied);
        // Only now, after the 200 OK: the devices that registered get their parked calls.
        for spec in &upserted {
            let found = applied.bindings.iter().find(|b| {
                b.contact == spec.contact
                    || (spec.instance.is_some() && b.instance == spec.instance)
            });
            if let Some(binding) = found {
                let id = device(binding.id);
                self.bindings.bind_flow(id, flow.clone());
                self.feed(Event::DeviceRegistered {
                    aor: aor_id,
                    device: id,
                });
            }
        }
    }
}

impl Node {
    /// `aor`'s bindings are now `applied`'s (a REGISTER stored here or on another node of
    /// the cluster): the core hears of the devices it removed. Returns the AOR's id.
    pub(crate) fn take_bindings(&mut self, aor: &str, applied: &Applied) -> AorId {
        self.bindings.replace(aor, applied);
        let aor_id = self.bindings.aor_id(aor);
        for id in &applied.removed {
            self.feed(Event::DeviceUnavailable {
                aor: aor_id,
                device: device(*id),
            });
        }
        aor_id
    }

    /// Forgets expired bindings, in memory and in the store, and tells the core; reports the
    /// bindings due a refresh push to the core, which decides which get one.
    pub(crate) fn sweep_bindings(&mut self) {
        let now = self.unix_now();
        self.refresh_pushes(now);
        for (aor, device) in self.bindings.expire(now) {
            let aor = self.bindings.aor_id(&aor);
            self.feed(Event::DeviceUnavailable { aor, device });
        }
        self.with_store(
            move |store| store.sweep_expired(now),
            log_failure("sweeping expired bindings"),
        );
    }
}

impl Node {
    /// RFC 8599 §5.5: every binding with a push token that will expire before the next sweep
    /// plus `refresh_push_before`, and has had no refresh push for this expiry, is reported
    /// to the core with what its token may carry; the core decides which get a push
    /// (`Effect::RefreshPush`, carried out by [`refresh_push`](Self::refresh_push)). A
    /// binding that expired or was removed is never reported. One the core held back is
    /// reported again on the next sweep while it is still due (specs/parking.md §7).
    fn refresh_pushes(&mut self, now: u64) {
        let registrar = &self.config.registrar;
        let horizon =
            now + registrar.refresh_push_before.as_secs() + registrar.sweep_interval.as_secs();
        let refreshed = &self.bindings.refreshed;
        let due: Vec<(String, DeviceId, TokenUse)> = self
            .bindings
            .by_aor
            .iter()
            .flat_map(|(aor, bindings)| bindings.iter().map(move |b| (aor, b)))
            .filter(|(_, b)| b.expires_at > now && b.expires_at <= horizon)
            .filter(|(_, b)| refreshed.get(&device(b.id)) != Some(&b.expires_at))
            .filter_map(|(aor, b)| {
                let push = b.push.as_ref()?;
                Some((aor.clone(), device(b.id), token_use(&push.provider)))
            })
            .collect();
        for (aor, device, token) in due {
            let aor = self.bindings.aor_id(&aor);
            self.feed(Event::BindingExpiring { aor, device, token });
        }
    }

    /// Carries out `Effect::RefreshPush`: one binding-refresh push per expiry of the
    /// binding (and in a cluster, per expiry by one node alone).
    pub(crate) fn refresh_push(&mut self, id: DeviceId) {
        let now = self.unix_now();
        let Some(binding) = self.bindings.get(id).filter(|b| b.expires_at > now) else {
            return;
        };
        let Some(push) = binding.push.clone() else {
            return;
        };
        let (aor, call_id, expires_at) = (
            binding.aor.clone(),
            binding.call_id.clone(),
            binding.expires_at,
        );
        if self.bindings.refreshed.insert(id, expires_at) == Some(expires_at) {
            return;
        }
        let request = PushRequest {
            id: format!("refresh-{id}-{}", self.next_id()),
            kind: PushKind::BindingRefresh,
            callee_aor: aor,
            pn_provider: push.provider,
            pn_prid: push.prid,
            pn_param: push.param,
            caller_uri: String::new(),
            caller_display_name: None,
            call_id,
            deadline: std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at),
            answer_token: None,
            answer_url: None,
        };
        if self.config.store.backend == Backend::Sqlite {
            self.send_refresh_push(id, request);
            return;
        }
        // Every node of a cluster knows the binding, and each one's core asks for this
        // push: the first node to claim it in the shared store sends it (specs §8).
        let ttl = std::time::Duration::from_secs(expires_at.saturating_sub(now) + 60);
        self.with_store(
            move |store| store.claim_refresh(BindingId(id.0), expires_at, ttl),
            move |claimed, _| match claimed {
                Ok(true) => StoreDone::new(Some(Stored::RefreshClaimed(id, request))),
                Ok(false) => StoreDone::new(None),
                Err(e) => {
                    tracing::warn!("store: no refresh push for binding {id}: {e}");
                    StoreDone::new(None)
                }
            },
        );
    }

    /// Sends a binding-refresh push, counted against the device's push budget (beyond it,
    /// none for this expiry).
    pub(crate) fn send_refresh_push(&mut self, id: DeviceId, request: PushRequest) {
        let token = self.budget_key(&[&request.pn_provider, &request.pn_prid]);
        if !self.push_budget.allow(token, self.instant()) {
            return;
        }
        self.submit_push(request, PushTag::Refresh(id));
    }
}

/// What a token of the push provider `provider` (RFC 8599 `pn-provider`) may carry: an APNs
/// VoIP token only the push of a call the app reports to CallKit (iOS kills an app that
/// gets any other); every other provider's, any push.
fn token_use(provider: &str) -> TokenUse {
    if provider.eq_ignore_ascii_case("apns") || provider.eq_ignore_ascii_case("apns.dev") {
        TokenUse::CallsOnly
    } else {
        TokenUse::Any
    }
}

/// One line per refused credential, at warn, in the form `pushpark.fail2ban` matches:
/// `security: auth failure from <ip> user "<name>" (<method>): <reason>`; the failure
/// counts toward blocking the source ([`Pike`]).
pub(crate) fn security_failure(
    pike: &mut Pike,
    metrics: &Metrics,
    now: Instant,
    failure: (std::net::IpAddr, &str, &str, &str),
) {
    let (ip, user, method, reason) = failure;
    tracing::warn!("security: auth failure from {ip} user {user:?} ({method}): {reason}");
    if pike.auth_failure(now, ip) {
        log_block(ip, Block::AuthFailures, pike.block_for());
        metrics.limit_hit(Block::AuthFailures.limit());
    }
}

/// The user name credentials in `header` claim, for the log ("" if none can be read).
pub(crate) fn claimed_user(request: &Message, header: crate::sip::HeaderName) -> String {
    request
        .first_str(header)
        .and_then(Result::ok)
        .and_then(|value| parse_authorization(value).ok())
        .map(|c| c.username.to_string())
        .unwrap_or_default()
}

/// `Contact` headers of a 200 OK to REGISTER: every binding with its remaining time.
fn contact_headers(bindings: &[Binding], now: u64) -> Vec<(&'static str, String)> {
    bindings
        .iter()
        .map(|b| {
            let mut value = format!(
                "<{}>;expires={}",
                b.contact,
                b.expires_at.saturating_sub(now)
            );
            if let Some(instance) = &b.instance {
                value.push_str(&format!(
                    ";+sip.instance=\"{}\"",
                    instance.trim_matches('"')
                ));
            }
            ("Contact", value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::auth::Secret;
    use crate::config::{Config, Transport};
    use crate::metrics::Metrics;
    use crate::node::NodeOptions;
    use crate::push::PushKind;
    use crate::sip::parse_datagram;
    use crate::store::PushParams;
    use crate::transport::Inbound;

    const UNIX: u64 = 1_800_000_000;
    const SERVER: &str = "127.0.0.1:5060";
    const BOB: &str = "sip:bob@127.0.0.1";

    fn binding(id: u64, provider: Option<&str>, expires_in: u64) -> Binding {
        Binding {
            id: BindingId(id),
            aor: BOB.to_owned(),
            contact: format!("sip:bob@192.0.2.{id}:5062"),
            instance: None,
            reg_id: None,
            push: provider.map(|p| PushParams {
                provider: p.to_owned(),
                prid: format!("token{id}"),
                param: None,
            }),
            pnsreg: false,
            q: None,
            call_id: format!("reg{id}"),
            cseq: 1,
            expires_at: UNIX + expires_in,
            updated_at: UNIX,
            path: None,
        }
    }

    fn node(start: Instant, bindings: Vec<Binding>) -> Node {
        Node::new(
            Config::default(),
            start,
            NodeOptions {
                listeners: vec![(Transport::Udp, SERVER.parse().expect("an address"))],
                bindings,
                users: None,
                secret: Secret::generate(),
                boot: 1,
                unix_time: UNIX,
                metrics: Arc::new(Metrics::default()),
            },
        )
    }

    /// Runs the node's timers and sweeps, each at its time, up to `at`; returns the pushes
    /// handed out meanwhile.
    fn run_until(node: &mut Node, at: Instant) -> Vec<(PushRequest, PushTag)> {
        while node.poll_timeout() <= at {
            let due = node.poll_timeout();
            node.handle_timeout(due);
        }
        std::iter::from_fn(|| node.poll_push()).collect()
    }

    #[test]
    fn invites_for_made_up_users_leave_no_callee_behind() {
        let start = Instant::now();
        let mut node = node(start, vec![binding(1, Some("fcm"), 3_600)]);
        let server: SocketAddr = SERVER.parse().expect("an address");
        for n in 0..100 {
            let invite = format!(
                "INVITE sip:nobody{n}@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKscan{n}\r\n\
Max-Forwards: 70\r\n\
From: <sip:scanner@192.0.2.10>;tag=s{n}\r\n\
To: <sip:nobody{n}@127.0.0.1>\r\n\
Call-ID: scan-{n}@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
            );
            let message = parse_datagram(invite.as_bytes()).expect("the INVITE parses");
            // A scan spread over many addresses, each below the rate limit.
            let scanner = SocketAddr::from(([192, 0, 2, 10 + n / 20], 5060));
            let flow = Flow::udp(server, scanner);
            node.handle_inbound(start, Inbound::Message { flow, message });
        }
        let bob = node.bindings.aor_id(BOB);
        assert!(
            node.bindings.aor_ids.len() > 100,
            "ids while the calls are answered"
        );
        run_until(&mut node, start + Duration::from_secs(31));
        assert_eq!(
            node.bindings.aor_ids.values().copied().collect::<Vec<_>>(),
            vec![bob],
            "only the callee with a binding keeps its id"
        );
        let new = node.bindings.aor_id("sip:new@127.0.0.1");
        assert!(new.0 > bob.0 && new.0 > 100, "never reused: {new:?}");
    }

    #[test]
    fn a_dead_token_stays_forgotten_when_a_snapshot_read_before_the_store_forgot_it_comes_back() {
        let mut bindings = Bindings::new(vec![binding(1, Some("fcm"), 100)]);
        let snapshot = |push: Option<&str>| crate::store::Applied {
            bindings: vec![binding(1, push, 100)],
            removed: Vec::new(),
            version: None,
        };
        let token = |b: &Bindings| {
            b.by_aor[BOB][0]
                .push
                .as_ref()
                .map(|p| (p.provider.clone(), p.prid.clone()))
        };
        assert_eq!(
            bindings.forget_push(DeviceId(1)),
            Some((BindingId(1), "token1".to_owned()))
        );
        // Another device's REGISTER, read before the store forgot the token, commits.
        bindings.replace(BOB, &snapshot(Some("fcm")));
        assert_eq!(token(&bindings), None, "still dead");
        // The store has caught up; later the app registers a fresh token.
        bindings.replace(BOB, &snapshot(None));
        let mut fresh = snapshot(Some("fcm"));
        fresh.bindings[0].push.as_mut().expect("a token").prid = "token-new".to_owned();
        bindings.replace(BOB, &fresh);
        assert_eq!(
            token(&bindings),
            Some(("fcm".to_owned(), "token-new".to_owned()))
        );
        // And the old one is no longer held against it.
        bindings.replace(BOB, &snapshot(Some("fcm")));
        assert_eq!(
            token(&bindings),
            Some(("fcm".to_owned(), "token1".to_owned()))
        );
    }

    #[test]
    fn binding_refresh_push_goes_once_per_expiry_to_a_token_for_any_push_and_never_to_apns_voip() {
        let start = Instant::now();
        let mut node = node(
            start,
            vec![
                binding(1, Some("fcm"), 100),
                binding(2, Some("apns"), 100),
                binding(3, Some("APNS.dev"), 100),
                binding(4, Some("fcm"), 10_000),
                binding(5, None, 100),
            ],
        );
        let pushes = run_until(&mut node, start + Duration::from_secs(30));
        let sent: Vec<_> = pushes
            .iter()
            .map(|(r, tag)| (r.kind, r.pn_prid.as_str(), *tag))
            .collect();
        assert_eq!(
            sent,
            [(
                PushKind::BindingRefresh,
                "token1",
                PushTag::Refresh(DeviceId(1))
            )]
        );
        assert!(
            run_until(&mut node, start + Duration::from_secs(95)).is_empty(),
            "one refresh push per expiry, none to an APNs VoIP token"
        );
    }

    #[test]
    fn binding_refresh_push_held_back_while_a_call_pushes_the_device_goes_on_a_later_sweep() {
        let start = Instant::now();
        let mut node = node(start, vec![binding(1, Some("fcm"), 170)]);
        let invite = "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcall1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=a1\r\n\
To: <sip:bob@127.0.0.1>\r\n\
Call-ID: call-1@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060>\r\n\
Content-Length: 0\r\n\r\n";
        let server: SocketAddr = SERVER.parse().expect("an address");
        let caller: SocketAddr = "192.0.2.10:5060".parse().expect("an address");
        let message = parse_datagram(invite.as_bytes()).expect("the INVITE parses");
        node.handle_inbound(
            start + Duration::from_secs(1),
            Inbound::Message {
                flow: Flow::udp(server, caller),
                message,
            },
        );
        let call_push: Vec<_> = std::iter::from_fn(|| node.poll_push()).collect();
        assert!(
            matches!(
                call_push.as_slice(),
                [(r, PushTag::Call(_, DeviceId(1)))] if r.kind == PushKind::IncomingCall
            ),
            "the call is parked and the device pushed"
        );
        // Its push unanswered, the call ends at its deadline (31 s) and lingers for the
        // device until 61 s: the sweeps at 30 s and 60 s hold the refresh push back.
        assert!(run_until(&mut node, start + Duration::from_secs(89)).is_empty());
        let pushes = run_until(&mut node, start + Duration::from_secs(90));
        assert!(
            matches!(
                pushes.as_slice(),
                [(r, PushTag::Refresh(DeviceId(1)))] if r.kind == PushKind::BindingRefresh
            ),
            "{pushes:?}"
        );
    }
}
