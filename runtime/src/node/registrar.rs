//! REGISTER: bindings, their expiry, RFC 8599 push parameters and Feature-Caps, and the
//! flows devices are reachable on.
//!
//! A binding is written to the store before its 200 OK goes out, so an answered REGISTER
//! survives a restart. Only then is the core told the device registered: a parked call
//! goes to a device whose registration the registrar accepted (RFC 8599 §5.6.2).

use pushpark_model::{AorId, DeviceId, Event, Flow as CoreFlow, Target};

use super::{log_failure, Node, Outgoing, PushTag, StoreDone};
use crate::auth::{parse_authorization, ChallengeKind, ParseError as AuthParseError, Verdict};
use crate::push::{PushKind, PushRequest};
use crate::sip::{Contact, Message, SipUri, Uri};
use crate::store::{Applied, Binding, BindingId, Change, ContactSpec, Register, Store, StoreError};
use crate::transaction::Key;
use crate::transport::{Flow, FlowId};
use crate::Map;

/// The bindings of every callee, as in the store, plus what only lives in memory: the
/// flow each device last registered over, and the ids the core knows callees by.
#[derive(Default)]
pub(crate) struct Bindings {
    by_aor: Map<String, Vec<Binding>>,
    aor_of: Map<DeviceId, String>,
    flows: Map<DeviceId, Flow>,
    aor_ids: Map<String, AorId>,
    /// The expiry each binding last got a refresh push for: one push per expiry.
    refreshed: Map<DeviceId, u64>,
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

    pub fn aor_id(&mut self, aor: &str) -> AorId {
        let next = AorId(self.aor_ids.len() as u64 + 1);
        *self.aor_ids.entry(aor.to_owned()).or_insert(next)
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

    fn replace(&mut self, aor: &str, applied: &Applied) {
        if let Some(old) = self.by_aor.get(aor) {
            for b in old {
                self.aor_of.remove(&device(b.id));
            }
        }
        for id in &applied.removed {
            self.flows.remove(&device(*id));
        }
        for b in &applied.bindings {
            self.aor_of.insert(device(b.id), aor.to_owned());
        }
        self.by_aor.insert(aor.to_owned(), applied.bindings.clone());
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
            self.flows.remove(id);
            self.refreshed.remove(id);
        }
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
                Some(Verdict::Authenticated { .. }) => {
                    return reply(self, 403, "Not allowed to register this address", &[])
                }
                other => {
                    if let Some(verdict) = &other {
                        tracing::debug!("REGISTER for {aor}: digest refused: {verdict:?}");
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
        };
        let done_aor = aor.clone();
        self.with_store(
            move |store: &mut Store| store.apply(&done_aor, &register, now),
            move |result, committed| {
                let result = committed
                    .map_err(|e| StoreError::NotCommitted(e.to_string()))
                    .and(result);
                StoreDone(Some(Box::new(RegisterDone {
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
        self.bindings.replace(&aor, &applied);
        let aor_id = self.bindings.aor_id(&aor);
        for id in &applied.removed {
            self.feed(Event::DeviceUnavailable {
                aor: aor_id,
                device: device(*id),
            });
        }
        // Only now, after the 200 OK: the devices that registered get their parked calls.
        for spec in &upserted {
            let found = applied.bindings.iter().find(|b| {
                b.contact == spec.contact
                    || (spec.instance.is_some() && b.instance == spec.instance)
            });
            if let Some(binding) = found {
                let id = device(binding.id);
                self.bindings.flows.insert(id, flow.clone());
                self.feed(Event::DeviceRegistered {
                    aor: aor_id,
                    device: id,
                });
            }
        }
    }
}

impl Node {
    /// Forgets expired bindings, in memory and in the store, and tells the core; pushes the
    /// bindings that are due a refresh.
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
    /// RFC 8599 §5.5: a binding with a push token that will expire before the next sweep
    /// plus `refresh_push_before` gets one push to make the app register again; never one
    /// to an APNs VoIP token (iOS kills an app that gets a VoIP push it does not report as
    /// a call), nor to a binding that expired or was removed.
    fn refresh_pushes(&mut self, now: u64) {
        let registrar = &self.config.registrar;
        let horizon =
            now + registrar.refresh_push_before.as_secs() + registrar.sweep_interval.as_secs();
        let due: Vec<(DeviceId, Binding)> = self
            .bindings
            .by_aor
            .values()
            .flatten()
            .filter(|b| b.expires_at > now && b.expires_at <= horizon)
            .filter(|b| {
                b.push.as_ref().is_some_and(|p| {
                    !p.provider.eq_ignore_ascii_case("apns")
                        && !p.provider.eq_ignore_ascii_case("apns.dev")
                })
            })
            .filter(|b| self.bindings.refreshed.get(&device(b.id)) != Some(&b.expires_at))
            .map(|b| (device(b.id), b.clone()))
            .collect();
        for (id, binding) in due {
            let Some(push) = binding.push else { continue };
            self.bindings.refreshed.insert(id, binding.expires_at);
            if !self.push_budget.allow(id, self.instant()) {
                continue;
            }
            let request = PushRequest {
                id: format!("refresh-{id}-{}", self.next_id()),
                kind: PushKind::BindingRefresh,
                callee_aor: binding.aor.clone(),
                pn_provider: push.provider,
                pn_prid: push.prid,
                pn_param: push.param,
                caller_uri: String::new(),
                caller_display_name: None,
                call_id: binding.call_id.clone(),
                deadline: std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(binding.expires_at),
            };
            self.submit_push(request, PushTag::Refresh(id));
        }
    }
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
