//! [`Caller`]: a user agent client that places one call at a time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rsip::{Method, Request, Response, SipMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::log::{ReceivedRequest, RequestLog};
use super::sip::{
    build_request, build_response, new_branch, new_call_id, new_tag, sdp, status, to_wire,
    uri_addr, Expect, MessageExt,
};
use super::socket::{spawn_retransmit, AnsweredBranches, SipSocket, Transport};
use super::{UaError, UaResult};

/// A dialog established by a 2xx to our INVITE (RFC 3261 §12.1.2).
#[derive(Debug, Clone)]
struct Dialog {
    /// Our From (with our tag), as sent.
    from: String,
    /// The To of the 2xx (with the remote tag).
    to: String,
    /// The Contact URI of the 2xx.
    remote_target: String,
    /// The Record-Route of the 2xx, reversed.
    route_set: Vec<String>,
}

/// What the background task and the test share.
#[derive(Default)]
struct State {
    /// The INVITE of the current call and where it was sent.
    invite: Option<(Request, SocketAddr)>,
    /// The next CSeq number for requests in the current call.
    next_cseq: u32,
    dialog: Option<Dialog>,
    /// The ACK sent for a 2xx (bytes, destination, To-tag): re-sent when the 2xx is.
    ack_2xx: Option<(Vec<u8>, SocketAddr, String)>,
    /// Final responses already handed to the test: (branch, code, To-tag).
    delivered: HashSet<(String, u16, String)>,
    /// Whether the far end sent BYE.
    bye_received: bool,
}

/// A UA that places calls: INVITE through a proxy, then CANCEL, ACK, BYE. It answers a BYE
/// it receives with 200, ACKs non-2xx finals to its INVITE itself (RFC 3261 §17.1.1.3), and,
/// over UDP, retransmits its requests until answered.
pub struct Caller {
    socket: Arc<SipSocket>,
    uri: String,
    display_name: Option<String>,
    state: Arc<Mutex<State>>,
    answered: AnsweredBranches,
    log: Arc<RequestLog>,
    responses: tokio::sync::Mutex<(mpsc::UnboundedReceiver<Response>, Vec<Response>)>,
    task: JoinHandle<()>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.task.abort();
        self.socket.close();
    }
}

impl Caller {
    /// A caller with address-of-record `uri` (e.g. `sip:alice@localhost`) on a new socket:
    /// UDP, or a TCP listener (requests then go over a connection it opens to the proxy).
    pub async fn new(uri: &str, transport: Transport) -> UaResult<Self> {
        let socket = Arc::new(SipSocket::bind(transport).await?);
        let state = Arc::new(Mutex::new(State::default()));
        let answered = AnsweredBranches::default();
        let log = Arc::new(RequestLog::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(background(
            socket.clone(),
            state.clone(),
            answered.clone(),
            log.clone(),
            tx,
        ));
        Ok(Self {
            socket,
            uri: uri.to_owned(),
            display_name: None,
            state,
            answered,
            log,
            responses: tokio::sync::Mutex::new((rx, Vec::new())),
            task,
        })
    }

    /// Sets the display name put in From.
    pub fn with_display_name(mut self, name: &str) -> Self {
        self.display_name = Some(name.to_owned());
        self
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr()
    }

    /// The socket (e.g. to send something by hand).
    pub fn socket(&self) -> &Arc<SipSocket> {
        &self.socket
    }

    /// The Contact URI this caller puts in its requests.
    pub fn contact(&self) -> String {
        let user = self
            .uri
            .split_once(':')
            .and_then(|(_, r)| r.split_once('@'))
            .map_or("caller", |(u, _)| u);
        format!(
            "sip:{user}@{};transport={}",
            self.local_addr(),
            self.socket.transport().param()
        )
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.socket.transport().via_name(),
            self.local_addr()
        )
    }

    /// The Call-ID of the current call.
    pub fn call_id(&self) -> Option<String> {
        let state = self.state.lock().expect("caller state lock");
        state.invite.as_ref().map(|(r, _)| r.call_id())
    }

    /// Sends an INVITE for `to` (e.g. `sip:bob@localhost`) to `proxy`, starting a new call;
    /// returns its Call-ID.
    pub async fn invite(&self, to: &str, proxy: SocketAddr) -> UaResult<String> {
        self.invite_with(to, proxy, &[]).await
    }

    /// [`Self::invite`] with extra headers.
    pub async fn invite_with(
        &self,
        to: &str,
        proxy: SocketAddr,
        extra: &[(&str, String)],
    ) -> UaResult<String> {
        let branch = new_branch();
        let call_id = new_call_id();
        let from = match &self.display_name {
            Some(name) => format!("\"{name}\" <{}>;tag={}", self.uri, new_tag()),
            None => format!("<{}>;tag={}", self.uri, new_tag()),
        };
        let body = sdp(&call_id[..8], 40_000);
        let mut headers = vec![
            ("Via", self.via(&branch)),
            ("Max-Forwards", "70".to_owned()),
            ("From", from),
            ("To", format!("<{to}>")),
            ("Call-ID", call_id.clone()),
            ("CSeq", "1 INVITE".to_owned()),
            ("Contact", format!("<{}>", self.contact())),
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS".to_owned()),
            ("Content-Type", "application/sdp".to_owned()),
        ];
        headers.extend(extra.iter().cloned());
        let invite = build_request(Method::Invite, to, &headers, body.as_bytes())?;
        {
            let mut state = self.state.lock().expect("caller state lock");
            *state = State {
                invite: Some((invite.clone(), proxy)),
                next_cseq: 2,
                ..State::default()
            };
        }
        self.drain_responses().await;
        let bytes = to_wire(&invite.into());
        self.socket.send_raw_to(&bytes, proxy).await?;
        spawn_retransmit(
            &self.socket,
            bytes,
            proxy,
            branch,
            self.answered.clone(),
            true,
        );
        Ok(call_id)
    }

    async fn drain_responses(&self) {
        let mut guard = self.responses.lock().await;
        while guard.0.try_recv().is_ok() {}
        guard.1.clear();
    }

    /// The next response to the current INVITE that matches `expect` (a code like `180`,
    /// a class like `2`, or an [`Expect`]). Provisional responses that do not match are
    /// skipped; a final one that does not match is an error.
    pub async fn expect_response(
        &self,
        expect: impl Into<Expect>,
        timeout: Duration,
    ) -> UaResult<Response> {
        self.expect_response_for(Method::Invite, expect, timeout)
            .await
    }

    /// The next final response to the current INVITE. A 3xx–6xx has been ACKed already
    /// (the ACK is the INVITE transaction's, sent as soon as the response arrives).
    pub async fn expect_final(&self, timeout: Duration) -> UaResult<Response> {
        self.expect_response(Expect::Final, timeout).await
    }

    /// Like [`Self::expect_response`] for responses whose CSeq method is `method` (e.g. the
    /// 200 to a CANCEL or a BYE). Responses to other methods are kept for later calls.
    pub async fn expect_response_for(
        &self,
        method: Method,
        expect: impl Into<Expect>,
        timeout: Duration,
    ) -> UaResult<Response> {
        let expect = expect.into();
        let what = format!("a response {expect:?} to {method} ({timeout:?})");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut guard = self.responses.lock().await;
        let (rx, pending) = &mut *guard;
        loop {
            let next = match pending.iter().position(|r| r.cseq_is(method)) {
                Some(i) => pending.remove(i),
                None => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Err(UaError::Timeout(what)),
                    Ok(None) => return Err(UaError::State("caller stopped".into())),
                    Ok(Some(r)) if !r.cseq_is(method) => {
                        pending.push(r);
                        continue;
                    }
                    Ok(Some(r)) => r,
                },
            };
            let code = status(&next);
            if expect.matches(code) {
                return Ok(next);
            }
            if code >= 200 {
                return Err(UaError::Unexpected(format!(
                    "{code} to {method} while waiting for {expect:?}:\n{next}"
                )));
            }
        }
    }

    /// Sends CANCEL for the current INVITE (RFC 3261 §9.1: same Request-URI, Call-ID, From,
    /// To, CSeq number and top Via as the INVITE).
    pub async fn cancel(&self) -> UaResult<()> {
        self.cancel_with(&[]).await
    }

    /// [`Self::cancel`] with extra headers (e.g. `("Reason", "SIP;cause=200".into())`).
    pub async fn cancel_with(&self, extra: &[(&str, String)]) -> UaResult<()> {
        let (invite, dest) = self.current_invite()?;
        let cancel = same_transaction_request(&invite, Method::Cancel, None, extra)?;
        let branch = invite.top_branch().unwrap_or_default();
        let bytes = to_wire(&cancel.into());
        // The CANCEL shares the INVITE's branch; a response to it must be told apart from one
        // to the INVITE, so answered-ness is tracked per branch and method.
        self.socket.send_raw_to(&bytes, dest).await?;
        spawn_retransmit(
            &self.socket,
            bytes,
            dest,
            format!("{branch}/CANCEL"),
            self.answered.clone(),
            false,
        );
        Ok(())
    }

    fn current_invite(&self) -> UaResult<(Request, SocketAddr)> {
        let state = self.state.lock().expect("caller state lock");
        state
            .invite
            .clone()
            .ok_or_else(|| UaError::State("no INVITE sent".into()))
    }

    /// ACKs a 2xx to the INVITE (RFC 3261 §13.2.2.4): a new transaction to the 2xx's
    /// Contact through the reversed Record-Route, and so establishes the dialog used by
    /// [`Self::bye`]. A non-2xx needs no call: it was ACKed already.
    pub async fn ack(&self, response: &Response) -> UaResult<()> {
        let code = status(response);
        if !(200..300).contains(&code) {
            return Ok(());
        }
        let (invite, proxy) = self.current_invite()?;
        let remote_target = response
            .contact_uri()
            .ok_or_else(|| UaError::Parse(format!("{code} without Contact:\n{response}")))?;
        let mut route_set = response.record_routes();
        route_set.reverse();
        let dialog = Dialog {
            from: invite.header("From").unwrap_or_default(),
            to: response.header("To").unwrap_or_default(),
            remote_target,
            route_set,
        };
        let (cseq, _) = invite.cseq();
        let ack = self.dialog_request(&dialog, Method::Ack, cseq, &invite.call_id())?;
        let dest = self.dialog_destination(&dialog, proxy)?;
        let bytes = to_wire(&ack.into());
        self.socket.send_raw_to(&bytes, dest).await?;
        let mut state = self.state.lock().expect("caller state lock");
        state.ack_2xx = Some((bytes, dest, response.tag_of_to().unwrap_or_default()));
        state.dialog = Some(dialog);
        Ok(())
    }

    /// Sends BYE in the dialog set up by [`Self::ack`]; await its answer with
    /// `expect_response_for(Method::Bye, 200, …)`.
    /// ACKs the 2xx `ok`, hangs up with BYE, and checks the BYE's 200 comes back (it
    /// reached the phone in the call).
    pub async fn ack_and_hang_up(&self, ok: &Response) {
        self.ack(ok).await.expect("ACK sent");
        self.bye().await.expect("BYE sent");
        self.expect_response_for(rsip::Method::Bye, 200, super::STEP)
            .await
            .expect("the BYE reaches the phone and its 200 comes back");
    }

    pub async fn bye(&self) -> UaResult<()> {
        let (invite, proxy) = self.current_invite()?;
        let (dialog, cseq) = {
            let mut state = self.state.lock().expect("caller state lock");
            let dialog = state
                .dialog
                .clone()
                .ok_or_else(|| UaError::State("bye() before a 2xx was ACKed".into()))?;
            state.next_cseq += 1;
            (dialog, state.next_cseq - 1)
        };
        let bye = self.dialog_request(&dialog, Method::Bye, cseq, &invite.call_id())?;
        let branch = bye.top_branch().unwrap_or_default();
        let dest = self.dialog_destination(&dialog, proxy)?;
        let bytes = to_wire(&bye.into());
        self.socket.send_raw_to(&bytes, dest).await?;
        spawn_retransmit(
            &self.socket,
            bytes,
            dest,
            branch,
            self.answered.clone(),
            false,
        );
        Ok(())
    }

    fn dialog_request(
        &self,
        dialog: &Dialog,
        method: Method,
        cseq: u32,
        call_id: &str,
    ) -> UaResult<Request> {
        let mut headers = vec![
            ("Via", self.via(&new_branch())),
            ("Max-Forwards", "70".to_owned()),
        ];
        for route in &dialog.route_set {
            headers.push(("Route", route.clone()));
        }
        headers.extend([
            ("From", dialog.from.clone()),
            ("To", dialog.to.clone()),
            ("Call-ID", call_id.to_owned()),
            ("CSeq", format!("{cseq} {method}")),
        ]);
        if method == Method::Ack {
            headers.push(("Contact", format!("<{}>", self.contact())));
        }
        build_request(method, &dialog.remote_target, &headers, b"")
    }

    /// Where requests in the dialog go: the proxy when there is a route set (its first entry
    /// is the proxy that record-routed), else the remote target itself.
    fn dialog_destination(&self, dialog: &Dialog, proxy: SocketAddr) -> UaResult<SocketAddr> {
        if !dialog.route_set.is_empty() {
            return Ok(proxy);
        }
        uri_addr(&dialog.remote_target).ok_or_else(|| {
            UaError::Parse(format!(
                "cannot send to remote target {} (no route set)",
                dialog.remote_target
            ))
        })
    }

    /// The next request of `method` received (e.g. a BYE from the callee).
    pub async fn expect_request(
        &self,
        method: Method,
        timeout: Duration,
    ) -> UaResult<ReceivedRequest> {
        self.log.expect(method, timeout).await
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.log.all()
    }

    /// Whether the far end ended the call with BYE.
    pub fn bye_received(&self) -> bool {
        self.state.lock().expect("caller state lock").bye_received
    }
}

/// A request in the INVITE's transaction (CANCEL, or ACK for a non-2xx): same R-URI, top
/// Via, From, Call-ID, CSeq number and Route; To as given (the response's for an ACK) or the
/// INVITE's.
pub(super) fn same_transaction_request(
    invite: &Request,
    method: Method,
    to: Option<String>,
    extra: &[(&str, String)],
) -> UaResult<Request> {
    let via = invite
        .header("Via")
        .ok_or_else(|| UaError::Parse("INVITE without Via".into()))?;
    let mut headers = vec![("Via", via), ("Max-Forwards", "70".to_owned())];
    for route in invite.header_values("Route") {
        headers.push(("Route", route));
    }
    headers.extend([
        ("From", invite.header("From").unwrap_or_default()),
        (
            "To",
            to.unwrap_or_else(|| invite.header("To").unwrap_or_default()),
        ),
        ("Call-ID", invite.call_id()),
        ("CSeq", format!("{} {method}", invite.cseq().0)),
    ]);
    headers.extend(extra.iter().cloned());
    build_request(method, &invite.uri.to_string(), &headers, b"")
}

/// Reads the socket: hands responses to the test (once each), ACKs non-2xx finals, re-ACKs
/// retransmitted 2xx, answers BYE (and anything else but ACK) with 200.
async fn background(
    socket: Arc<SipSocket>,
    state: Arc<Mutex<State>>,
    answered: AnsweredBranches,
    log: Arc<RequestLog>,
    tx: mpsc::UnboundedSender<Response>,
) {
    loop {
        let (message, from) = match socket.recv_from(Duration::from_secs(3600)).await {
            Ok(m) => m,
            Err(UaError::Timeout(_)) | Err(UaError::Parse(_)) => continue,
            Err(_) => return,
        };
        match message {
            SipMessage::Response(response) => {
                let branch = response.top_branch().unwrap_or_default();
                let (_, method) = response.cseq();
                let key = if method == "CANCEL" {
                    format!("{branch}/CANCEL")
                } else {
                    branch.clone()
                };
                answered.lock().expect("answered lock").insert(key);
                let code = status(&response);
                let mut to_send = None;
                let deliver = {
                    let mut st = state.lock().expect("caller state lock");
                    let is_current = st
                        .invite
                        .as_ref()
                        .is_some_and(|(r, _)| r.call_id() == response.call_id());
                    if method == "INVITE" && code >= 200 && is_current {
                        let to_tag = response.tag_of_to().unwrap_or_default();
                        let first = st.delivered.insert((branch, code, to_tag.clone()));
                        if code >= 300 {
                            if let Some((invite, dest)) = &st.invite {
                                match same_transaction_request(
                                    invite,
                                    Method::Ack,
                                    response.header("To"),
                                    &[],
                                ) {
                                    Ok(ack) => to_send = Some((to_wire(&ack.into()), *dest)),
                                    Err(e) => eprintln!("caller: cannot build ACK: {e}"),
                                }
                            }
                        } else if let Some((bytes, dest, tag)) = &st.ack_2xx {
                            if *tag == to_tag {
                                to_send = Some((bytes.clone(), *dest));
                            }
                        }
                        first
                    } else {
                        is_current
                    }
                };
                if let Some((bytes, dest)) = to_send {
                    let _ = socket.send_raw_to(&bytes, dest).await;
                }
                if deliver {
                    let _ = tx.send(response);
                }
            }
            SipMessage::Request(request) => {
                let entry = log.record(&request, from);
                if request.method == Method::Ack {
                    continue;
                }
                if request.method == Method::Bye && !entry.retransmission {
                    state.lock().expect("caller state lock").bye_received = true;
                }
                let (code, reason) = if request.method == Method::Invite {
                    (488, "Not Acceptable Here")
                } else {
                    (200, "OK")
                };
                match build_response(&request, code, reason, None, &[], b"") {
                    Ok(r) => {
                        let _ = socket.send_to(r, from).await;
                    }
                    Err(e) => eprintln!("caller: cannot answer {}: {e}", request.method),
                }
            }
        }
    }
}
