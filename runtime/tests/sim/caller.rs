//! A simulated caller: a UA over UDP that sends an INVITE (retransmitted until a response,
//! RFC 3261 §17.1.1.2), may CANCEL it at any moment (once a provisional allows), ACKs every
//! final response, talks for a while on a 2xx and hangs up.

use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;

use super::net::{server, Actor, Link, Ms, Net, Tick as NetTick};
use super::sip::{self, Msg};

/// One call, for one run.
#[derive(Clone, Debug)]
pub struct CallSpec {
    /// The callee's user name.
    pub callee: String,
    /// When the INVITE is sent.
    pub at: Ms,
    /// When the caller gives up and cancels, after the INVITE; `None`: never.
    pub cancel_after: Option<Ms>,
    /// How long the caller talks before it hangs up, if the phone has not.
    pub talk: Ms,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tick {
    Start,
    /// Timer A: the INVITE again, the retransmissions so far.
    InviteAgain(u32),
    Cancel,
    CancelAgain(u32),
    HangUp,
    ByeAgain(u32),
}

/// The dialog a 2xx made.
struct Dialog {
    to_tag: String,
    target: String,
    routes: Vec<String>,
    bye: Option<Bytes>,
    bye_answered: bool,
}

pub struct Caller {
    pub index: usize,
    pub spec: CallSpec,
    pub call_id: String,
    branch: String,
    invite: Bytes,
    cancel: Option<Bytes>,
    cancel_answered: bool,
    cancel_wanted: bool,
    /// When the INVITE was first sent.
    pub sent_at: Option<Ms>,
    /// When the first provisional arrived.
    pub provisional_at: Option<Ms>,
    /// Every distinct final response: when, code, To tag.
    pub finals: Vec<(Ms, u16, Option<String>)>,
    /// When the CANCEL was first sent.
    pub cancelled_at: Option<Ms>,
    dialog: Option<Dialog>,
    /// When the call was hung up (by either side).
    pub hung_up_at: Option<Ms>,
}

impl Caller {
    pub fn new(index: usize, spec: CallSpec) -> Self {
        let call_id = format!("call-{index}@sim");
        Caller {
            index,
            branch: format!("z9hG4bKinv{index}"),
            call_id,
            spec,
            invite: Bytes::new(),
            cancel: None,
            cancel_answered: false,
            cancel_wanted: false,
            sent_at: None,
            provisional_at: None,
            finals: Vec::new(),
            cancelled_at: None,
            dialog: None,
            hung_up_at: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        let index = u8::try_from(self.index + 1).expect("few callers");
        SocketAddr::from((Ipv4Addr::new(10, 1, 0, index), 5060))
    }

    /// The final response the caller took: the first.
    pub fn answer(&self) -> Option<u16> {
        self.finals.first().map(|f| f.1)
    }

    fn tick(&self, net: &mut Net, delay: Ms, tick: Tick) {
        net.tick(delay, NetTick::Caller(self.index, tick));
    }

    pub fn schedule(&self, net: &mut Net) {
        net.listen(self.addr(), Actor::Caller(self.index));
        net.at(
            self.spec.at,
            super::net::Happening::Tick(NetTick::Caller(self.index, Tick::Start)),
        );
    }

    fn headers(&self, method: &str, to_tag: Option<&str>) -> Vec<(&'static str, String)> {
        let to = format!("<sip:{}@{}>", self.spec.callee, server().ip());
        vec![
            (
                "Via",
                format!("SIP/2.0/UDP {};branch={};rport", self.addr(), self.branch),
            ),
            (
                "From",
                format!(
                    "\"Caller {}\" <sip:caller{}@example.org>;tag=c{}",
                    self.index, self.index, self.index
                ),
            ),
            (
                "To",
                match to_tag {
                    Some(tag) => format!("{to};tag={tag}"),
                    None => to,
                },
            ),
            ("Call-ID", self.call_id.clone()),
            ("CSeq", format!("1 {method}")),
        ]
    }

    fn request_uri(&self) -> String {
        format!("sip:{}@{}", self.spec.callee, server().ip())
    }

    fn send(&self, net: &mut Net, bytes: Bytes) {
        net.udp_to_node(self.addr(), bytes);
    }

    pub fn on_tick(&mut self, net: &mut Net, tick: Tick) {
        match tick {
            Tick::Start => {
                let mut headers = self.headers("INVITE", None);
                headers.push((
                    "Contact",
                    format!("<sip:caller{}@{}>", self.index, self.addr()),
                ));
                headers.push(("Content-Type", "application/sdp".to_owned()));
                let sdp = format!(
                    "v=0\r\no=- {0} 1 IN IP4 10.1.0.1\r\ns=-\r\nc=IN IP4 10.1.0.1\r\nt=0 0\r\nm=audio {1} RTP/AVP 0\r\n",
                    self.index,
                    20_000 + self.index
                );
                self.invite = sip::request("INVITE", &self.request_uri(), &headers, &sdp);
                self.sent_at = Some(net.now);
                net.note(format!(
                    "caller {} calls {}: {}",
                    self.index, self.spec.callee, self.call_id
                ));
                self.send(net, self.invite.clone());
                self.tick(net, 500, Tick::InviteAgain(0));
                if let Some(after) = self.spec.cancel_after {
                    self.tick(net, after, Tick::Cancel);
                }
            }
            Tick::InviteAgain(n) => {
                // Until a response; Timer B after 64·T1.
                if self.provisional_at.is_none() && self.finals.is_empty() && n < 6 {
                    self.send(net, self.invite.clone());
                    self.tick(net, 1_000 << n, Tick::InviteAgain(n + 1));
                }
            }
            Tick::Cancel => {
                if !self.finals.is_empty() {
                    return;
                }
                if self.provisional_at.is_none() {
                    // No CANCEL before a provisional (RFC 3261 §9.1).
                    self.cancel_wanted = true;
                    return;
                }
                self.send_cancel(net);
            }
            Tick::CancelAgain(n) => {
                if let (Some(cancel), false, true) =
                    (self.cancel.clone(), self.cancel_answered, n < 10)
                {
                    self.send(net, cancel);
                    self.tick(net, (500 << (n + 1)).min(4_000), Tick::CancelAgain(n + 1));
                }
            }
            Tick::HangUp => {
                let index = self.index;
                let call_id = self.call_id.clone();
                let addr = self.addr();
                let Some(dialog) = self.dialog.as_mut() else {
                    return;
                };
                if self.hung_up_at.is_some() {
                    return;
                }
                self.hung_up_at = Some(net.now);
                let mut headers: Vec<(&str, String)> = vec![
                    (
                        "Via",
                        format!("SIP/2.0/UDP {addr};branch=z9hG4bKbye{index};rport"),
                    ),
                    (
                        "From",
                        format!("\"Caller {index}\" <sip:caller{index}@example.org>;tag=c{index}"),
                    ),
                    (
                        "To",
                        format!(
                            "<sip:{}@{}>;tag={}",
                            self.spec.callee,
                            server().ip(),
                            dialog.to_tag
                        ),
                    ),
                    ("Call-ID", call_id.clone()),
                    ("CSeq", "2 BYE".to_owned()),
                ];
                headers.extend(dialog.routes.iter().map(|r| ("Route", r.clone())));
                let bye = sip::request("BYE", &dialog.target, &headers, "");
                dialog.bye = Some(bye.clone());
                net.note(format!("caller {index} hangs up {call_id}"));
                self.send(net, bye);
                self.tick(net, 500, Tick::ByeAgain(0));
            }
            Tick::ByeAgain(n) => {
                let Some(dialog) = self.dialog.as_ref() else {
                    return;
                };
                if let (Some(bye), false, true) = (dialog.bye.clone(), dialog.bye_answered, n < 10)
                {
                    self.send(net, bye);
                    self.tick(net, (500 << (n + 1)).min(4_000), Tick::ByeAgain(n + 1));
                }
            }
        }
    }

    fn send_cancel(&mut self, net: &mut Net) {
        if self.cancel.is_some() {
            return;
        }
        let cancel = sip::request(
            "CANCEL",
            &self.request_uri(),
            &self.headers("CANCEL", None),
            "",
        );
        self.cancel = Some(cancel.clone());
        self.cancelled_at = Some(net.now);
        net.note(format!("caller {} cancels {}", self.index, self.call_id));
        self.send(net, cancel);
        self.tick(net, 500, Tick::CancelAgain(0));
    }

    pub fn on_message(&mut self, net: &mut Net, _link: Link, bytes: &Bytes) {
        let Some(msg) = Msg::parse(bytes) else {
            return net.note(format!("caller {}: unparsable message", self.index));
        };
        if let Some(method) = msg.method() {
            // BYE (or anything else in the dialog): 200.
            if method == "BYE" && self.hung_up_at.is_none() {
                self.hung_up_at = Some(net.now);
                net.note(format!("caller {}: the phone hung up", self.index));
            }
            if method != "ACK" {
                let ok = sip::response(&msg, 200, None, &[]);
                self.send(net, ok);
            }
            return;
        }
        let Some(code) = msg.status() else { return };
        match msg.cseq_method().as_str() {
            "INVITE" => self.on_invite_response(net, &msg, code),
            "CANCEL" => self.cancel_answered = true,
            "BYE" => {
                if let Some(dialog) = self.dialog.as_mut() {
                    dialog.bye_answered = true;
                }
            }
            _ => {}
        }
    }

    fn on_invite_response(&mut self, net: &mut Net, msg: &Msg, code: u16) {
        if code < 200 {
            if self.provisional_at.is_none() {
                self.provisional_at = Some(net.now);
                if self.cancel_wanted {
                    self.send_cancel(net);
                }
            }
            return;
        }
        let to_tag = msg.to_tag();
        let first = !self
            .finals
            .iter()
            .any(|(_, c, t)| *c == code && *t == to_tag);
        if first {
            net.note(format!(
                "caller {} gets {code} for {}",
                self.index, self.call_id
            ));
            self.finals.push((net.now, code, to_tag.clone()));
        }
        if code >= 300 {
            // The ACK of a non-2xx: hop by hop, the INVITE's branch (RFC 3261 §17.1.1.3).
            let ack = sip::request(
                "ACK",
                &self.request_uri(),
                &self.headers("ACK", to_tag.as_deref()),
                "",
            );
            return self.send(net, ack);
        }
        // A 2xx: ACKed end to end along the route set (§13.2.2.4), every copy of it.
        let mut routes = msg.all("Record-Route");
        routes.reverse();
        let target = msg.contact_uri();
        let tag = to_tag.unwrap_or_default();
        let mut headers = self.headers("ACK", Some(&tag));
        headers[0].1 = format!(
            "SIP/2.0/UDP {};branch=z9hG4bKack{}x{tag};rport",
            self.addr(),
            self.index
        );
        headers.extend(routes.iter().map(|r| ("Route", r.clone())));
        let ack = sip::request("ACK", &target, &headers, "");
        self.send(net, ack);
        let ours = self.dialog.as_ref().is_some_and(|d| d.to_tag == tag);
        if self.dialog.is_none() {
            self.dialog = Some(Dialog {
                to_tag: tag,
                target,
                routes,
                bye: None,
                bye_answered: false,
            });
            let talk = self.spec.talk;
            self.tick(net, talk, Tick::HangUp);
        } else if !ours && first {
            net.note(format!(
                "caller {}: a second 2xx, from another phone",
                self.index
            ));
        }
    }
}
