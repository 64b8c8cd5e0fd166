//! [`Linphone`]: linphonec 5.1 (Debian package `linphone-cli`) as an RFC 8599 phone on UDP,
//! or on TLS ([`Linphone::over_tls`]), checking the server's certificate against the test
//! authority.
//!
//! Its push parameters ride in the Contact URI (`[proxy_0] contact_uri_parameters`). Asleep
//! is SIGKILL: the socket closes and the binding stays on the server (a graceful `quit` would
//! unregister). Awake is the same config started again: same port, Contact, pn-* and
//! `+sip.instance` (pinned by `[misc] uuid`), so the server takes its REGISTER as the
//! wake-up of the same device. It is driven over stdin (`answer N`) and watched through its
//! `-d 6` log, which prints every SIP message it sends and receives.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{require, wait_for, Harness, Process, Traced, STEP};
use crate::ua::MessageExt;

/// One linphonec phone: its home, its config, and every process started on it.
pub struct Linphone {
    /// `$HOME`, holding the config, the sqlite DB dir and the logs.
    dir: PathBuf,
    /// The config written before each start.
    rc: String,
    /// Every start, oldest first; the last one is the phone now, if it is awake.
    runs: Vec<Process>,
    awake: bool,
}

impl Linphone {
    /// A phone for `sip:{user}@localhost` registering at the harness's server over UDP, with
    /// push token `token`; not started. `busy` sets `[misc] max_calls=0`: liblinphone then
    /// answers every INVITE `486 Busy here` itself.
    pub fn new(h: &Harness, user: &str, token: &str, busy: bool) -> Self {
        Self::configure(h, user, token, busy, None)
    }

    /// As [`new`](Self::new) (not busy), registering over TLS at the harness's TLS listener
    /// ([`Harness::start_with_tls`]), with the server's certificate checked for real: chain
    /// up to the test authority and name (`verify_server_cn`) against 127.0.0.1. Each run
    /// opens a new connection; as over TCP, a second REGISTER follows the first 200 with
    /// the Contact's port rewritten to the connection's (from `rport`); an INVITE still in
    /// progress may then come again, to the new Contact with the same branch, which
    /// linphonec absorbs as a retransmission (`Reroute` in specs/parking.md).
    pub fn over_tls(h: &Harness, user: &str, token: &str) -> Self {
        let tls = h.tls.expect("a harness with a TLS listener");
        Self::configure(h, user, token, false, Some((tls, &h.authority())))
    }

    /// The config: SIP on `tls` (the server's listener and the authority's certificate) when
    /// given, else on UDP. The local port is fixed across runs, so the Contact is too.
    fn configure(
        h: &Harness,
        user: &str,
        token: &str,
        busy: bool,
        tls: Option<(SocketAddr, &Path)>,
    ) -> Self {
        require("linphonec", "linphone-cli");
        require("stdbuf", "coreutils");
        let dir = h.client_dir(&format!("linphonec-{user}"));
        // Without this directory liblinphone cannot open its DB and opens no SIP socket.
        std::fs::create_dir_all(dir.join(".local/share/linphone")).expect("linphone's data dir");
        // Port 0 disables a transport (-1 would be a random port).
        let (port, transport, registrar) = match tls {
            None => {
                let port = UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr())
                    .expect("a free UDP port")
                    .port();
                let transport = format!("sip_port={port}\nsip_tcp_port=0\nsip_tls_port=0\n");
                (port, transport, format!("<sip:{};transport=udp>", h.udp))
            }
            Some((server, authority)) => {
                let port = TcpListener::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr())
                    .expect("a free TCP port")
                    .port();
                let transport = format!(
                    "sip_port=0\n\
                     sip_tcp_port=0\n\
                     sip_tls_port={port}\n\
                     root_ca={}\n\
                     verify_server_certs=1\n\
                     verify_server_cn=1\n",
                    authority.display()
                );
                (port, transport, format!("<sip:{server};transport=tls>"))
            }
        };
        let max_calls = if busy { "max_calls=0\n" } else { "" };
        let rc = format!(
            "[sip]\n\
             {transport}\
             bind_address=127.0.0.1\n\
             default_proxy=0\n\
             \n\
             [proxy_0]\n\
             reg_proxy={registrar}\n\
             reg_identity=\"{user}\" <sip:{user}@localhost>\n\
             reg_expires=600\n\
             reg_sendregister=1\n\
             contact_uri_parameters=pn-provider=apns;pn-prid={token};\
             pn-param=ABCD1234.com.example.app.voip\n\
             \n\
             [misc]\n\
             uuid=00000000-0000-1000-8000-{port:012}\n\
             {max_calls}\
             \n\
             [rtp]\n\
             audio_rtp_port=-1\n\
             video_rtp_port=-1\n\
             text_rtp_port=-1\n",
        );
        Self {
            dir,
            rc,
            runs: Vec::new(),
            awake: false,
        }
    }

    /// Starts linphonec (again, if it was asleep) and waits for its REGISTER's 200.
    pub async fn start(&mut self) {
        assert!(!self.awake, "linphonec is already running");
        // linphonec rewrites its config; start every run from the same one.
        let rc = self.dir.join("linphonerc");
        std::fs::write(&rc, &self.rc).expect("write linphonerc");
        // Its log goes to stdout, block-buffered on a pipe unless run under `stdbuf -oL`.
        let mut command = Command::new("stdbuf");
        command
            .args(["-oL", "linphonec", "-c"])
            .arg(&rc)
            .args(["-d", "6"])
            .env("HOME", &self.dir)
            .env_remove("DISPLAY");
        let mut process = Process::spawn(command, &self.dir);
        process.send_line("soundcard use files");
        self.runs.push(process);
        self.awake = true;
        let registered = wait_for(STEP, || {
            self.now().into_iter().find_map(|line| {
                if line.contains("to [LinphoneRegistrationOk]") {
                    Some(Ok(()))
                } else if line.contains("to [LinphoneRegistrationFailed]") {
                    Some(Err(line))
                } else {
                    None
                }
            })
        })
        .await;
        match registered {
            Some(Ok(())) => {}
            Some(Err(line)) => panic!("linphonec's REGISTER failed: {line}"),
            None => panic!(
                "linphonec did not register within {STEP:?}; its SIP trace:\n{}",
                super::describe(&self.trace())
            ),
        }
    }

    /// Puts the phone to sleep: SIGKILL, so it does not unregister.
    pub fn sleep(&mut self) {
        if let Some(process) = self.runs.last_mut() {
            process.kill();
        }
        self.awake = false;
    }

    /// Wakes the phone, as the push would: [`Self::start`] on the same config.
    pub async fn wake(&mut self) {
        self.start().await;
    }

    /// Sleeps and wakes: the only way to make linphonec REGISTER again on demand.
    pub async fn restart(&mut self) {
        self.sleep();
        self.start().await;
    }

    /// What the current process printed (nothing when asleep).
    fn now(&self) -> Vec<String> {
        match self.runs.last() {
            Some(process) if self.awake => process.stdout(),
            _ => Vec::new(),
        }
    }

    /// The ids linphonec gave incoming calls since it last woke, oldest first.
    pub fn incoming_calls(&self) -> Vec<u32> {
        self.now()
            .iter()
            .filter(|l| l.starts_with("Receiving new incoming call from"))
            .filter_map(|l| l.rsplit_once("assigned id ")?.1.trim().parse().ok())
            .collect()
    }

    /// Answers call `id` (`answer N` on stdin).
    pub fn answer(&mut self, id: u32) {
        assert!(self.awake, "answer: linphonec is asleep");
        let process = self.runs.last_mut().expect("a running linphonec");
        process.send_line(&format!("answer {id}"));
    }

    /// Whether call `id` ended ("Call N with … ended") within `timeout`.
    pub async fn wait_for_end(&self, id: u32, timeout: Duration) -> bool {
        let prefix = format!("Call {id} with ");
        wait_for(timeout, || {
            self.now()
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(" ended"))
                .then_some(())
        })
        .await
        .is_some()
    }

    /// Every SIP message it sent or received, all runs, in order.
    pub fn trace(&self) -> Vec<Traced> {
        let mut out = Vec::new();
        for run in &self.runs {
            parse_trace(&run.stdout(), &mut out);
        }
        out
    }

    /// The Call-IDs of the INVITEs it received, in order of first arrival.
    pub fn invites_received(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for m in self.trace() {
            if !m.sent && m.method() == Some("INVITE") && !ids.contains(&m.call_id()) {
                ids.push(m.call_id());
            }
        }
        ids
    }

    /// The status codes it sent to INVITEs of `call_id`, each once, in order.
    pub fn invite_responses_sent(&self, call_id: &str) -> Vec<u16> {
        let mut codes = Vec::new();
        for m in self.trace() {
            if m.sent && m.call_id() == call_id && m.cseq().1 == "INVITE" {
                if let Some(code) = m.status().filter(|c| !codes.contains(c)) {
                    codes.push(code);
                }
            }
        }
        codes
    }
}

/// `line` without the `linphonec> ` prompts readline put in front of it.
fn strip_prompts(mut line: &str) -> &str {
    while let Some(rest) = line.strip_prefix("linphonec> ") {
        line = rest;
    }
    line
}

/// Whether `line` is a log line (`2026-12-07 02:16:52:424 belle-sip-…`), which ends the
/// SIP message printed before it.
fn is_log_line(line: &str) -> bool {
    let b = strip_prompts(line).as_bytes();
    b.len() > 24 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b' '
}

/// The SIP messages in linphonec's `-d 6` log: belle-sip logs `…]: message sent to [UDP://…]`
/// or `…]: received [N] new bytes from [UDP://…]:`, then the message, up to the next log line.
fn parse_trace(lines: &[String], out: &mut Vec<Traced>) {
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let sent = line.contains("]: message sent to [");
        let received = line.contains("]: received [") && line.contains(" new bytes from [");
        i += 1;
        if !(sent || received) {
            continue;
        }
        let end = lines[i..]
            .iter()
            .position(|l| is_log_line(l))
            .map_or(lines.len(), |n| i + n);
        let message = lines[i..end].iter().map(|l| strip_prompts(l));
        out.extend(Traced::parse(sent, message));
        i = end;
    }
}
