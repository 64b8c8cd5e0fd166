//! A simulated phone: an RFC 8599 app that sleeps. The same device as the model's
//! (model/src/checker): single-line unless it has call waiting (an INVITE arriving while it
//! rings or talks is answered 486), over UDP or TCP, asleep (no socket; over TCP its
//! connection closes) or awake, woken by a push into a REGISTER over a new flow; awake, it
//! ignores pushes (it is registered already). Every delivered INVITE is answered 100 at
//! once; the user then answers, refuses or lets it ring. Asleep, an app may answer a call's
//! push over the app API (specs/parking.md §9) instead of, or beside, waking.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use pushpark::node::AppAnswer;
use pushpark::transport::FlowId;
use pushpark_model::{AppReply, PushAnswer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::net::{server, Actor, Happening, Link, Ms, Net, Tick as NetTick};
use super::sip::{self, Msg};

/// What the phone's user does with a call that rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Busy,
    Decline,
    /// Lets it ring until the phone gives up (its ring time-out answers 480).
    Ignore,
}

/// What an app asleep does when a call's push reaches it (specs/parking.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnPush {
    /// Wakes its SIP stack and registers (as an app without the app API does).
    Wake,
    /// Posts busy (do-not-disturb, a call on another app) and stays asleep.
    Busy,
    /// Posts decline (its user declines on the lock screen) and stays asleep.
    Decline,
    /// Posts ringing (it shows the call) and wakes as usual to take it over SIP.
    Ringing,
}

/// How an app answers from its pushes, for one run.
#[derive(Clone, Debug)]
pub struct FromPush {
    /// What it does with a call's push while asleep, with weights (all 0: it wakes).
    pub choices: [(OnPush, u32); 4],
    /// After a busy or a decline, the chance that it registers all the same (its answer
    /// and its REGISTER race).
    pub registers_anyway: f64,
    /// How long until a busy or a decline is posted: at once for do-not-disturb, a
    /// user's swipe for a decline.
    pub think: (Ms, Ms),
    /// The HTTPS request's time each way, between these.
    pub latency: (Ms, Ms),
    /// The chance that the request, or its reply, is lost (a mobile network): the app
    /// tries once more, then gives up.
    pub loss: f64,
}

impl FromPush {
    /// An app that only ever wakes.
    pub const NEVER: FromPush = FromPush {
        choices: [
            (OnPush::Wake, 1),
            (OnPush::Busy, 0),
            (OnPush::Decline, 0),
            (OnPush::Ringing, 0),
        ],
        registers_anyway: 0.0,
        think: (0, 0),
        latency: (50, 50),
        loss: 0.0,
    };

    /// An app that always answers `answer` from the push after `think` ms, its request
    /// taking `latency` ms each way, never lost.
    pub fn always(answer: OnPush, think: Ms, latency: Ms) -> FromPush {
        let mut choices = FromPush::NEVER.choices;
        for (choice, weight) in &mut choices {
            *weight = u32::from(*choice == answer);
        }
        FromPush {
            choices,
            registers_anyway: 0.0,
            think: (think, think),
            latency: (latency, latency),
            loss: 0.0,
        }
    }
}

/// An answer from the push on its way to the node over HTTPS.
#[derive(Clone, Debug)]
pub struct AppPost {
    pub phone: usize,
    pub call_id: String,
    /// The push's answer token.
    pub token: String,
    pub answer: PushAnswer,
    /// The app's attempt (0, or 1 for its retry).
    pub attempt: u32,
    /// When the reply is back at the app after the node's answer; `None`: it is lost.
    pub back: Option<Ms>,
}

/// The answer the app posted (or will post) for a call, and how it stands.
struct Post {
    token: String,
    answer: PushAnswer,
    attempt: u32,
    replied: bool,
}

/// How a phone behaves, for one run.
#[derive(Clone, Debug)]
pub struct PhoneSpec {
    pub user: String,
    pub tcp: bool,
    pub call_waiting: bool,
    /// When it falls asleep after starting (after its registration); `None`: never.
    pub sleeps_at: Option<Ms>,
    /// How long it stays awake after a wake-up or a call.
    pub stays_awake: Ms,
    /// A woken UDP app binds a new port (else the one it had).
    pub new_port_on_wake: bool,
    /// The user's answers, with their weights.
    pub answers: [(Answer, u32); 4],
    /// How long the user takes to answer, between these.
    pub answer_after: (Ms, Ms),
    /// How long it takes from a push to the REGISTER.
    pub wake_after: (Ms, Ms),
    /// The chance that the app is killed (the user swipes it away, the OS suspends it)
    /// while an INVITE rings, before anyone answers: its flow goes with it.
    pub dies: f64,
    /// How long its user talks before hanging up, between these.
    pub talk: (Ms, Ms),
    /// What it does with a call's push that finds it asleep.
    pub from_push: FromPush,
}

/// The phone's timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tick {
    Sleep,
    Register,
    /// Retransmit REGISTER with this CSeq (UDP, Timer E).
    RegisterAgain(u32, Ms),
    Ring(String),
    Decide(String),
    /// Retransmit the final response of this branch until it is acknowledged: the
    /// retransmissions so far.
    FinalAgain(String, u32),
    /// Give up ringing (the app's ring time-out).
    RingTimeout(String),
    /// Hang up this call.
    HangUp(String),
    /// The app is killed.
    Die,
    /// Post the answer from the push for this call.
    Post(String),
    /// The post's attempt had no reply in time: retry once, then give up.
    PostTimeout(String, u32),
}

/// Where an INVITE the phone received stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Answered 100, not ringing yet.
    Trying,
    Ringing,
    /// A final response sent, not yet acknowledged.
    Final(u16),
    /// Over: acknowledged (a 2xx: the call is up), cancelled, or abandoned.
    Done,
}

/// An INVITE the phone received.
pub struct Incoming {
    pub call_id: String,
    pub state: State,
    invite: Msg,
    last: Bytes,
    link: Link,
    tag: String,
    /// The Call-ID of the call holding the line when this one was refused busy.
    pub refused_for: Option<String>,
}

/// A call the phone is in.
pub struct Dialog {
    invite: Msg,
    link: Link,
    tag: String,
    pub ended: bool,
    cseq: u32,
}

/// What the phone saw, for the properties.
#[derive(Default)]
pub struct Seen {
    /// Each INVITE transaction received first: when, Call-ID, branch.
    pub invites: Vec<(Ms, String, String)>,
    /// Each INVITE that rang (180 sent): when, Call-ID.
    pub rang: Vec<(Ms, String)>,
    /// Each ring that ended because the phone gave up: when, Call-ID.
    pub ring_timeouts: Vec<(Ms, String)>,
    /// Its flows while awake: opened, closed, the address the node sees.
    pub flows: Vec<(Ms, Option<Ms>, SocketAddr)>,
    /// Each 486 sent because the line was held: when, refused Call-ID, holding Call-ID.
    pub refused_busy: Vec<(Ms, String, String)>,
    /// Pushes that reached it: when, Call-ID, whether it slept then.
    pub pushes: Vec<(Ms, String, bool)>,
    /// REGISTERs answered 200: when.
    pub registered: Vec<Ms>,
    /// INVITEs it lost when the app was killed: when, Call-ID.
    pub killed_with: Vec<(Ms, String)>,
    /// Calls it answered 200 that were never acknowledged.
    pub unacknowledged: Vec<String>,
    /// Its app's answers from the push: when decided, Call-ID, answer.
    pub answered_from_push: Vec<(Ms, String, PushAnswer)>,
    /// Replies of the app API that reached the app: when, Call-ID, reply.
    pub app_replies: Vec<(Ms, String, AppAnswer)>,
    /// CANCELs received for an INVITE it held: when, Call-ID, Reason header.
    pub cancelled: Vec<(Ms, String, String)>,
}

pub struct Phone {
    pub index: usize,
    pub spec: PhoneSpec,
    ip: Ipv4Addr,
    port: u16,
    pub awake: bool,
    pub conn: Option<FlowId>,
    reg_cseq: u32,
    registered_cseq: u32,
    /// INVITEs by branch.
    pub incoming: HashMap<String, Incoming>,
    /// Calls up, by Call-ID.
    pub dialogs: HashMap<String, Dialog>,
    pub token_dead: bool,
    /// It stays awake at least until then (woken, it waits for its calls).
    awake_until: Ms,
    /// The app was killed once already (it happens once a run).
    died: bool,
    pub seen: Seen,
    next: u64,
    /// The app's own randomness for its answers from the push, apart from the network's,
    /// so that a run of an app that only wakes draws what it drew before the app API.
    app_rng: StdRng,
    /// Calls its app refused from the push, with the SIP code an INVITE of theirs gets.
    refusing: HashMap<String, u16>,
    /// Its answers from the push, by Call-ID.
    posts: HashMap<String, Post>,
}

impl Phone {
    pub fn new(index: usize, spec: PhoneSpec, seed: u64) -> Self {
        let app_seed = seed ^ 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(index as u64 + 1);
        Phone {
            index,
            spec,
            ip: Ipv4Addr::new(10, 0, 0, u8::try_from(index + 1).expect("few phones")),
            port: 5060,
            awake: false,
            conn: None,
            reg_cseq: 0,
            registered_cseq: 0,
            incoming: HashMap::new(),
            dialogs: HashMap::new(),
            token_dead: false,
            awake_until: 0,
            died: false,
            seen: Seen::default(),
            next: 0,
            app_rng: StdRng::seed_from_u64(app_seed),
            refusing: HashMap::new(),
            posts: HashMap::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn token(&self) -> String {
        format!("token-{}", self.index)
    }

    fn me(&self) -> Actor {
        Actor::Phone(self.index)
    }

    fn tick(&self, net: &mut Net, delay: Ms, tick: Tick) {
        net.tick(delay, NetTick::Phone(self.index, tick));
    }

    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Whether the line is held: an INVITE ringing or a call up.
    fn line_holder(&self) -> Option<String> {
        self.incoming
            .values()
            .filter(|i| matches!(i.state, State::Trying | State::Ringing | State::Final(200)))
            .map(|i| i.call_id.clone())
            .chain(
                self.dialogs
                    .iter()
                    .filter(|(_, d)| !d.ended)
                    .map(|(c, _)| c.clone()),
            )
            .next()
    }

    fn busy(&self) -> bool {
        self.line_holder().is_some()
    }

    // ----- waking and sleeping ----------------------------------------------------------

    /// The app starts: it opens its flow and registers.
    pub fn start(&mut self, net: &mut Net) {
        self.wake(net);
        if let Some(at) = self.spec.sleeps_at {
            self.tick(net, at, Tick::Sleep);
        }
    }

    fn wake(&mut self, net: &mut Net) {
        self.awake = true;
        if !self.spec.tcp && self.spec.new_port_on_wake && self.reg_cseq > 0 {
            self.port += 1;
        }
        if self.spec.tcp {
            self.port += 1;
            self.conn = Some(net.connect(self.index, self.addr()));
        } else {
            net.listen(self.addr(), self.me());
        }
        self.seen.flows.push((net.now, None, self.addr()));
        net.note(format!("phone {} wakes on {}", self.index, self.addr()));
        self.register(net);
    }

    fn sleep(&mut self, net: &mut Net) {
        if !self.awake {
            return;
        }
        if net.now < self.awake_until {
            return self.tick(net, self.awake_until - net.now, Tick::Sleep);
        }
        if self.busy()
            || self
                .incoming
                .values()
                .any(|i| matches!(i.state, State::Final(_)))
        {
            // The app is in a call: it sleeps once the call is over.
            return self.tick(net, self.spec.stays_awake, Tick::Sleep);
        }
        net.note(format!("phone {} falls asleep", self.index));
        self.go_down(net);
    }

    /// The app stops: its flow closes, what rang is forgotten.
    fn go_down(&mut self, net: &mut Net) {
        self.awake = false;
        self.close_flow(net.now);
        if let Some(id) = self.conn.take() {
            net.close(id, true);
        }
        net.unlisten(self.addr());
        // The app's SIP stack goes with it: what rang is lost, what comes later is new.
        for (_, incoming) in self.incoming.drain() {
            if matches!(incoming.state, State::Trying | State::Ringing) {
                self.seen.killed_with.push((net.now, incoming.call_id));
            }
        }
    }

    fn close_flow(&mut self, now: Ms) {
        if let Some((_, closed @ None, _)) = self.seen.flows.last_mut() {
            *closed = Some(now);
        }
    }

    /// A push arrives for `call_id` ("" for a binding refresh), with its answer token when
    /// the node has an app API.
    pub fn on_push(&mut self, net: &mut Net, call_id: String, token: Option<String>) {
        net.note(format!(
            "push reaches phone {} ({}) for {call_id:?}",
            self.index,
            if self.awake { "awake" } else { "asleep" }
        ));
        self.seen
            .pushes
            .push((net.now, call_id.clone(), !self.awake));
        if self.awake {
            // Registered already: an awake app has nothing to do for a push.
            return;
        }
        let token = token.filter(|_| !call_id.is_empty());
        let choice = if token.is_some() {
            self.choose()
        } else {
            OnPush::Wake
        };
        let answer = match choice {
            OnPush::Wake => return self.wake_up(net),
            OnPush::Busy => PushAnswer::Busy,
            OnPush::Decline => PushAnswer::Decline,
            OnPush::Ringing => PushAnswer::Ringing,
        };
        net.note(format!(
            "phone {}'s app answers {answer:?} from the push for {call_id}",
            self.index
        ));
        self.seen
            .answered_from_push
            .push((net.now, call_id.clone(), answer));
        let think = match answer.code() {
            Some(code) => {
                // An INVITE of the call that reaches it after all (its answer lost, or too
                // late) is refused the same.
                self.refusing.insert(call_id.clone(), code);
                let (low, high) = self.spec.from_push.think;
                self.app_rng.random_range(low..=high.max(low))
            }
            // Showing the call, it says so at once.
            None => self.app_rng.random_range(0..=200),
        };
        self.posts.insert(
            call_id.clone(),
            Post {
                token: token.unwrap_or_default(),
                answer,
                attempt: 0,
                replied: false,
            },
        );
        self.tick(net, think, Tick::Post(call_id));
        let registers = answer == PushAnswer::Ringing || {
            let p = self.spec.from_push.registers_anyway;
            p > 0.0 && self.app_rng.random_bool(p.min(1.0))
        };
        if registers {
            self.wake_up(net);
        }
    }

    /// What the app does with a call's push, drawn from its weights.
    fn choose(&mut self) -> OnPush {
        let choices = self.spec.from_push.choices;
        let total: u32 = choices.iter().map(|(_, w)| w).sum();
        if total == choices[0].1 {
            // Nothing but waking: nothing drawn.
            return OnPush::Wake;
        }
        let mut pick = self.app_rng.random_range(0..total);
        for (choice, weight) in choices {
            if pick < weight {
                return choice;
            }
            pick -= weight;
        }
        OnPush::Wake
    }

    /// Woken by a push, the app starts its SIP stack and registers a while later.
    fn wake_up(&mut self, net: &mut Net) {
        let (low, high) = self.spec.wake_after;
        let delay = net.between(low, high);
        self.tick(net, delay, Tick::Register);
        // Waking: a second push finds it busy waking up.
        self.awake = true;
    }

    /// Posts the app's answer for `call_id` over HTTPS (this attempt of it).
    fn post(&mut self, net: &mut Net, call_id: String) {
        let FromPush { latency, loss, .. } = self.spec.from_push;
        let Some(post) = self.posts.get(&call_id) else {
            return;
        };
        let (low, high) = latency;
        let up = self.app_rng.random_range(low..=high.max(low));
        let down = self.app_rng.random_range(low..=high.max(low));
        let lost = |rng: &mut StdRng| loss > 0.0 && rng.random_bool(loss.min(1.0));
        let (lost_up, lost_down) = (lost(&mut self.app_rng), lost(&mut self.app_rng));
        net.note(format!(
            "phone {}'s app posts {:?} for {call_id} (attempt {}){}",
            self.index,
            post.answer,
            post.attempt,
            if lost_up { ", lost on the way" } else { "" }
        ));
        let attempt = post.attempt;
        if !lost_up {
            let request = AppPost {
                phone: self.index,
                call_id: call_id.clone(),
                token: post.token.clone(),
                answer: post.answer,
                attempt,
                back: (!lost_down).then_some(down),
            };
            net.after(up, Happening::AppPost(request));
        }
        // The HTTP client's time-out: well past a round trip.
        self.tick(
            net,
            2 * high.max(low) + 1_000,
            Tick::PostTimeout(call_id, attempt),
        );
    }

    /// The app API's reply to the app's post for `call_id` arrives.
    pub fn on_app_reply(&mut self, net: &mut Net, call_id: String, reply: AppAnswer) {
        net.note(format!(
            "phone {}'s app is told {reply:?} for {call_id}",
            self.index
        ));
        self.seen
            .app_replies
            .push((net.now, call_id.clone(), reply));
        let Some(post) = self.posts.get_mut(&call_id) else {
            return;
        };
        if post.replied {
            return;
        }
        post.replied = true;
        let refused = post.answer != PushAnswer::Ringing;
        if reply == AppAnswer::Reply(AppReply::Conflict) && refused && !self.awake {
            // The device has the call's INVITE over SIP already (it was taken to be awake):
            // the app answers there, so it wakes, registers, and refuses the INVITE it gets.
            self.wake_up(net);
        }
    }

    /// The network cut the phone's connection: an awake app reconnects and registers, and
    /// answers what rings over its new connection.
    pub fn on_cut(&mut self, net: &mut Net, id: FlowId) {
        if self.conn != Some(id) {
            return;
        }
        self.conn = None;
        self.close_flow(net.now);
        if self.awake {
            let delay = net.between(500, 5_000);
            self.tick(net, delay, Tick::Register);
        }
    }

    // ----- registering ------------------------------------------------------------------

    fn register(&mut self, net: &mut Net) {
        self.reg_cseq += 1;
        let cseq = self.reg_cseq;
        let bytes = self.register_bytes(cseq);
        self.send(net, bytes);
        if !self.spec.tcp {
            self.tick(net, 500, Tick::RegisterAgain(cseq, 500));
        }
    }

    fn register_bytes(&mut self, cseq: u32) -> Bytes {
        let n = self.fresh();
        let branch = format!("z9hG4bKreg{}x{cseq}x{n}", self.index);
        let transport = if self.spec.tcp { "tcp" } else { "udp" };
        let user = &self.spec.user;
        let push = if self.token_dead {
            String::new()
        } else {
            format!(
                ";pn-provider=fcm;pn-prid={};pn-param=project-1",
                self.token()
            )
        };
        sip::request(
            "REGISTER",
            &format!("sip:{}", server().ip()),
            &[
                ("Via", self.via(&branch)),
                ("From", format!("<sip:{user}@{}>;tag=r{}", server().ip(), self.index)),
                ("To", format!("<sip:{user}@{}>", server().ip())),
                ("Call-ID", format!("reg-{}@sim", self.index)),
                ("CSeq", format!("{cseq} REGISTER")),
                (
                    "Contact",
                    format!(
                        "<sip:{user}@{};transport={transport}{push}>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-{:012}>\"",
                        self.addr(),
                        self.index
                    ),
                ),
                ("Expires", "3600".to_owned()),
            ],
            "",
        )
    }

    fn via(&self, branch: &str) -> String {
        let transport = if self.spec.tcp { "TCP" } else { "UDP" };
        format!("SIP/2.0/{transport} {};branch={branch};rport", self.addr())
    }

    fn send(&mut self, net: &mut Net, bytes: Bytes) {
        if self.spec.tcp {
            match self.conn {
                Some(id) => net.tcp_to_node(id, bytes),
                None => net.note(format!("phone {}: no connection to send on", self.index)),
            }
        } else {
            net.udp_to_node(self.addr(), bytes);
        }
    }

    /// Answers a request: over the connection it came on, or, that one gone, over the
    /// app's current one (RFC 3261 §18.2.2); over UDP from the address it listens on.
    fn reply(&mut self, net: &mut Net, link: Link, bytes: Bytes) {
        match (link, self.conn) {
            (Link::Tcp(_), Some(id)) => net.tcp_to_node(id, bytes),
            (Link::Tcp(_), None) => {}
            (Link::Udp(_), _) if net.listening(self.addr(), self.me()) => {
                net.udp_to_node(self.addr(), bytes);
            }
            (Link::Udp(_), _) => {}
        }
    }

    // ----- what arrives -----------------------------------------------------------------

    pub fn on_message(&mut self, net: &mut Net, link: Link, bytes: &Bytes) {
        let readable = match link {
            Link::Tcp(id) => self.conn == Some(id),
            Link::Udp(addr) => net.listening(addr, self.me()),
        };
        if !readable {
            return;
        }
        let Some(msg) = Msg::parse(bytes) else {
            return net.note(format!("phone {}: unparsable message", self.index));
        };
        match (msg.method(), msg.status()) {
            (Some("INVITE"), _) => self.on_invite(net, link, msg),
            (Some("CANCEL"), _) => self.on_cancel(net, link, &msg),
            (Some("ACK"), _) => self.on_ack(net, &msg),
            (Some("BYE"), _) => {
                let bye = sip::response(&msg, 200, None, &[]);
                self.reply(net, link, bye);
                if let Some(dialog) = self.dialogs.get_mut(&msg.call_id()) {
                    dialog.ended = true;
                }
            }
            (Some(_), _) => {
                let answer = sip::response(&msg, 200, None, &[]);
                self.reply(net, link, answer);
            }
            (None, Some(200)) if msg.cseq_method() == "REGISTER" => {
                let cseq = msg.header("CSeq");
                let seq: u32 = cseq
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if seq > self.registered_cseq {
                    self.registered_cseq = seq;
                    self.seen.registered.push(net.now);
                }
            }
            _ => {}
        }
    }

    fn on_invite(&mut self, net: &mut Net, link: Link, msg: Msg) {
        let branch = msg.branch();
        if let Some(incoming) = self.incoming.get(&branch) {
            // A retransmission: the last response again.
            let last = incoming.last.clone();
            return self.reply(net, link, last);
        }
        let call_id = msg.call_id();
        net.note(format!("phone {} gets the INVITE of {call_id}", self.index));
        self.seen
            .invites
            .push((net.now, call_id.clone(), branch.clone()));
        let n = self.fresh();
        let tag = format!("p{}t{n}", self.index);
        let trying = sip::response(&msg, 100, None, &[]);
        self.reply(net, link, trying.clone());
        let holder = self.line_holder();
        let mut incoming = Incoming {
            call_id: call_id.clone(),
            state: State::Trying,
            invite: msg,
            last: trying,
            link,
            tag,
            refused_for: None,
        };
        if let Some(&code) = self.refusing.get(&call_id) {
            // Its app refused the call from the push: the INVITE gets the same answer.
            net.note(format!(
                "phone {} refused {call_id} from its push: {code}",
                self.index
            ));
            self.incoming.insert(branch.clone(), incoming);
            return self.final_response(net, &branch, code);
        }
        if let (Some(holder), false) = (holder, self.spec.call_waiting) {
            net.note(format!(
                "phone {} is busy with {holder}: 486 to {call_id}",
                self.index
            ));
            self.seen
                .refused_busy
                .push((net.now, call_id, holder.clone()));
            incoming.refused_for = Some(holder);
            self.incoming.insert(branch.clone(), incoming);
            return self.final_response(net, &branch, 486);
        }
        self.incoming.insert(branch.clone(), incoming);
        let ring = net.between(50, 500);
        self.tick(net, ring, Tick::Ring(branch.clone()));
        let (low, high) = self.spec.answer_after;
        let decide = net.between(low, high);
        self.tick(net, ring + decide, Tick::Decide(branch.clone()));
        self.tick(net, 60_000, Tick::RingTimeout(branch));
        if !self.died && net.chance(self.spec.dies) {
            self.died = true;
            let die = net.between(10, ring + decide);
            self.tick(net, die, Tick::Die);
        }
    }

    fn on_cancel(&mut self, net: &mut Net, link: Link, msg: &Msg) {
        let branch = msg.branch();
        let Some(incoming) = self.incoming.get(&branch) else {
            let answer = sip::response(msg, 481, None, &[]);
            return self.reply(net, link, answer);
        };
        let ringing = matches!(incoming.state, State::Trying | State::Ringing);
        let call_id = incoming.call_id.clone();
        self.seen
            .cancelled
            .push((net.now, call_id.clone(), msg.header("Reason")));
        let answer = sip::response(msg, 200, None, &[]);
        self.reply(net, link, answer);
        if ringing {
            net.note(format!("phone {} cancelled: {call_id}", self.index));
            self.final_response(net, &branch, 487);
        }
    }

    fn on_ack(&mut self, net: &mut Net, msg: &Msg) {
        // The ACK of a non-2xx has the INVITE's branch; that of a 2xx a new one.
        let call_id = msg.call_id();
        let index = self.index;
        let branch = msg.branch();
        let key = if self.incoming.contains_key(&branch) {
            Some(branch)
        } else {
            self.incoming
                .iter()
                .find(|(_, i)| i.call_id == call_id && i.state == State::Final(200))
                .map(|(b, _)| b.clone())
        };
        let Some(incoming) = key.and_then(|k| self.incoming.get_mut(&k)) else {
            return net.note(format!("phone {index}: an ACK for nothing of {call_id}"));
        };
        if let State::Final(code) = incoming.state {
            incoming.state = State::Done;
            if code == 200 {
                net.note(format!("phone {index} in a call: {call_id}"));
                let invite = Msg::parse(&incoming.invite.0.bytes()).expect("parsed once");
                self.dialogs.insert(
                    call_id.clone(),
                    Dialog {
                        invite,
                        link: incoming.link,
                        tag: incoming.tag.clone(),
                        ended: false,
                        cseq: 0,
                    },
                );
                let (low, high) = self.spec.talk;
                let talk = net.between(low, high);
                self.tick(net, talk, Tick::HangUp(call_id));
            }
        }
    }

    // ----- answering --------------------------------------------------------------------

    pub fn on_tick(&mut self, net: &mut Net, tick: Tick) {
        match tick {
            Tick::Sleep => self.sleep(net),
            Tick::Register => {
                self.awake_until = net.now + self.spec.stays_awake;
                if self.conn.is_none() && (self.spec.tcp || !net.listening(self.addr(), self.me()))
                {
                    self.wake(net);
                } else {
                    self.register(net);
                }
                let stay = self.spec.stays_awake;
                self.tick(net, stay, Tick::Sleep);
            }
            Tick::RegisterAgain(cseq, interval) => {
                if self.registered_cseq < cseq && self.reg_cseq == cseq && interval < 16_000 {
                    let bytes = self.register_bytes(cseq);
                    self.send(net, bytes);
                    self.tick(net, interval * 2, Tick::RegisterAgain(cseq, interval * 2));
                }
            }
            Tick::Ring(branch) => {
                if self.incoming.get(&branch).map(|i| &i.state) == Some(&State::Trying) {
                    let ringing = self.provisional(&branch, 180);
                    if let Some((link, bytes)) = ringing {
                        let call_id = self.incoming[&branch].call_id.clone();
                        self.seen.rang.push((net.now, call_id));
                        self.reply(net, link, bytes);
                    }
                }
            }
            Tick::Decide(branch) => {
                let Some(incoming) = self.incoming.get(&branch) else {
                    return;
                };
                if !matches!(incoming.state, State::Trying | State::Ringing) {
                    return;
                }
                let total: u32 = self.spec.answers.iter().map(|(_, w)| w).sum();
                let mut pick = net.between(0, u64::from(total.max(1)) - 1);
                let mut answer = Answer::Ignore;
                for (a, w) in self.spec.answers {
                    if pick < u64::from(w) {
                        answer = a;
                        break;
                    }
                    pick -= u64::from(w);
                }
                match answer {
                    Answer::Accept => self.final_response(net, &branch, 200),
                    Answer::Busy => self.final_response(net, &branch, 486),
                    Answer::Decline => self.final_response(net, &branch, 603),
                    Answer::Ignore => {}
                }
            }
            Tick::RingTimeout(branch) => {
                let ringing = self
                    .incoming
                    .get(&branch)
                    .is_some_and(|i| matches!(i.state, State::Trying | State::Ringing));
                if ringing {
                    self.seen
                        .ring_timeouts
                        .push((net.now, self.incoming[&branch].call_id.clone()));
                    self.final_response(net, &branch, 480);
                }
            }
            Tick::FinalAgain(branch, n) => {
                let tcp = self.spec.tcp;
                let Some(incoming) = self.incoming.get_mut(&branch) else {
                    return;
                };
                let State::Final(code) = incoming.state else {
                    return;
                };
                // Timer G doubling to T2, for 64·T1 (Timer H), then the ACK is taken as lost.
                if n >= 10 {
                    incoming.state = State::Done;
                    if code == 200 {
                        self.seen.unacknowledged.push(incoming.call_id.clone());
                    }
                    return;
                }
                if code == 200 || !tcp {
                    let (link, bytes) = (incoming.link, incoming.last.clone());
                    self.reply(net, link, bytes);
                }
                let interval = (500 << (n + 1)).min(4_000);
                self.tick(net, interval, Tick::FinalAgain(branch, n + 1));
            }
            Tick::HangUp(call_id) => self.hang_up(net, &call_id),
            Tick::Post(call_id) => self.post(net, call_id),
            Tick::PostTimeout(call_id, attempt) => {
                let Some(post) = self.posts.get_mut(&call_id) else {
                    return;
                };
                if post.replied || post.attempt != attempt {
                    return;
                }
                if attempt == 0 {
                    post.attempt = 1;
                    self.post(net, call_id);
                } else {
                    net.note(format!(
                        "phone {}'s app gives up its answer for {call_id}",
                        self.index
                    ));
                }
            }
            Tick::Die => {
                if self.awake && self.conn.is_some() || net.listening(self.addr(), self.me()) {
                    net.note(format!("phone {}: the app is killed", self.index));
                    self.go_down(net);
                }
            }
        }
    }

    fn provisional(&mut self, branch: &str, code: u16) -> Option<(Link, Bytes)> {
        let incoming = self.incoming.get_mut(branch)?;
        let contact = format!(
            "<sip:{}@{}>",
            self.spec.user,
            SocketAddr::from((self.ip, self.port))
        );
        let bytes = sip::response(
            &incoming.invite,
            code,
            Some(&incoming.tag),
            &[("Contact", contact)],
        );
        incoming.state = State::Ringing;
        incoming.last = bytes.clone();
        Some((incoming.link, bytes))
    }

    fn final_response(&mut self, net: &mut Net, branch: &str, code: u16) {
        let transport = if self.spec.tcp { "tcp" } else { "udp" };
        let contact = format!(
            "<sip:{}@{};transport={transport}>",
            self.spec.user,
            self.addr()
        );
        let Some(incoming) = self.incoming.get_mut(branch) else {
            return;
        };
        let bytes = sip::response(
            &incoming.invite,
            code,
            Some(&incoming.tag),
            &[("Contact", contact)],
        );
        net.note(format!(
            "phone {} answers {code} to {}",
            self.index, incoming.call_id
        ));
        incoming.state = State::Final(code);
        incoming.last = bytes.clone();
        let link = incoming.link;
        self.reply(net, link, bytes);
        // Over UDP a final response is retransmitted until its ACK (RFC 3261 §17.2.1); a
        // 2xx is, over any transport, by the UA core (§13.3.1.4).
        self.tick(net, 500, Tick::FinalAgain(branch.to_owned(), 0));
    }

    fn hang_up(&mut self, net: &mut Net, call_id: &str) {
        let n = self.fresh();
        let branch = format!("z9hG4bKbye{}x{n}", self.index);
        let via = self.via(&branch);
        let Some(dialog) = self.dialogs.get_mut(call_id) else {
            return;
        };
        if dialog.ended {
            return;
        }
        dialog.ended = true;
        dialog.cseq += 1;
        let invite = &dialog.invite;
        let remote = invite.contact_uri();
        let routes: Vec<(&str, String)> = invite
            .all("Record-Route")
            .into_iter()
            .map(|r| ("Route", r))
            .collect();
        let mut headers = vec![
            ("Via", via),
            (
                "From",
                format!("{};tag={}", invite.header("To"), dialog.tag),
            ),
            ("To", invite.header("From")),
            ("Call-ID", call_id.to_owned()),
            ("CSeq", format!("{} BYE", dialog.cseq)),
        ];
        headers.extend(routes);
        let bye = sip::request("BYE", &remote, &headers, "");
        let link = dialog.link;
        net.note(format!("phone {} hangs up {call_id}", self.index));
        self.reply(net, link, bye);
    }
}
