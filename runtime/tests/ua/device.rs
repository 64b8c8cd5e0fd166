//! [`Device`]: a phone app that registers with RFC 8599 push parameters, sleeps, wakes, and
//! answers incoming calls per a [`Behaviour`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rsip::{Method, Request, Response, SipMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::digest::{self, Credentials, DigestAlgorithm};
use super::log::{ReceivedRequest, RequestLog};
use super::sip::{
    build_request, build_response, new_branch, new_call_id, new_tag, sdp, status, to_wire,
    uri_addr, MessageExt,
};
use super::socket::{spawn_retransmit, AnsweredBranches, SipSocket, Transport};
use super::{UaError, UaResult, STEP};

/// How a device answers an incoming INVITE. Whatever the behaviour, a CANCEL that arrives
/// before a final response gets 200 and the INVITE 487.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 180, then after `ring_for` 200 with SDP (retransmitted over UDP until ACKed).
    Answer {
        /// How long the phone rings before the user picks up.
        ring_for: Duration,
    },
    /// 486 Busy Here at once (no 180).
    Busy,
    /// 180, then 603 Decline at once.
    Decline,
    /// Nothing at all: the INVITE is recorded and left unanswered.
    Ignore,
    /// 180 and then nothing: rings until cancelled.
    RingOnly,
}

/// The server side of one incoming INVITE.
#[derive(Debug, Clone)]
struct Uas {
    invite: Request,
    source: SocketAddr,
    to_tag: String,
    final_code: Option<u16>,
    /// The last response sent, re-sent when the INVITE is retransmitted.
    last_response: Option<Vec<u8>>,
    acked: bool,
}

type Calls = Arc<Mutex<HashMap<String, Uas>>>;

/// An open socket and the task reading it: what an awake device has.
struct Conn {
    socket: Arc<SipSocket>,
    task: JoinHandle<()>,
    responses: mpsc::UnboundedReceiver<Response>,
    answered: AnsweredBranches,
    calls: Calls,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
        self.socket.close();
    }
}

struct RegState {
    call_id: String,
    from_tag: String,
    cseq: u32,
    expires: u32,
    nc: u32,
}

struct Inner {
    aor: String,
    registrar: SocketAddr,
    transport: Transport,
    pn_provider: Option<String>,
    pn_prid: Option<String>,
    pn_param: Option<String>,
    instance: Option<String>,
    credentials: Option<Credentials>,
    prefer: Option<DigestAlgorithm>,
    behaviour: Arc<Mutex<Behaviour>>,
    log: Arc<RequestLog>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    reg: Mutex<RegState>,
    wakes: AtomicUsize,
}

/// A phone app: an address-of-record, RFC 8599 push parameters, an optional
/// `+sip.instance`, and a transport. Cheap to clone (clones share the device).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

/// Sets up a [`Device`]; see [`Device::builder`].
pub struct DeviceBuilder {
    aor: String,
    registrar: SocketAddr,
    transport: Transport,
    push: Option<(String, String, Option<String>)>,
    instance: Option<String>,
    credentials: Option<Credentials>,
    prefer: Option<DigestAlgorithm>,
    behaviour: Behaviour,
}

impl DeviceBuilder {
    /// UDP (the default) or TCP.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// RFC 8599 `pn-provider`, `pn-prid` (the token; URI-parameter-safe characters only)
    /// and `pn-param`.
    pub fn push(mut self, provider: &str, prid: &str, param: Option<&str>) -> Self {
        self.push = Some((provider.into(), prid.into(), param.map(Into::into)));
        self
    }

    /// `+sip.instance`: a UUID (sent as `"<urn:uuid:…>"`) or a full `urn:…`.
    /// An iOS app: its APNs VoIP push token `token` (the test app's topic) and an instance
    /// id (RFC 5626) made from it.
    pub fn voip_app(self, token: &str) -> Self {
        self.push("apns", token, Some("ABCD1234.com.example.app.voip"))
            .instance(&format!("00000000-0000-1000-8000-{token:0>12}"))
    }

    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Digest credentials for a 401/407 challenge.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some(Credentials::new(username, password));
        self
    }

    /// The algorithm to answer with when a challenge offers several (SHA-256 otherwise).
    pub fn prefer_algorithm(mut self, algorithm: DigestAlgorithm) -> Self {
        self.prefer = Some(algorithm);
        self
    }

    /// How incoming INVITEs are answered (default: answer after 100 ms of ringing).
    pub fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// Opens the device's socket (it is then awake, not yet registered).
    /// [`start`](Self::start), then a REGISTER answered 200 (600 s).
    pub async fn start_registered(self) -> Device {
        let phone = self.start().await.expect("the phone starts");
        let ok = phone.register(600).await.expect("REGISTER is answered");
        assert_eq!(ok.status_code.code(), 200, "{ok}");
        phone
    }

    pub async fn start(self) -> UaResult<Device> {
        let (pn_provider, pn_prid, pn_param) = match self.push {
            Some((a, b, c)) => (Some(a), Some(b), c),
            None => (None, None, None),
        };
        let device = Device {
            inner: Arc::new(Inner {
                aor: self.aor,
                registrar: self.registrar,
                transport: self.transport,
                pn_provider,
                pn_prid,
                pn_param,
                instance: self.instance,
                credentials: self.credentials,
                prefer: self.prefer,
                behaviour: Arc::new(Mutex::new(self.behaviour)),
                log: Arc::default(),
                conn: tokio::sync::Mutex::new(None),
                reg: Mutex::new(RegState {
                    call_id: new_call_id(),
                    from_tag: new_tag(),
                    cseq: 0,
                    expires: 3600,
                    nc: 0,
                }),
                wakes: AtomicUsize::new(0),
            }),
        };
        *device.inner.conn.lock().await = Some(device.open().await?);
        Ok(device)
    }
}

impl Device {
    /// A device for `aor` (e.g. `sip:bob@localhost`) that registers with `registrar`.
    pub fn builder(aor: &str, registrar: SocketAddr) -> DeviceBuilder {
        DeviceBuilder {
            aor: aor.into(),
            registrar,
            transport: Transport::Udp,
            push: None,
            instance: None,
            credentials: None,
            prefer: None,
            behaviour: Behaviour::Answer {
                ring_for: Duration::from_millis(100),
            },
        }
    }

    async fn open(&self) -> UaResult<Conn> {
        let socket =
            Arc::new(SipSocket::connect(self.inner.transport, self.inner.registrar).await?);
        let (tx, responses) = mpsc::unbounded_channel();
        let answered = AnsweredBranches::default();
        let calls = Calls::default();
        let task = tokio::spawn(background(
            socket.clone(),
            self.inner.aor.clone(),
            self.inner.behaviour.clone(),
            self.inner.log.clone(),
            answered.clone(),
            calls.clone(),
            tx,
        ));
        Ok(Conn {
            socket,
            task,
            responses,
            answered,
            calls,
        })
    }

    /// The address-of-record.
    pub fn aor(&self) -> &str {
        &self.inner.aor
    }

    /// The push token (`pn-prid`), if any.
    pub fn pn_prid(&self) -> Option<&str> {
        self.inner.pn_prid.as_deref()
    }

    /// Whether the device has a socket open.
    pub async fn is_awake(&self) -> bool {
        self.inner.conn.lock().await.is_some()
    }

    /// The local address of the open socket (`None` while asleep).
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.inner
            .conn
            .lock()
            .await
            .as_ref()
            .map(|c| c.socket.local_addr())
    }

    /// How many times [`Self::wake`] ran.
    pub fn wakes(&self) -> usize {
        self.inner.wakes.load(Ordering::SeqCst)
    }

    /// Changes how the next INVITEs are answered.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.inner.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    /// The Contact for a socket at `local`: the AOR's user at that address, the transport,
    /// the pn-* URI parameters, and `+sip.instance`.
    pub fn contact_for(&self, local: SocketAddr) -> String {
        let i = &self.inner;
        let mut uri = format!(
            "sip:{}@{local};transport={}",
            user_of(&i.aor),
            i.transport.param()
        );
        if let Some(p) = &i.pn_provider {
            uri.push_str(&format!(";pn-provider={p}"));
        }
        if let Some(p) = &i.pn_prid {
            uri.push_str(&format!(";pn-prid={p}"));
        }
        if let Some(p) = &i.pn_param {
            uri.push_str(&format!(";pn-param={p}"));
        }
        let mut contact = format!("<{uri}>");
        if let Some(inst) = &i.instance {
            let urn = if inst.starts_with("urn:") {
                inst.clone()
            } else {
                format!("urn:uuid:{inst}")
            };
            contact.push_str(&format!(";+sip.instance=\"<{urn}>\""));
        }
        contact
    }

    /// Sends REGISTER for `expires` seconds (0 removes the binding) and returns the final
    /// response. A 401/407 is answered once with digest credentials when the device has some.
    pub async fn register(&self, expires: u32) -> UaResult<Response> {
        self.register_with(expires, &[]).await
    }

    /// [`Self::register`] with extra headers.
    pub async fn register_with(
        &self,
        expires: u32,
        extra: &[(&str, String)],
    ) -> UaResult<Response> {
        let mut guard = self.inner.conn.lock().await;
        let conn = guard
            .as_mut()
            .ok_or_else(|| UaError::State("register() while asleep".into()))?;
        if expires > 0 {
            self.inner.reg.lock().expect("reg lock").expires = expires;
        }
        let mut authorization: Option<(&str, String)> = None;
        for attempt in 0..2 {
            let request = self.build_register(conn, expires, extra, authorization.clone())?;
            let response = transact(conn, request, STEP).await?;
            let code = status(&response);
            let (Some(creds), 0, 401 | 407) = (&self.inner.credentials, attempt, code) else {
                return Ok(response);
            };
            let (challenge_header, credentials_header) = if code == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let offered = response.header_values(challenge_header);
            let challenge = digest::choose(&offered, self.inner.prefer).ok_or_else(|| {
                UaError::Unexpected(format!("{code} without a usable challenge:\n{response}"))
            })?;
            let nc = {
                let mut reg = self.inner.reg.lock().expect("reg lock");
                reg.nc += 1;
                reg.nc
            };
            let uri = registrar_uri(&self.inner.aor);
            let value = digest::authorization(&challenge, creds, "REGISTER", &uri, nc);
            authorization = Some((credentials_header, value));
        }
        Err(UaError::Unexpected("challenged twice".into()))
    }

    fn build_register(
        &self,
        conn: &Conn,
        expires: u32,
        extra: &[(&str, String)],
        authorization: Option<(&str, String)>,
    ) -> UaResult<Request> {
        let local = conn.socket.local_addr();
        let (call_id, from_tag, cseq) = {
            let mut reg = self.inner.reg.lock().expect("reg lock");
            reg.cseq += 1;
            (reg.call_id.clone(), reg.from_tag.clone(), reg.cseq)
        };
        let aor = &self.inner.aor;
        let mut headers = vec![
            (
                "Via",
                format!(
                    "SIP/2.0/{} {local};branch={};rport",
                    self.inner.transport.via_name(),
                    new_branch()
                ),
            ),
            ("Max-Forwards", "70".to_owned()),
            ("From", format!("<{aor}>;tag={from_tag}")),
            ("To", format!("<{aor}>")),
            ("Call-ID", call_id),
            ("CSeq", format!("{cseq} REGISTER")),
            ("Contact", self.contact_for(local)),
            ("Expires", expires.to_string()),
        ];
        if let Some((name, value)) = authorization {
            headers.push((name, value));
        }
        headers.extend(extra.iter().cloned());
        build_request(Method::Register, &registrar_uri(aor), &headers, b"")
    }

    /// Removes this device's binding (REGISTER with Expires 0).
    pub async fn unregister(&self) -> UaResult<Response> {
        self.register(0).await
    }

    /// Goes to sleep: closes the socket (and so the TCP connection). A sleeping app keeps no
    /// socket; calls in progress are forgotten.
    pub async fn sleep(&self) {
        self.inner.conn.lock().await.take();
    }

    /// Wakes up (as on a push): opens a new socket or connection (closing the old one if
    /// still open) and REGISTERs again with the same pn-* parameters, instance, Call-ID and
    /// the last expiry asked for (RFC 8599 §4.1.3). Returns the REGISTER's final response.
    pub async fn wake(&self) -> UaResult<Response> {
        {
            let mut guard = self.inner.conn.lock().await;
            guard.take();
            *guard = Some(self.open().await?);
        }
        self.inner.wakes.fetch_add(1, Ordering::SeqCst);
        let expires = self.inner.reg.lock().expect("reg lock").expires;
        self.register(expires).await
    }

    /// Hangs up an answered call (BYE from the callee): R-URI the caller's Contact, Route the
    /// INVITE's Record-Route. Returns the final response to the BYE.
    pub async fn hangup(&self, call_id: &str) -> UaResult<Response> {
        let mut guard = self.inner.conn.lock().await;
        let conn = guard
            .as_mut()
            .ok_or_else(|| UaError::State("hangup() while asleep".into()))?;
        let uas = conn
            .calls
            .lock()
            .expect("calls lock")
            .values()
            .find(|u| u.invite.call_id() == call_id && u.final_code == Some(200))
            .cloned()
            .ok_or_else(|| UaError::State(format!("no answered call {call_id}")))?;
        let invite = &uas.invite;
        let target = invite
            .contact_uri()
            .ok_or_else(|| UaError::Parse("INVITE without Contact".into()))?;
        let local = conn.socket.local_addr();
        let mut headers = vec![
            (
                "Via",
                format!(
                    "SIP/2.0/{} {local};branch={};rport",
                    self.inner.transport.via_name(),
                    new_branch()
                ),
            ),
            ("Max-Forwards", "70".to_owned()),
        ];
        let routes = invite.record_routes();
        for route in &routes {
            headers.push(("Route", route.clone()));
        }
        headers.extend([
            (
                "From",
                format!(
                    "{};tag={}",
                    invite.header("To").unwrap_or_default(),
                    uas.to_tag
                ),
            ),
            ("To", invite.header("From").unwrap_or_default()),
            ("Call-ID", call_id.to_owned()),
            ("CSeq", format!("{} BYE", invite.cseq().0 + 100)),
        ]);
        let bye = build_request(Method::Bye, &target, &headers, b"")?;
        let dest = if routes.is_empty() {
            uri_addr(&target).unwrap_or(uas.source)
        } else {
            uas.source
        };
        transact_to(conn, bye, dest, STEP).await
    }

    /// Every request received, retransmissions included (see
    /// [`ReceivedRequest::retransmission`]), across sleeps and wakes.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.inner.log.all()
    }

    /// How many `method` requests arrived, retransmissions not counted.
    pub fn count(&self, method: Method) -> usize {
        self.inner.log.count(method)
    }

    /// The next `method` request not returned before, waiting up to `timeout`.
    pub async fn expect_request(
        &self,
        method: Method,
        timeout: Duration,
    ) -> UaResult<ReceivedRequest> {
        self.inner.log.expect(method, timeout).await
    }
}

/// `sip:bob@localhost` → `bob`.
fn user_of(aor: &str) -> &str {
    aor.split_once(':')
        .and_then(|(_, r)| r.split_once('@'))
        .map_or("device", |(u, _)| u)
}

/// `sip:bob@localhost` → `sip:localhost`.
fn registrar_uri(aor: &str) -> String {
    let (scheme, rest) = aor.split_once(':').unwrap_or(("sip", aor));
    let domain = rest.rsplit_once('@').map_or(rest, |(_, d)| d);
    format!("{scheme}:{domain}")
}

/// Sends `request` to the registrar and returns its final response.
async fn transact(conn: &mut Conn, request: Request, timeout: Duration) -> UaResult<Response> {
    let dest = conn
        .socket
        .default_peer()
        .ok_or_else(|| UaError::State("no registrar".into()))?;
    transact_to(conn, request, dest, timeout).await
}

/// Sends `request` to `dest` (retransmitting over UDP) and returns its final response;
/// responses to other transactions are dropped.
async fn transact_to(
    conn: &mut Conn,
    request: Request,
    dest: SocketAddr,
    timeout: Duration,
) -> UaResult<Response> {
    let branch = request.top_branch().unwrap_or_default();
    let method = request.method;
    let bytes = to_wire(&request.into());
    while conn.responses.try_recv().is_ok() {}
    conn.socket.send_raw_to(&bytes, dest).await?;
    spawn_retransmit(
        &conn.socket,
        bytes,
        dest,
        branch.clone(),
        conn.answered.clone(),
        false,
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, conn.responses.recv()).await {
            Err(_) => {
                return Err(UaError::Timeout(format!(
                    "a final response to {method} ({timeout:?})"
                )))
            }
            Ok(None) => return Err(UaError::State("device socket closed".into())),
            Ok(Some(r)) if r.top_branch().as_deref() == Some(&branch) && status(&r) >= 200 => {
                return Ok(r)
            }
            Ok(Some(_)) => {}
        }
    }
}

/// Reads the device's socket: responses go to the waiting transaction, requests are
/// recorded and answered.
async fn background(
    socket: Arc<SipSocket>,
    aor: String,
    behaviour: Arc<Mutex<Behaviour>>,
    log: Arc<RequestLog>,
    answered: AnsweredBranches,
    calls: Calls,
    tx: mpsc::UnboundedSender<Response>,
) {
    let contact = format!(
        "<sip:{}@{};transport={}>",
        user_of(&aor),
        socket.local_addr(),
        socket.transport().param()
    );
    loop {
        let (message, from) = match socket.recv_from(Duration::from_secs(3600)).await {
            Ok(m) => m,
            Err(UaError::Timeout(_)) => continue,
            Err(UaError::Parse(e)) => {
                eprintln!("device {aor}: {e}");
                continue;
            }
            Err(_) => return,
        };
        let request = match message {
            SipMessage::Response(response) => {
                if let Some(branch) = response.top_branch() {
                    answered.lock().expect("answered lock").insert(branch);
                }
                let _ = tx.send(response);
                continue;
            }
            SipMessage::Request(request) => request,
        };
        let entry = log.record(&request, from);
        let branch = entry.branch.clone();
        match request.method {
            Method::Invite => {
                let resend = {
                    let mut calls = calls.lock().expect("calls lock");
                    match calls.get(&branch) {
                        Some(uas) => Some(uas.last_response.clone()),
                        None => {
                            calls.insert(
                                branch.clone(),
                                Uas {
                                    invite: request.clone(),
                                    source: from,
                                    to_tag: new_tag(),
                                    final_code: None,
                                    last_response: None,
                                    acked: false,
                                },
                            );
                            None
                        }
                    }
                };
                match resend {
                    Some(Some(bytes)) => {
                        let _ = socket.send_raw_to(&bytes, from).await;
                    }
                    Some(None) => {}
                    None => {
                        let b = *behaviour.lock().expect("behaviour lock");
                        tokio::spawn(run_uas(
                            socket.clone(),
                            calls.clone(),
                            branch,
                            b,
                            contact.clone(),
                        ));
                    }
                }
            }
            Method::Cancel => {
                let tag = calls
                    .lock()
                    .expect("calls lock")
                    .get(&branch)
                    .map(|u| u.to_tag.clone());
                let code = if tag.is_some() { 200 } else { 481 };
                reply(&socket, &request, from, code, tag.as_deref()).await;
                if tag.is_some() {
                    // Spawned: over UDP the 487 is re-sent until the ACK this loop must read.
                    let (socket, calls) = (socket.clone(), calls.clone());
                    tokio::spawn(async move {
                        send_final(&socket, &calls, &branch, 487, "Request Terminated").await;
                    });
                }
            }
            Method::Ack => {
                let mut calls = calls.lock().expect("calls lock");
                for uas in calls.values_mut() {
                    if uas.invite.call_id() == entry.call_id {
                        uas.acked = true;
                    }
                }
            }
            _ => reply(&socket, &request, from, 200, None).await,
        }
    }
}

/// Sends a body-less response to `request`.
async fn reply(
    socket: &SipSocket,
    request: &Request,
    to: SocketAddr,
    code: u16,
    to_tag: Option<&str>,
) {
    let reason = match code {
        200 => "OK",
        481 => "Call/Transaction Does Not Exist",
        _ => "Response",
    };
    match build_response(request, code, reason, to_tag.or(Some("dev")), &[], b"") {
        Ok(r) => {
            let _ = socket.send_to(r, to).await;
        }
        Err(e) => eprintln!("device: cannot answer {}: {e}", request.method),
    }
}

/// Plays `behaviour` for the INVITE of transaction `branch`.
async fn run_uas(
    socket: Arc<SipSocket>,
    calls: Calls,
    branch: String,
    behaviour: Behaviour,
    contact: String,
) {
    match behaviour {
        Behaviour::Ignore => {}
        Behaviour::Busy => {
            send_final(&socket, &calls, &branch, 486, "Busy Here").await;
        }
        Behaviour::Decline => {
            send_provisional(&socket, &calls, &branch, 180, "Ringing").await;
            send_final(&socket, &calls, &branch, 603, "Decline").await;
        }
        Behaviour::RingOnly => {
            send_provisional(&socket, &calls, &branch, 180, "Ringing").await;
        }
        Behaviour::Answer { ring_for } => {
            send_provisional(&socket, &calls, &branch, 180, "Ringing").await;
            tokio::time::sleep(ring_for).await;
            let (code, reason) = (200, "OK");
            let Some((invite, source, to_tag)) = claim_final(&calls, &branch) else {
                return;
            };
            let body = sdp(&to_tag, 40_002);
            let extra = [
                ("Contact", contact),
                ("Content-Type", "application/sdp".to_owned()),
            ];
            match build_response(
                &invite,
                code,
                reason,
                Some(&to_tag),
                &extra,
                body.as_bytes(),
            ) {
                Ok(r) => deliver_final(&socket, &calls, &branch, r, source, code).await,
                Err(e) => eprintln!("device: cannot build 200: {e}"),
            }
        }
    }
}

async fn send_provisional(
    socket: &SipSocket,
    calls: &Calls,
    branch: &str,
    code: u16,
    reason: &str,
) {
    let (invite, source, to_tag) = {
        let calls = calls.lock().expect("calls lock");
        let Some(uas) = calls.get(branch).filter(|u| u.final_code.is_none()) else {
            return;
        };
        (uas.invite.clone(), uas.source, uas.to_tag.clone())
    };
    if let Ok(r) = build_response(&invite, code, reason, Some(&to_tag), &[], b"") {
        let bytes = to_wire(&r.into());
        if let Some(uas) = calls.lock().expect("calls lock").get_mut(branch) {
            if uas.final_code.is_none() {
                uas.last_response = Some(bytes.clone());
            }
        }
        let _ = socket.send_raw_to(&bytes, source).await;
    }
}

/// Marks the INVITE of `branch` as finally answered, if it was not; returns what a
/// response needs.
fn claim_final(calls: &Calls, branch: &str) -> Option<(Request, SocketAddr, String)> {
    let mut calls = calls.lock().expect("calls lock");
    let uas = calls.get_mut(branch)?;
    if uas.final_code.is_some() {
        return None;
    }
    uas.final_code = Some(0);
    Some((uas.invite.clone(), uas.source, uas.to_tag.clone()))
}

/// Sends a body-less final response to the INVITE of `branch`, unless one was sent.
async fn send_final(socket: &SipSocket, calls: &Calls, branch: &str, code: u16, reason: &str) {
    let Some((invite, source, to_tag)) = claim_final(calls, branch) else {
        return;
    };
    match build_response(&invite, code, reason, Some(&to_tag), &[], b"") {
        Ok(r) => deliver_final(socket, calls, branch, r, source, code).await,
        Err(e) => eprintln!("device: cannot build {code}: {e}"),
    }
}

/// Sends a final response and, over UDP, re-sends it until the ACK (T1 doubling to T2, for
/// at most 64·T1).
async fn deliver_final(
    socket: &SipSocket,
    calls: &Calls,
    branch: &str,
    response: Response,
    dest: SocketAddr,
    code: u16,
) {
    let bytes = to_wire(&response.into());
    if let Some(uas) = calls.lock().expect("calls lock").get_mut(branch) {
        uas.final_code = Some(code);
        uas.last_response = Some(bytes.clone());
    }
    if socket.send_raw_to(&bytes, dest).await.is_err() || socket.transport() != Transport::Udp {
        return;
    }
    let (t1, t2) = (Duration::from_millis(500), Duration::from_secs(4));
    let mut interval = t1;
    let mut waited = Duration::ZERO;
    while waited < t1 * 64 {
        tokio::time::sleep(interval).await;
        waited += interval;
        let acked = calls
            .lock()
            .expect("calls lock")
            .get(branch)
            .is_none_or(|u| u.acked);
        if acked || socket.send_raw_to(&bytes, dest).await.is_err() {
            return;
        }
        interval = (interval * 2).min(t2);
    }
}
