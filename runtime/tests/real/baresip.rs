//! [`Baresip`]: baresip 1.0 (Debian package `baresip`) as the caller.
//!
//! Commands go over its `ctrl_tcp` module (the `stdio` UI needs a tty); outcomes are read
//! from its SIP trace (`-s`, on stdout, line-buffered through `stdbuf -oL`), filtered by
//! Call-ID: `ctrl_tcp` reports no status code for a call it hung up itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{require, wait_for, Harness, Process, Traced, STEP};
use crate::ua::MessageExt;

/// Where Debian installs baresip's modules.
const MODULES: &str = "/usr/lib/baresip/modules";

/// One baresip caller with its own home, config and control connection.
pub struct Baresip {
    process: Process,
    ctrl: TcpStream,
    /// pushpark's address: every message in the trace from anywhere else was sent by us.
    proxy: SocketAddr,
    /// The Call-IDs of the calls placed so far.
    calls: Vec<String>,
    dir: PathBuf,
    /// The user part of its address-of-record.
    pub user: String,
}

impl Baresip {
    /// Starts baresip for `sip:{user}@localhost`, sending everything to the harness's
    /// server (outbound proxy over UDP), without registering.
    pub async fn start(h: &Harness, user: &str) -> Self {
        Self::launch(h, user, None).await
    }

    /// As [`start`](Self::start), answering digest challenges with `password`.
    pub async fn start_authenticated(h: &Harness, user: &str, password: &str) -> Self {
        Self::launch(h, user, Some(password)).await
    }

    async fn launch(h: &Harness, user: &str, password: Option<&str>) -> Self {
        require("baresip", "baresip");
        require("stdbuf", "coreutils");
        let dir = h.client_dir(&format!("baresip-{user}"));
        let config = dir.join("config");
        std::fs::create_dir_all(&config).expect("baresip's config dir");
        let ctrl_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free TCP port")
            .port();
        // `net_interface lo` finds no address; the IP works. Port 0 for SIP: baresip also
        // listens on TCP and TLS (at port + 1), all on random ports then.
        // `uuid.so` makes baresip send `Supported: gruu`: without a UUID it sends an empty
        // `Supported:`, which pushpark answers `400 Malformed Supported`. The `ausine`
        // source only runs at 48 kHz stereo; otherwise the source fails when the call is
        // answered and baresip hangs up at once (BYE, "Operation not supported"). No
        // player is needed. ctrl_tcp's commands (`dial`, `hangup`) are `menu.so`'s.
        let text = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:0\n\
             net_interface 127.0.0.1\n\
             audio_source ausine,440\n\
             ausrc_srate 48000\n\
             ausrc_channels 2\n\
             module_path {MODULES}\n\
             module uuid.so\n\
             module g711.so\n\
             module ausine.so\n\
             module_app account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n"
        );
        std::fs::write(config.join("config"), text).expect("write baresip's config");
        let auth = password.map_or(String::new(), |p| format!(";auth_pass={p}"));
        let account = format!(
            "\"{user}\" <sip:{user}@localhost>{auth};regint=0;outbound=\"sip:{}\"\n",
            h.caller_udp
        );
        std::fs::write(config.join("accounts"), account).expect("write baresip's accounts");
        std::fs::write(config.join("contacts"), "").expect("write baresip's contacts");
        let mut command = Command::new("stdbuf");
        command
            .args(["-oL", "baresip", "-s", "-f"])
            .arg(&config)
            .env("HOME", &dir);
        let process = Process::spawn(command, &dir);
        let ctrl = wait_for(STEP, || TcpStream::connect(("127.0.0.1", ctrl_port)).ok())
            .await
            .unwrap_or_else(|| {
                panic!(
                    "baresip's ctrl_tcp did not listen on {ctrl_port} within {STEP:?}:\n{}",
                    process.stdout().join("\n")
                )
            });
        log_events(&ctrl, dir.join("ctrl.log"));
        Self {
            process,
            ctrl,
            proxy: h.caller_udp,
            calls: Vec::new(),
            dir,
            user: user.to_owned(),
        }
    }

    /// Sends a menu command over ctrl_tcp (a netstring holding JSON).
    fn command(&mut self, command: &str, params: &str) {
        let json = serde_json::json!({ "command": command, "params": params, "token": command })
            .to_string();
        let netstring = format!("{}:{json},", json.len());
        self.ctrl
            .write_all(netstring.as_bytes())
            .unwrap_or_else(|e| panic!("ctrl_tcp {command}: {e}"));
    }

    /// Dials `uri` and returns the Call-ID of the INVITE it sends.
    pub async fn dial(&mut self, uri: &str) -> String {
        self.command("dial", uri);
        let known = self.calls.clone();
        let call_id = wait_for(STEP, || {
            self.trace()
                .into_iter()
                .find(|m| m.sent && m.method() == Some("INVITE") && !known.contains(&m.call_id()))
                .map(|m| m.call_id())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "baresip sent no INVITE within {STEP:?} (logs in {})",
                self.dir.display()
            )
        });
        self.calls.push(call_id.clone());
        call_id
    }

    /// Hangs up the current call: CANCEL before the 200, BYE after.
    pub fn hang_up(&mut self) {
        self.command("hangup", "");
    }

    /// Every SIP message it sent or received, in order.
    pub fn trace(&self) -> Vec<Traced> {
        parse_trace(&self.process.stdout(), self.proxy)
    }

    /// The status codes it received for `method` requests of `call_id`, each once, in order.
    pub fn responses(&self, call_id: &str, method: &str) -> Vec<u16> {
        let mut codes = Vec::new();
        for m in self.trace() {
            if !m.sent && m.call_id() == call_id && m.cseq().1 == method {
                if let Some(code) = m.status().filter(|c| !codes.contains(c)) {
                    codes.push(code);
                }
            }
        }
        codes
    }

    /// The first response to the INVITE of `call_id` for which `matches` holds, waiting up
    /// to `timeout`.
    pub async fn wait_for_response(
        &self,
        call_id: &str,
        matches: impl Fn(u16) -> bool,
        timeout: Duration,
    ) -> Option<u16> {
        wait_for(timeout, || {
            self.responses(call_id, "INVITE")
                .into_iter()
                .find(|&c| matches(c))
        })
        .await
    }

    /// The final response to the INVITE of `call_id`, waiting up to `timeout`.
    pub async fn wait_for_final(&self, call_id: &str, timeout: Duration) -> Option<u16> {
        self.wait_for_response(call_id, |c| c >= 200, timeout).await
    }

    /// The final response to its BYE in `call_id`, waiting up to `timeout`.
    pub async fn wait_for_bye_answer(&self, call_id: &str, timeout: Duration) -> Option<u16> {
        wait_for(timeout, || {
            self.responses(call_id, "BYE")
                .into_iter()
                .find(|&c| c >= 200)
        })
        .await
    }
}

/// Appends the events ctrl_tcp sends (netstrings of JSON) to `log`, so that the socket never
/// fills up, and for the post-mortem.
fn log_events(ctrl: &TcpStream, log: PathBuf) {
    let Ok(mut ctrl) = ctrl.try_clone() else {
        return;
    };
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(log).ok();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = ctrl.read(&mut buf) {
            if let Some(log) = log.as_mut() {
                let _ = log.write_all(&buf[..n]).and_then(|()| log.write_all(b"\n"));
            }
        }
    });
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The SIP messages in baresip's `-s` trace: each is a line `#`, a line
/// `UDP 127.0.0.1:A -> 127.0.0.1:B`, then the message.
fn parse_trace(lines: &[String], proxy: SocketAddr) -> Vec<Traced> {
    let proxy = proxy.to_string();
    let lines: Vec<String> = lines.iter().map(|l| strip_ansi(l)).collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "#" {
            continue;
        }
        let Some(route) = lines.get(i + 1) else {
            continue;
        };
        let from = route.split_whitespace().nth(1);
        let sent = from != Some(proxy.as_str());
        out.extend(Traced::parse(
            sent,
            lines[i + 2..].iter().map(String::as_str),
        ));
    }
    out
}
