//! The attack suite (issue 10, part 6): what an attacker on the internet does to a SIP server,
//! done to pushpark on loopback, each attack ending by itself.
//!
//! * SIPVicious OSS (`pip install sipvicious`; .ci/run installs it), the usual SIP scanner
//!   (its `friendly-scanner` User-Agent fills the logs of servers on the internet): `svmap` finds the server, `svwar` looks for extensions
//!   and finds none, `svcrack` guesses a real user's password from a dictionary and is
//!   blocked after 10 refused guesses, long before the password's turn.
//! * Slowloris and a connection flood from 127.0.0.2 while a phone on 127.0.0.1 registers,
//!   sleeps, is pushed, wakes and answers a parked call.
//! * `kill -9` of the real `pushpark` binary in the middle of a burst of REGISTERs: every
//!   binding that got its 200 OK is there after a restart.
//! * SIGTERM to the real binary while a call is parked: the caller gets 503 with
//!   Retry-After, and the process exits once that answer is acknowledged.
//!
//! sipvicious 0.3.8 takes `-b ADDRESS` but never hands it to svwar's or svcrack's scanner:
//! they bind the wildcard address, so on loopback they always send from 127.0.0.1 (and the
//! server, which blocks by source address, blocks 127.0.0.1). Each sipvicious attack therefore
//! gets a server of its own, and the legitimate user who must not be locked out comes from
//! 127.0.0.2 (Linux routes all of 127.0.0.0/8 to `lo`).

mod common;
mod ua;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushpark::config::{Config, Transport as Listen};
use pushpark::server::Server;
use rsip::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use ua::{Behaviour, Caller, Credentials, Device, PushGateway, Transport, STEP};

/// The users of the sipvicious targets: names a scanner's dictionary holds, one numeric
/// extension in the usual ranges, and their passwords.
const USERS: [(&str, &str); 3] = [
    ("alice", "correct-horse-42"),
    ("bob", "battery-staple-7"),
    ("142", "tr0ub4dor-and-3"),
];

/// A server on an ephemeral UDP port of 127.0.0.1 with the users above, its admin listener
/// on 127.0.0.1, and the default limits: 60 requests in 2 s, 10 refused credentials in
/// 10 minutes, then the source is blocked for 5 minutes.
struct Target {
    server: Server,
    udp: SocketAddr,
    dir: tempfile::TempDir,
}

impl Target {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = common::loopback_config(dir.path(), &[Listen::Udp], false);
        let users = dir.path().join("users");
        for (name, password) in USERS {
            pushpark::auth::add_user(&users, name, "localhost", password).expect("a users file");
        }
        config.auth.users_file = Some(users);
        config.admin.listen = Some("127.0.0.1:0".parse().expect("an address"));
        adjust(&mut config);
        let (server, udp) = common::start_udp(config).await;
        Self { server, udp, dir }
    }

    /// How often `limit` was hit, from `pushpark_limit_hits_total` in `/metrics`.
    async fn hits(&self, limit: &str) -> u64 {
        common::limit_hits(&self.server, limit).await
    }

    /// Runs sipvicious tool `tool` (`svwar` …) against this server with `args`; the tool must
    /// end by itself within `limit`. Returns what it printed, stdout then stderr.
    async fn sipvicious(&self, tool: &str, args: &[&str], limit: Duration) -> String {
        let program = format!("sipvicious_{tool}");
        require(&program);
        let mut command = Command::new(&program);
        command
            // The address for Via and Contact: without it the tools resolve the host name.
            .args(["-x", "127.0.0.1"])
            // A local port free a moment ago (the tools bind 5060 unless told otherwise).
            .args(["-P", &free_udp_port().to_string()])
            .args(["-p", &self.udp.port().to_string()])
            .args(args)
            .arg("127.0.0.1");
        run_to_end(command, self.dir.path(), tool, limit).await
    }
}

/// Fails the test when `program` is not installed: a missing tool must not pass vacuously.
fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH. These tests run SIPVicious OSS; .ci/run installs it \
         (pip install sipvicious)."
    );
}

/// A UDP port of 127.0.0.1 free a moment ago.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `command` until it exits, killing it (and failing the test) after `limit`; its
/// output goes through files in `dir` named after `name`. Returns stdout, then stderr.
async fn run_to_end(mut command: Command, dir: &Path, name: &str, limit: Duration) -> String {
    let (out, err) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("an output file"))
        .stderr(std::fs::File::create(&err).expect("an output file"));
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert!(
        status.is_some(),
        "{program} did not end within {limit:?}; it printed:\n{text}"
    );
    text
}

/// The body rows of the tables sipvicious prints (`+---+` rules, `| a | b |` rows, the
/// header row above the `+===+` rule), each as its trimmed cells.
fn table_rows(output: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in output.lines().map(str::trim) {
        if line.starts_with("+=") {
            rows.pop(); // the header row
        } else if let Some(inner) = line.strip_prefix('|').and_then(|l| l.strip_suffix('|')) {
            rows.push(inner.split('|').map(|c| c.trim().to_owned()).collect());
        }
    }
    rows
}

/// The extensions svwar reports: its result table and its log lines
/// (`extension 'X' exists …`, `extension 'X' probably exists …`).
fn extensions_found(output: &str) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = table_rows(output)
        .into_iter()
        .filter_map(|row| row.into_iter().next())
        .collect();
    for line in output.lines() {
        if let Some(rest) = line.split("extension '").nth(1) {
            if line.contains("exists") {
                found.extend(rest.split('\'').next().map(str::to_owned));
            }
        }
    }
    found
}

/// A dictionary file of `words` in `dir`.
fn dictionary(dir: &Path, name: &str, words: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, words.join("\n") + "\n").expect("a dictionary");
    path
}

// ----------------------------------------------------------------------------------------
// sipvicious
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svwar_finds_no_extension_by_register_or_invite() {
    let limit = Duration::from_secs(30);
    // Extension names a scanner tries: the 3 real users among 30 made-up ones.
    let mut names: Vec<String> = ["admin", "test", "100", "1000", "sip", "office", "guest"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain((0..23).map(|i| format!("user{i}")))
        .collect();
    for (at, (user, _)) in [3, 11, 20].into_iter().zip(USERS) {
        names.insert(at, user.to_owned());
    }
    let count = names.len();
    let target = Target::start(|_| {}).await;
    let names = dictionary(target.dir.path(), "names.txt", &names);
    let names = names.to_str().expect("a path");

    // svmap finds a SIP server (it is one): it prints `| 127.0.0.1:<port> | unknown |`, the
    // User Agent column `unknown` since pushpark's answers name no product.
    let out = target.sipvicious("svmap", &[], limit).await;
    let port = target.udp.port().to_string();
    assert!(
        table_rows(&out).iter().any(|row| row[0].ends_with(&port)),
        "svmap lists the server:\n{out}"
    );

    // REGISTER, the default: every address, real or not, is challenged alike (401 before any
    // user is looked at), and svwar, whose first probe is a random extension, says so and
    // stops.
    let out = target
        .sipvicious("svwar", &["-d", names, "--maximumtime", "2"], limit)
        .await;
    assert!(
        out.contains("authentication request for an unknown extension"),
        "{out}"
    );
    assert_eq!(extensions_found(&out), BTreeSet::new(), "{out}");
    // Forced on, svwar takes the challenge as the answer for "no such user", gets the same
    // challenge for the first name it tries (a real user) and gives up: nothing to tell.
    for method in ["REGISTER", "INVITE"] {
        let out = target
            .sipvicious(
                "svwar",
                &["-d", names, "-m", method, "--force", "--maximumtime", "2"],
                limit,
            )
            .await;
        assert_eq!(extensions_found(&out), BTreeSet::new(), "{out}");
        assert!(out.contains("found nothing"), "{out}");
    }
    target.server.shutdown().await;

    // INVITEs through a trusted SBC in front (here 127.0.0.1) need no digest: every address
    // gets the core's answer, 480 for a real user without a phone exactly as for a made-up
    // one, and svwar goes through its whole list and range finding nothing.
    let target = Target::start(|c| {
        c.auth.trusted_peers = vec!["127.0.0.1/32".parse().expect("a network")];
    })
    .await;
    for (list, expected) in [(["-d", names], count), (["-e", "100-200"], 101)] {
        let mut args = vec!["-m", "INVITE", "--maximumtime", "2", "-vv"];
        args.extend(list);
        let out = target.sipvicious("svwar", &args, limit).await;
        assert!(
            out.contains("Bad user = ('SIP/2.0 480 Temporarily Unavailable'"),
            "svwar calibrated on 480:\n{out}"
        );
        let probed = out.matches("sending request for ").count();
        assert_eq!(probed, expected, "svwar tried every extension:\n{out}");
        assert_eq!(extensions_found(&out), BTreeSet::new(), "{out}");
        assert!(out.contains("found nothing"), "{out}");
    }
    target.server.shutdown().await;
}

/// What svcrack's `-vv` log tells: guesses sent (`trying <password>`), requests sent (its
/// first REGISTER, then `Sending REGISTER …` for each), and answers received (challenges
/// and refusals alike are 401s).
struct Crack {
    guesses: usize,
    requests: usize,
    answers: usize,
}

fn svcrack_figures(out: &str) -> Crack {
    Crack {
        guesses: out
            .lines()
            .filter(|l| l.starts_with("DEBUG:ASipOfRedWine:trying "))
            .count(),
        requests: 1 + out.matches("Sending REGISTER with auth=").count(),
        answers: out.matches("Received response: ").count(),
    }
}

/// The passwords svcrack reports: its result table and `The password for X is Y`.
fn passwords_found(out: &str) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = table_rows(out)
        .into_iter()
        .filter_map(|row| row.into_iter().nth(1))
        .collect();
    for line in out.lines() {
        if let Some(rest) = line.split("The password for ").nth(1) {
            found.extend(rest.split(" is ").nth(1).map(str::to_owned));
        }
    }
    found
}

/// A REGISTER of `user` from `socket`, its challenge answered with `password`: the
/// final status code of the authenticated REGISTER.
async fn register_as(socket: &UdpSocket, server: SocketAddr, user: &str, password: &str) -> u16 {
    let local = socket.local_addr().expect("an address");
    let register = |cseq: u32, authorization: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-legit{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=legit\r\nTo: <sip:{user}@localhost>\r\n\
             Call-ID: legit-{user}@attacks\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\nExpires: 600\r\n{authorization}Content-Length: 0\r\n\r\n"
        )
    };
    let challenge = common::final_response(socket, server, &register(1, "")).await;
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let offered: Vec<String> = challenge
        .lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate:"))
        .map(|v| v.trim().to_owned())
        .collect();
    let challenge = ua::digest::choose(&offered, None).expect("a digest challenge");
    let credentials = Credentials::new(user, password);
    let value = ua::digest::authorization(&challenge, &credentials, "REGISTER", "sip:localhost", 1);
    let answer = common::final_response(
        socket,
        server,
        &register(2, &format!("Authorization: {value}\r\n")),
    )
    .await;
    answer[8..11].parse().expect("a status code")
}

/// svcrack against `target` for alice, with a dictionary of 200 guesses ("guess001" …) in
/// which her password is the `at`th.
async fn svcrack(target: &Target, at: usize) -> String {
    let (user, password) = USERS[0];
    let words: Vec<String> = (1..=200)
        .map(|i| {
            if i == at {
                password.to_owned()
            } else {
                format!("guess{i:03}")
            }
        })
        .collect();
    let dict = dictionary(target.dir.path(), "passwords.txt", &words);
    // `-t 0.05`: at most one request per 50 ms (20 a second), under the request rate limit
    // (60 in 2 s), so what stops svcrack is the limit on refused credentials. After 3 s
    // without an answer (`--maximumtime 3`) it stops, then waits 10 s more for stragglers.
    let args = ["-u", user, "-d", dict.to_str().expect("a path")];
    let args = [&args[..], &["-t", "0.05", "--maximumtime", "3", "-vv"]].concat();
    target
        .sipvicious("svcrack", &args, Duration::from_secs(40))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svcrack_is_blocked_after_10_wrong_guesses_long_before_the_password() {
    let (user, password) = USERS[0];

    // The control: the same attack with the password 5th finds it. svcrack's digest works
    // against pushpark, so a password it does not find is one it was kept from.
    let control = Target::start(|_| {}).await;
    let out = svcrack(&control, 5).await;
    assert_eq!(
        passwords_found(&out),
        BTreeSet::from([password.to_owned()]),
        "{out}"
    );
    control.server.shutdown().await;

    // The attack: the password is 150th.
    let target = Target::start(|_| {}).await;
    let out = svcrack(&target, 150).await;
    let Crack {
        guesses,
        requests,
        answers,
    } = svcrack_figures(&out);
    eprintln!("svcrack: {guesses} guesses and {requests} requests sent, {answers} answered");
    assert_eq!(passwords_found(&out), BTreeSet::new(), "{out}");
    assert!(out.contains("found nothing"), "{out}");
    assert!(
        !out.contains(&format!("trying {password}")),
        "the password was never even tried:\n{out}"
    );
    assert!(
        guesses >= 10,
        "svcrack got to guess before it was blocked:\n{out}"
    );
    assert_eq!(target.hits("auth_failures").await, 1, "one block");
    assert!(
        out.contains("since we last received a response - stopping"),
        "svcrack gave up on a server that no longer answers:\n{out}"
    );

    // The block is by source address: 127.0.0.1 gets no answer at all now, while alice,
    // from her own address, still registers with her password.
    let blocked = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let options = "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-blk\r\nMax-Forwards: 70\r\n\
        To: <sip:127.0.0.1>\r\nFrom: <sip:x@127.0.0.1>;tag=b\r\nCall-ID: blocked@attacks\r\n\
        CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    blocked
        .send_to(options.as_bytes(), target.udp)
        .await
        .expect("sent");
    let mut buf = [0u8; 2048];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), blocked.recv_from(&mut buf))
            .await
            .is_err(),
        "a blocked source gets no answer"
    );
    let elsewhere = UdpSocket::bind("127.0.0.2:0").await.expect("a socket");
    assert_eq!(
        register_as(&elsewhere, target.udp, user, password).await,
        200
    );
    target.server.shutdown().await;
}

// ----------------------------------------------------------------------------------------
// Slowloris and a connection flood
// ----------------------------------------------------------------------------------------

/// A TCP connection from `source` (any port) to `server`.
async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// What the attacker's connections met.
#[derive(Default)]
struct Attack {
    /// Connections opened (accepted by the kernel).
    opened: AtomicUsize,
    /// Connections the server closed on the attacker.
    cut: AtomicUsize,
    stop: AtomicBool,
}

/// Slowloris: connects from `source`, sends the start of a request an octet every 100 ms, and
/// connects again 100 ms after the server cuts it off, until told to stop.
async fn slowloris(source: IpAddr, server: SocketAddr, attack: Arc<Attack>) {
    let request = "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/TCP 127.0.0.2:9;branch=z9hG4bK-slow\r\nMax-Forwards: 70\r\n\
        To: <sip:127.0.0.1>\r\nFrom: <sip:slow@127.0.0.2>;tag=s\r\n";
    while !attack.stop.load(Ordering::SeqCst) {
        let Ok(mut stream) = connect_from(source, server).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        attack.opened.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 512];
        for octet in request.bytes().cycle() {
            if attack.stop.load(Ordering::SeqCst) {
                return;
            }
            if stream.write_all(&[octet]).await.is_err() {
                attack.cut.fetch_add(1, Ordering::SeqCst);
                break;
            }
            // Whatever comes back (nothing is expected), a read of 0 means closed.
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                Err(_) | Ok(Ok(1..)) => {}
                Ok(Ok(0)) | Ok(Err(_)) => {
                    attack.cut.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A flood of silent connections from `source`: opens one every 20 ms and holds the last 50.
async fn flood(source: IpAddr, server: SocketAddr, attack: Arc<Attack>) {
    let mut held = std::collections::VecDeque::new();
    while !attack.stop.load(Ordering::SeqCst) {
        if let Ok(stream) = connect_from(source, server).await {
            attack.opened.fetch_add(1, Ordering::SeqCst);
            held.push_back(stream);
            if held.len() > 50 {
                held.pop_front();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_a_connection_flood_do_not_keep_a_phone_from_a_parked_call() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let gateway = PushGateway::start().await.expect("the push gateway");
    let mut config = common::loopback_config(dir.path(), &[Listen::Udp, Listen::Tcp], false);
    config.admin.listen = Some("127.0.0.1:0".parse().expect("an address"));
    config.connections.message_timeout = Duration::from_secs(1);
    config.connections.max_per_ip = 20;
    common::route_pushes_to(&mut config, gateway.url());
    // Nobody is trusted: the attacker (127.0.0.2) and the phone and caller (127.0.0.1) meet
    // the same limits, each for their own address.
    let server = Server::start(config).await.expect("the server starts");
    let tcp = server.local_addr(Listen::Tcp).expect("TCP");
    let udp = server.local_addr(Listen::Udp).expect("UDP");

    // The attacker: 30 slowloris connections (10 over the per-address cap of 20) and a flood
    // of silent ones, all from 127.0.0.2, going on until the call is over.
    let attacker: IpAddr = "127.0.0.2".parse().expect("an address");
    let attack = Arc::new(Attack::default());
    let mut tasks: Vec<_> = (0..30)
        .map(|_| tokio::spawn(slowloris(attacker, tcp, attack.clone())))
        .collect();
    tasks.push(tokio::spawn(flood(attacker, tcp, attack.clone())));
    // Until the first slowloris connections have been cut at message_timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::limit_hits(&server, "message_timeout").await < 20 {
        assert!(Instant::now() < deadline, "slowloris connections are cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Meanwhile, a phone registers over TCP and goes to sleep; a call for it is parked, the
    // push wakes it, it connects again, registers and answers.
    let phone = Device::builder("sip:bob@localhost", tcp)
        .transport(Transport::Tcp)
        .push("apns", "bobtoken", Some("ABCD1234.com.example.app.voip"))
        .behaviour(Behaviour::Answer {
            ring_for: Duration::from_millis(100),
        })
        .start()
        .await
        .expect("the phone connects");
    let ok = phone.register(600).await.expect("REGISTER answered");
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    phone.sleep().await;
    gateway.wake_on_push(&phone, Duration::from_millis(300));
    let alice = Caller::new("sip:alice@localhost", Transport::Udp)
        .await
        .expect("the caller starts");
    alice
        .invite("sip:bob@localhost", udp)
        .await
        .expect("INVITE sent");
    let ok = alice
        .expect_response(200, STEP)
        .await
        .expect("the parked call is answered");
    alice.ack(&ok).await.expect("ACK sent");
    alice.bye().await.expect("BYE sent");
    alice
        .expect_response_for(Method::Bye, 200, STEP)
        .await
        .expect("the BYE reaches the phone");
    assert_eq!(phone.wakes(), 1, "woken by the push");
    assert_eq!(gateway.pushes_for("bobtoken").len(), 1);

    // The attack was going on all along, and was cut: by address and by time.
    let cut_before_stop = attack.cut.load(Ordering::SeqCst);
    attack.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("an attacker task");
    }
    let opened = attack.opened.load(Ordering::SeqCst);
    let per_ip = common::limit_hits(&server, "connections_per_ip").await;
    let timed_out = common::limit_hits(&server, "message_timeout").await;
    eprintln!(
        "attacker: {opened} connections opened, {cut_before_stop} slowloris connections cut; \
         server: {per_ip} refused over the per-address cap, {timed_out} cut at message_timeout"
    );
    assert!(
        per_ip >= 10,
        "connections over the per-address cap: {per_ip}"
    );
    assert!(timed_out >= 20, "slowloris connections cut: {timed_out}");
    assert!(cut_before_stop >= 20, "{cut_before_stop}");
    server.shutdown().await;
}

// ----------------------------------------------------------------------------------------
// kill -9 during a REGISTER burst
// ----------------------------------------------------------------------------------------

/// The `pushpark` binary serving `config`, killed with SIGKILL when dropped.
struct Pushpark(Child);

impl Pushpark {
    /// Starts `pushpark run --config <config>`, logging to `log`, and waits until it answers
    /// an OPTIONS on `addr`.
    async fn start(config: &Path, log: &Path, addr: SocketAddr) -> Self {
        let log = std::fs::File::create(log).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pushpark"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("pushpark starts");
        let process = Self(child);
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
        let options = format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-up\r\n\
             Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:probe@127.0.0.1>;tag=u\r\n\
             Call-ID: up@attacks\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            socket.local_addr().expect("an address")
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 2048];
        loop {
            assert!(Instant::now() < deadline, "pushpark did not come up");
            let _ = socket.send_to(options.as_bytes(), addr).await;
            let answer = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf));
            if let Ok(Ok(_)) = answer.await {
                return process;
            }
        }
    }

    /// SIGKILL (`kill -9`), and reap it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Pushpark {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A configuration file in `dir` for the binary: a UDP listener on a free port of
/// 127.0.0.1, the store in `dir`, then `extra`. Returns the listener's address and the path.
fn binary_config(dir: &Path, extra: &str) -> (SocketAddr, PathBuf) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
        .parse()
        .expect("an address");
    let config = dir.join("pushpark.toml");
    let text = format!(
        "[[listen]]\ntransport = \"udp\"\naddress = \"{addr}\"\n\n\
         [store]\npath = \"{}\"\n\n{extra}",
        dir.join("bindings.db").display()
    );
    std::fs::write(&config, text).expect("a config file");
    (addr, config)
}

/// A REGISTER of `sip:u<n>@localhost` from `local`: with a Contact for an hour, or without one
/// (a query of the current bindings, RFC 3261 §10.2.3).
fn burst_register(n: usize, local: SocketAddr, cseq: u32, contact: bool) -> String {
    let contact = if contact {
        format!("Contact: <sip:u{n}@{local}>\r\nExpires: 3600\r\n")
    } else {
        String::new()
    };
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-b{n}-{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:u{n}@localhost>;tag=b{n}\r\nTo: <sip:u{n}@localhost>\r\n\
         Call-ID: burst-{n}@attacks\r\nCSeq: {cseq} REGISTER\r\n{contact}Content-Length: 0\r\n\r\n"
    )
}

/// Sends `request` and waits up to `within` for the final response with its Call-ID.
async fn exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    request: &str,
    within: Duration,
) -> Option<String> {
    let call_id = request
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .expect("a Call-ID")
        .to_owned();
    socket.send_to(request.as_bytes(), server).await.ok()?;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, _) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.contains(&format!("Call-ID: {call_id}\r\n")) && !text.starts_with("SIP/2.0 1") {
            return Some(text);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_register_burst_loses_no_binding_that_got_its_200() {
    const AORS: usize = 500;
    const SENDERS: usize = 16;
    let dir = tempfile::tempdir().expect("a temp dir");
    let (addr, config) = binary_config(
        dir.path(),
        &format!(
            "# The burst is {AORS} REGISTERs from 127.0.0.1 as fast as they are answered; the\n\
             # default rate limit (60 in 2 s per source) would block it after 60, and what is\n\
             # tested here is the store, not the limit.\n\
             [rate_limit]\nmax_requests = 1000000\n"
        ),
    );
    let mut server = Pushpark::start(&config, &dir.path().join("first.log"), addr).await;

    // SENDERS tasks, each with its socket and its share of the AORs, one REGISTER at a time;
    // each AOR that gets a 200 is recorded with its contact's address.
    let registered: Arc<Mutex<BTreeMap<usize, SocketAddr>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|task| {
            let (registered, killed) = (registered.clone(), killed.clone());
            tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
                let local = socket.local_addr().expect("an address");
                for n in (task..AORS).step_by(SENDERS) {
                    let request = burst_register(n, local, 1, true);
                    match exchange(&socket, addr, &request, Duration::from_millis(500)).await {
                        Some(answer) if answer.starts_with("SIP/2.0 200") => {
                            registered.lock().expect("lock").insert(n, local);
                        }
                        Some(answer) => panic!("REGISTER u{n}: {answer}"),
                        None if killed.load(Ordering::SeqCst) => return,
                        None => {} // lost; never counted as registered
                    }
                }
            })
        })
        .collect();
    // kill -9 once about 40 % of the AORs have their 200.
    let deadline = Instant::now() + Duration::from_secs(60);
    while registered.lock().expect("lock").len() < AORS * 2 / 5 {
        assert!(Instant::now() < deadline, "the burst is answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill();
    killed.store(true, Ordering::SeqCst);
    let answered_at_kill = registered.lock().expect("lock").len();
    for sender in senders {
        sender.await.expect("a sender");
    }
    let registered = registered.lock().expect("lock").clone();
    assert!(
        registered.len() < AORS,
        "the kill came in the middle of the burst"
    );

    // The same database again: each AOR that got its 200 has its binding.
    let _server = Pushpark::start(&config, &dir.path().join("second.log"), addr).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let local = socket.local_addr().expect("an address");
    let mut lost = Vec::new();
    let mut also_there = 0;
    for n in 0..AORS {
        let query = burst_register(n, local, 2, false);
        let answer = exchange(&socket, addr, &query, Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("no answer to the query for u{n}"));
        assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
        let bound = answer
            .lines()
            .any(|l| l.starts_with("Contact: <sip:u") && l.contains(&format!("sip:u{n}@")));
        match (registered.get(&n), bound) {
            (Some(contact), true) => assert!(answer.contains(&format!("sip:u{n}@{contact}>"))),
            (Some(_), false) => lost.push(n),
            (None, true) => also_there += 1,
            (None, false) => {}
        }
    }
    eprintln!(
        "{} of {AORS} REGISTERs got their 200 ({answered_at_kill} when the kill came); after the \
         restart {} of them are bound, and {also_there} more whose 200 never came",
        registered.len(),
        registered.len() - lost.len()
    );
    assert_eq!(
        lost,
        Vec::<usize>::new(),
        "bindings lost after their 200 OK"
    );
}

// ----------------------------------------------------------------------------------------
// SIGTERM: the real binary drains
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_parked_caller_503_and_the_process_exits() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (addr, config) = binary_config(
        dir.path(),
        "# The phone registered a moment ago: park its call all the same.\n\
         [parking]\nawake_window = \"0s\"\n",
    );
    let mut server = Pushpark::start(&config, &dir.path().join("pushpark.log"), addr).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let local = phone.local_addr().expect("an address");
    let register = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-t1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=b\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: term-reg@attacks\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:bob@{local};pn-provider=apns;pn-prid=bobtoken;\
         pn-param=ABCD1234.com.example.app.voip>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = exchange(&phone, addr, &register, STEP)
        .await
        .expect("an answer");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    let caller = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let from = caller.local_addr().expect("an address");
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-t2;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: term-call@attacks\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    caller
        .send_to(invite.as_bytes(), addr)
        .await
        .expect("INVITE sent");
    let mut buf = vec![0u8; 65_536];
    let (len, _) = tokio::time::timeout(STEP, caller.recv_from(&mut buf))
        .await
        .expect("100 Trying in time")
        .expect("a datagram");
    let trying = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(trying.starts_with("SIP/2.0 100"), "parked: {trying}");

    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (len, _) = tokio::time::timeout(STEP, caller.recv_from(&mut buf))
        .await
        .expect("a final response in time")
        .expect("a datagram");
    let answer = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    assert!(answer.contains("Retry-After: "), "{answer}");
    let to = answer
        .lines()
        .find(|l| l.starts_with("To: "))
        .expect("a To");
    let ack = format!(
        "ACK sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-t2;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\n{to}\r\n\
         Call-ID: term-call@attacks\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    caller
        .send_to(ack.as_bytes(), addr)
        .await
        .expect("ACK sent");
    // Drained once the 503 is acknowledged: the process ends well within the grace.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.0.try_wait().expect("waitable") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "pushpark still runs after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(dir.path().join("pushpark.log")).expect("the log");
    assert!(log.contains("draining"), "{log}");
}
