//! Real SIP clients from Debian, started by the test as child processes on 127.0.0.1, against
//! a pushpark server the test starts in-process:
//!
//! * [`Linphone`]: linphonec (package `linphone-cli`) as a sleeping RFC 8599 phone;
//! * [`Baresip`]: baresip (package `baresip`) as the caller.
//!
//! Here: the [`Harness`] (the server with its default configuration, its pushes going to a
//! local [`PushGateway`]; [`Harness::start_with_tls`] adds a TLS listener;
//! [`Harness::start_cluster`] makes it two nodes on a real Redis), a [`Process`]
//! wrapper that kills the child on drop (panics included), and [`Traced`], one SIP message
//! out of a client's printed trace. Every wait has a timeout. When a test fails (or with
//! `REAL_PHONES_KEEP_LOGS` set), the clients' logs are kept on disk and their path is
//! printed.
//!
//! Facts about running these clients headless are in `real-ua-notes.md` (shared reference).

pub mod baresip;
pub mod linphone;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushpark::config::{Listener, Transport as Listen};
use pushpark::server::Server;

pub use baresip::Baresip;
pub use linphone::Linphone;

use crate::common;
use crate::common::redis::RedisServer;
use crate::ua::{self, MessageExt, PushGateway};

/// A step a real client takes (start, register, ring, answer) on a loaded 2-core machine.
pub const STEP: Duration = Duration::from_secs(10);

/// Fails the test when `program` is not installed: a missing client must not pass vacuously.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH. These tests drive the real client from the Debian \
         package `{package}`; .ci/run installs it (apt-get install -y {package})."
    );
}

/// The pushpark server with its default configuration on ephemeral loopback ports, except
/// that every push route goes to a local [`PushGateway`], which records each push. Nothing
/// wakes a phone by itself: the test does, on seeing the push.
pub struct Harness {
    server: Option<Server>,
    /// The push service stand-in.
    pub gateway: PushGateway,
    /// The server's UDP listener: where the phone registers.
    pub udp: SocketAddr,
    /// Where callers send their calls: the same server, or in a cluster the other node.
    pub caller_udp: SocketAddr,
    /// In a cluster, the callers' node and the Redis both nodes share.
    cluster: Option<(Server, RedisServer)>,
    /// Its TLS listener, when started with [`Self::start_with_tls`].
    pub tls: Option<SocketAddr>,
    /// How long the server parks a call (its default).
    pub park_timeout: Duration,
    /// Holds the server's store and each client's home and log.
    dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// Starts the gateway and the server.
    pub async fn start() -> Self {
        Self::start_with_users(&[]).await
    }

    /// Starts the gateway and the server with a users file holding `users` (name,
    /// password), in the realm of the default configuration: digest authentication on.
    pub async fn start_with_users(users: &[(&str, &str)]) -> Self {
        Self::launch(users, false).await
    }

    /// As [`start`](Self::start), with a TLS listener on 127.0.0.1 besides UDP and TCP. Its
    /// certificate (for 127.0.0.1 and localhost) is issued by the test authority, which a
    /// client trusts through [`Self::authority`].
    pub async fn start_with_tls() -> Self {
        Self::launch(&[], true).await
    }

    /// As [`start`](Self::start), with the app API on (plain HTTP on 127.0.0.1): call pushes
    /// carry an answer token and URL.
    pub async fn start_with_app_api() -> Self {
        Self::launch_with(&[], false, |config| {
            let any_port = "127.0.0.1:0".parse().expect("an address");
            config.app_api.listen = Some(toml::Spanned::new(0..0, any_port));
        })
        .await
    }

    async fn launch(users: &[(&str, &str)], tls: bool) -> Self {
        Self::launch_with(users, tls, |_| {}).await
    }

    async fn launch_with(
        users: &[(&str, &str)],
        tls: bool,
        adjust: impl FnOnce(&mut pushpark::config::Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let gateway = PushGateway::start().await.expect("the push gateway starts");
        let mut config = common::loopback_config(dir.path(), &[Listen::Udp, Listen::Tcp], false);
        if !users.is_empty() {
            let file = dir.path().join("users");
            for (name, password) in users {
                pushpark::auth::add_user(&file, name, config.realm(), password)
                    .expect("a users file");
            }
            config.auth.users_file = Some(file);
        }
        if tls {
            let (certificate, key, _) = ua::tls::issue(dir.path(), "pushpark");
            let address = "127.0.0.1:0".parse().expect("an address");
            let mut listener = Listener::new(Listen::Tls, address);
            listener.as_mut().certificate = Some(certificate);
            listener.as_mut().private_key = Some(key);
            config.listen.push(listener);
        }
        common::route_pushes_to(&mut config, gateway.url());
        adjust(&mut config);
        let park_timeout = config.parking.park_timeout;
        let (server, udp) = common::start_udp(config).await;
        let tls = tls.then(|| server.local_addr(Listen::Tls).expect("a TLS listener"));
        Self {
            server: Some(server),
            gateway,
            udp,
            caller_udp: udp,
            cluster: None,
            tls,
            park_timeout,
            dir: Some(dir),
        }
    }

    /// As [`start`](Self::start), as two nodes of a cluster on a real `redis-server`: the
    /// phone registers on one (`udp`), callers send their calls to the other
    /// (`caller_udp`), which reaches the phone through the first (specs/parking.md §10).
    pub async fn start_cluster() -> Self {
        let redis = RedisServer::start();
        let url = redis.url();
        let secrets = tempfile::tempdir().expect("a temp dir");
        let secret = secrets.path().join("cluster.secret");
        let key: [u8; 32] = rand::random();
        std::fs::write(&secret, hex::encode(key)).expect("the cluster's secret");
        let to_cluster = |config: &mut pushpark::config::Config| {
            config.store.backend = pushpark::config::Backend::Redis;
            config.store.url = Some(toml::Spanned::new(0..0, url.clone()));
            config.cluster.secret_file = Some(secret.clone());
            config.auth.trusted_peers = vec!["127.0.0.1/32".parse().expect("a network")];
        };
        let mut h = Self::launch_with(&[], false, to_cluster).await;
        let mut config =
            common::loopback_config(secrets.path(), &[Listen::Udp, Listen::Tcp], false);
        common::route_pushes_to(&mut config, h.gateway.url());
        to_cluster(&mut config);
        let (callers_node, caller_udp) = common::start_udp(config).await;
        h.caller_udp = caller_udp;
        h.cluster = Some((callers_node, redis));
        h
    }

    /// Where a client keeps its home, config and log: `name` under the harness's temp dir.
    pub fn client_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.as_ref().expect("the temp dir").path().join(name);
        std::fs::create_dir_all(&dir).expect("a client dir");
        dir
    }

    /// The test authority's certificate (PEM), which issued the TLS listener's: a client's
    /// trust anchor.
    pub fn authority(&self) -> PathBuf {
        ua::tls::authority_pem(self.dir.as_ref().expect("the temp dir").path())
    }

    /// Shuts the server (each node) down.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        if let Some((server, _redis)) = self.cluster.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REAL_PHONES_KEEP_LOGS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "real clients' logs (stdout.log, stderr.log per client) kept in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// Polls `probe` every 20 ms until it gives a value or `timeout` runs out.
pub async fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lines a child printed, shared with the threads that read its pipes.
type Lines = Arc<Mutex<Vec<String>>>;

/// A child process, killed with SIGKILL when dropped (also during a panic). Its stdout and
/// stderr are read line by line into memory and appended to `stdout.log` / `stderr.log` in
/// its directory.
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
}

impl Process {
    /// Spawns `command` with stdin, stdout and stderr piped, logging into `dir`.
    pub fn spawn(mut command: Command, dir: &Path) -> Self {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = Lines::default();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        read_lines(out, stdout.clone(), dir.join("stdout.log"));
        read_lines(err, Lines::default(), dir.join("stderr.log"));
        Self {
            stdin: child.stdin.take(),
            child,
            stdout,
        }
    }

    /// Writes `line` and a newline to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to the client's stdin");
    }

    /// What it printed on stdout so far, one entry per line.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("output lock").clone()
    }

    /// SIGKILL, then reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_lines(pipe: impl std::io::Read + Send + 'static, lines: Lines, log: PathBuf) {
    std::thread::spawn(move || {
        let mut log = File::options().create(true).append(true).open(log).ok();
        for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            lines.lock().expect("output lock").push(line);
        }
    });
}

/// One SIP message out of a client's printed trace: its start line and header lines (the
/// body is not kept). [`MessageExt`] reads the headers.
#[derive(Debug, Clone)]
pub struct Traced {
    /// `true` for a message the client sent, `false` for one it received.
    pub sent: bool,
    /// `INVITE sip:… SIP/2.0` or `SIP/2.0 180 Ringing`.
    pub start_line: String,
    headers: Vec<String>,
}

impl Traced {
    /// The message in `lines` (the start line first, then headers up to the empty line that
    /// ends them), or `None` when the first line is not a SIP start line or the header
    /// section is not complete yet (the client is still printing it).
    pub fn parse<'a>(sent: bool, mut lines: impl Iterator<Item = &'a str>) -> Option<Self> {
        let start_line = lines.next()?.trim().to_owned();
        if !(start_line.starts_with("SIP/2.0 ") || start_line.ends_with(" SIP/2.0")) {
            return None;
        }
        let mut headers = Vec::new();
        for line in lines.map(str::trim_end) {
            if line.is_empty() {
                return Some(Self {
                    sent,
                    start_line,
                    headers,
                });
            }
            headers.push(line.to_owned());
        }
        None
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start_line.strip_prefix("SIP/2.0 ")?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        self.status()
            .is_none()
            .then(|| self.start_line.split_whitespace().next())
            .flatten()
    }

    /// `-> INVITE sip:… SIP/2.0 [Call-ID …, CSeq …, branch …]`, and the Reason header if
    /// any: for failure messages. The top Via branch tells a retransmission from a new
    /// transaction.
    pub fn summary(&self) -> String {
        let arrow = if self.sent { "->" } else { "<-" };
        let cseq = self.header("CSeq").unwrap_or_default();
        let branch = self.top_branch().unwrap_or_default();
        let reason = self
            .header("Reason")
            .map(|r| format!(", Reason {r}"))
            .unwrap_or_default();
        format!(
            "{arrow} {} [Call-ID {}, CSeq {cseq}, branch {branch}{reason}]",
            self.start_line,
            self.call_id()
        )
    }
}

impl MessageExt for Traced {
    fn rendered_headers(&self) -> Vec<String> {
        self.headers.clone()
    }
}

/// The summaries of `trace`, one a line, each once (no retransmissions): for failure messages.
pub fn describe(trace: &[Traced]) -> String {
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<String> = trace
        .iter()
        .map(Traced::summary)
        .filter(|line| seen.insert(line.clone()))
        .collect();
    lines.join("\n")
}
