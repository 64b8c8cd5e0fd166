//! Several nodes of one deployment:
//! - nodes given the same `[cluster] secret_file` accept each other's digest challenges,
//!   each with its own store; a node with another secret does not (a phone's REGISTER in
//!   raw SIP over UDP, its credentials computed by the test's own digest code,
//!   tests/ua/digest.rs);
//! - nodes on one real `redis-server` share bindings: what one stored survives Redis being
//!   killed and started again, and the other finds it; while Redis is down a REGISTER gets
//!   503 with Retry-After, never a 200, and a call to a phone already known still gets
//!   the phone's answer;
//! - a call parked on one node reaches the phone whose wake-up REGISTER went to another:
//!   the registration notice through Redis, the INVITE through the other node by the
//!   binding's Path, the answer and the hang-up back the same way; busy, decline, a CANCEL
//!   of the ringing phone and the notice of a call that ended before the phone woke, across
//!   nodes as on one; with the phone's node gone, it registers on a third and the next call
//!   reaches it there.

mod common;
mod ua;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::redis::RedisServer;
use pushpark::config::{Config, Listener, Transport};
use pushpark::server::Server;
use ua::sip::status;
use ua::{Behaviour, Caller, Credentials, Device, MessageExt, PushGateway};

/// A node on its own store in `dir/<name>`, with the users file and the secret file given.
async fn node(dir: &Path, name: &str, users: &Path, secret: &Path) -> (Server, SocketAddr) {
    let store = dir.join(name);
    std::fs::create_dir_all(&store).expect("a store dir");
    let mut config = common::loopback_config(&store, &[Transport::Udp], false);
    config.auth.users_file = Some(users.to_owned());
    config.cluster.secret_file = Some(secret.to_owned());
    common::start_udp(config).await
}

/// A secret file of 32 random bytes, as hex.
fn secret_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let key: [u8; 32] = rand::random();
    std::fs::write(&path, format!("{}\n", hex::encode(key))).expect("secret written");
    path
}

fn register(n: u32, authorization: Option<&str>) -> String {
    let authorization = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKcluster{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@localhost>;tag=c{n}\r\n\
         To: <sip:bob@localhost>\r\n\
         Call-ID: cluster-register@127.0.0.1\r\n\
         CSeq: {n} REGISTER\r\n\
         Contact: <sip:bob@127.0.0.1:5999>\r\n\
         Expires: 600\r\n\
         {authorization}Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_of_one_node_is_answered_on_another_that_shares_its_secret() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let users = dir.path().join("users");
    pushpark::auth::add_user(&users, "bob", "localhost", "secret").expect("a users file");
    let shared = secret_file(dir.path(), "shared.secret");
    let other = secret_file(dir.path(), "other.secret");
    let (a, at_a) = node(dir.path(), "a", &users, &shared).await;
    let (b, at_b) = node(dir.path(), "b", &users, &shared).await;
    let (c, at_c) = node(dir.path(), "c", &users, &other).await;

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a socket");
    let challenge = common::final_response(&socket, at_a, &register(1, None)).await;
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let offered: Vec<String> = challenge
        .lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .map(str::to_owned)
        .collect();
    let chosen = ua::digest::choose(&offered, None).expect("a digest challenge");
    let credentials = Credentials::new("bob", "secret");
    let answer = |n| {
        let value =
            ua::digest::authorization(&chosen, &credentials, "REGISTER", "sip:localhost", n);
        register(n + 1, Some(&value))
    };
    let on_b = common::final_response(&socket, at_b, &answer(1)).await;
    assert!(
        on_b.starts_with("SIP/2.0 200"),
        "node b takes node a's nonce:\n{on_b}"
    );
    let on_c = common::final_response(&socket, at_c, &answer(2)).await;
    assert!(
        on_c.starts_with("SIP/2.0 401"),
        "a node with another secret does not:\n{on_c}"
    );
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_that_is_no_secret_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, text, problem) in [
        ("short.secret", "00112233", "at least 32"),
        (
            "text.secret",
            "correct horse battery staple",
            "not hex digits",
        ),
        ("missing.secret", "", "No such file"),
    ] {
        let path = dir.path().join(name);
        if !text.is_empty() {
            std::fs::write(&path, text).expect("written");
        }
        let mut config = common::loopback_config(dir.path(), &[Transport::Udp], false);
        config.cluster.secret_file = Some(path.clone());
        let error = Server::start(config)
            .await
            .err()
            .expect("the start fails")
            .to_string();
        assert!(
            error.starts_with("cluster.secret_file: ")
                && error.contains(&path.display().to_string())
                && error.contains(problem),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_on_redis_outlive_a_redis_crash_and_no_register_is_acknowledged_unstored() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut redis = RedisServer::start();
    let url = redis.url();
    let on_redis = |name: &str| {
        let dir = dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("a dir");
        common::redis_config(&dir, &[Transport::Udp], &url)
    };
    let (a, at_a) = common::start_udp(on_redis("a")).await;
    let phone = Device::builder("sip:bob@localhost", at_a)
        .behaviour(Behaviour::Busy)
        .start_registered()
        .await;

    // Killed as in a crash: the binding was fsynced before its 200 OK.
    redis.kill();
    let refused = phone.register(600).await.expect("an answer");
    assert_eq!(status(&refused), 503, "{refused}");
    assert!(refused.header("Retry-After").is_some(), "{refused}");
    // Node a still knows the phone: a call to it gets the phone's own answer.
    let alice = Caller::new("sip:alice@localhost", ua::Transport::Udp)
        .await
        .expect("a caller");
    alice.invite("sip:bob@localhost", at_a).await.expect("sent");
    let busy = alice
        .expect_final(Duration::from_secs(5))
        .await
        .expect("a final answer");
    assert_eq!(status(&busy), 486, "{busy}");

    // Back with its append-only file: a node started now finds the binding (a query: a
    // REGISTER without Contact, RFC 3261 §10.2.3).
    redis.restart();
    let (b, at_b) = common::start_udp(on_redis("b")).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a socket");
    let query = register(1, None).replace("Contact: <sip:bob@127.0.0.1:5999>\r\n", "");
    let listed = common::final_response(&socket, at_b, &query).await;
    let contact = phone.local_addr().await.expect("awake").to_string();
    assert!(
        listed.starts_with("SIP/2.0 200") && listed.contains(&format!("<sip:bob@{contact}")),
        "node b lists the binding node a stored before the crash:\n{listed}"
    );
    let stored = phone.register(600).await.expect("an answer");
    assert_eq!(status(&stored), 200, "{stored}");
    for node in [a, b] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_lose_acknowledged_writes_stops_the_start() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("a URL");
    let mut con = client.get_connection().expect("connected");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query(&mut con)
        .expect("set");
    let config = common::redis_config(dir.path(), &[Transport::Udp], &redis.url());
    let error = Server::start(config.clone())
        .await
        .err()
        .expect("the start fails")
        .to_string();
    assert!(
        error.contains(&redis.url()) && error.contains("appendfsync everysec"),
        "{error}"
    );
    // The operator who knows better says so.
    let mut relaxed = config;
    relaxed.store.require_fsync = false;
    Server::start(relaxed)
        .await
        .expect("starts")
        .shutdown()
        .await;
    // No Redis there at all: the start fails naming it.
    drop(redis);
    let gone = common::redis_config(dir.path(), &[Transport::Udp], "redis://127.0.0.1:1");
    let error = Server::start(gone)
        .await
        .err()
        .expect("no Redis")
        .to_string();
    assert!(error.contains("redis://127.0.0.1:1"), "{error}");
}

/// Nodes of one cluster on a real Redis, pushing to one gateway.
struct Cluster {
    nodes: Vec<Server>,
    gateway: PushGateway,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes on UDP and TCP (127.0.0.1, the other nodes among them, trusted), one
    /// secret file, one Redis.
    async fn start(n: usize) -> Self {
        Self::start_with(n, |_, _| {}).await
    }

    /// [`start`](Self::start), each node's configuration changed by `adjust` (given the
    /// node's directory).
    async fn start_with(n: usize, adjust: impl Fn(&mut Config, &Path)) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let redis = RedisServer::start();
        let gateway = PushGateway::start().await.expect("the push gateway");
        let secret = secret_file(dir.path(), "cluster.secret");
        let mut nodes = Vec::new();
        for i in 0..n {
            let store = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&store).expect("a dir");
            let mut config = common::pushing_config(&store, gateway.url());
            config.store.backend = pushpark::config::Backend::Redis;
            config.store.url = Some(toml::Spanned::new(0..0, redis.url()));
            config.cluster.secret_file = Some(secret.clone());
            adjust(&mut config, &store);
            nodes.push(Server::start(config).await.expect("the node starts"));
        }
        Cluster {
            nodes,
            gateway,
            _redis: redis,
            _dir: dir,
        }
    }

    fn udp(&self, node: usize) -> SocketAddr {
        self.nodes[node].local_addr(Transport::Udp).expect("UDP")
    }

    fn tcp(&self, node: usize) -> SocketAddr {
        self.nodes[node].local_addr(Transport::Tcp).expect("TCP")
    }

    /// A phone app of `aor` with push token `token` that registered on `node` over TCP and
    /// fell asleep; a push wakes it, and it registers on `node` again.
    async fn sleeping_phone(
        &self,
        aor: &str,
        token: &str,
        node: usize,
        behaviour: Behaviour,
    ) -> Device {
        let phone = Device::builder(aor, self.tcp(node))
            .transport(ua::Transport::Tcp)
            .voip_app(token)
            .behaviour(behaviour)
            .start_registered()
            .await;
        phone.sleep().await;
        self.gateway
            .wake_on_push(&phone, Duration::from_millis(200));
        // Every node has read the REGISTER's notice (a call a few milliseconds sooner would
        // find the callee without this binding, as on one node before its REGISTER).
        let known = self.nodes[node].gauges().bindings;
        for other in &self.nodes {
            let deadline = std::time::Instant::now() + STEP;
            while other.gauges().bindings < known {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the notice never came"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        phone
    }

    async fn stop(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

async fn alice() -> Caller {
    Caller::new("sip:alice@localhost", ua::Transport::Udp)
        .await
        .expect("a caller")
}

/// A call from `alice` to bob through `node`, answered 200, acknowledged and hung up.
async fn answered_call(alice: &Caller, node: SocketAddr) -> rsip::Response {
    alice.invite("sip:bob@localhost", node).await.expect("sent");
    let ok = alice.expect_response(200, STEP).await.expect("answered");
    alice.ack_and_hang_up(&ok).await;
    ok
}

const STEP: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_parked_on_one_node_reaches_the_phone_that_wakes_on_another() {
    let cluster = Cluster::start(2).await;
    let bob = cluster
        .sleeping_phone(
            "sip:bob@localhost",
            "bob-cluster",
            1,
            Behaviour::Answer {
                ring_for: Duration::from_millis(100),
            },
        )
        .await;
    let alice = alice().await;
    let ok = answered_call(&alice, cluster.udp(0)).await;
    assert_eq!(
        cluster.gateway.pushes_for("bob-cluster").len(),
        1,
        "one push"
    );
    assert_eq!(bob.count(rsip::Method::Invite), 1, "delivered once");
    let route_set: Vec<String> = ok.header_values("Record-Route");
    assert_eq!(
        route_set.len(),
        2,
        "both nodes stay in the dialog: {route_set:?}"
    );
    bob.expect_request(rsip::Method::Bye, Duration::from_secs(5))
        .await
        .expect("the hang-up reaches the phone through both nodes");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_decline_from_a_phone_on_another_node_reach_the_caller() {
    let cluster = Cluster::start(2).await;
    cluster
        .sleeping_phone("sip:bob@localhost", "bob-busy", 1, Behaviour::Busy)
        .await;
    cluster
        .sleeping_phone(
            "sip:carol@localhost",
            "carol-decline",
            1,
            Behaviour::Decline,
        )
        .await;
    let alice = alice().await;
    for (callee, code) in [("sip:bob@localhost", 486), ("sip:carol@localhost", 603)] {
        alice.invite(callee, cluster.udp(0)).await.expect("sent");
        let answer = alice.expect_final(STEP).await.expect("a final response");
        assert_eq!(answer.status_code.code(), code, "{answer}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_phone_ringing_through_another_node() {
    let cluster = Cluster::start(2).await;
    let bob = cluster
        .sleeping_phone("sip:bob@localhost", "bob-rings", 1, Behaviour::RingOnly)
        .await;
    let alice = alice().await;
    alice
        .invite("sip:bob@localhost", cluster.udp(0))
        .await
        .expect("sent");
    alice
        .expect_response(180, STEP)
        .await
        .expect("ringing, relayed through both nodes");
    alice.cancel().await.expect("CANCEL sent");
    let terminated = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(terminated.status_code.code(), 487, "{terminated}");
    bob.expect_request(rsip::Method::Cancel, STEP)
        .await
        .expect("the CANCEL follows the INVITE's Route to the phone");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_wakes_on_another_node_after_the_caller_gave_up_learns_the_call_ended() {
    let cluster = Cluster::start(2).await;
    let bob = cluster
        .sleeping_phone("sip:bob@localhost", "bob-late", 1, Behaviour::RingOnly)
        .await;
    cluster
        .gateway
        .wake_on_push(&bob, Duration::from_millis(600));
    let alice = alice().await;
    let call_id = alice
        .invite("sip:bob@localhost", cluster.udp(0))
        .await
        .expect("sent");
    cluster
        .gateway
        .wait_for_push(STEP)
        .await
        .expect("the push went out");
    alice.cancel().await.expect("CANCEL sent");
    let terminated = alice.expect_final(STEP).await.expect("a final response");
    assert_eq!(terminated.status_code.code(), 487, "{terminated}");
    // Woken on node two, it gets the INVITE and at once a CANCEL saying why (specs §6).
    let cancel = bob
        .expect_request(rsip::Method::Cancel, STEP)
        .await
        .expect("a CANCEL");
    assert_eq!(cancel.call_id, call_id);
    assert_eq!(cancel.reason_cause(), Some(487), "{:?}", cancel.reason);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_phones_node_is_gone_it_registers_on_a_third_and_the_next_call_finds_it() {
    let mut cluster = Cluster::start(3).await;
    let alice = alice().await;
    let (at_one, via_three) = (cluster.udp(0), cluster.tcp(2));
    let answer = Behaviour::Answer {
        ring_for: Duration::from_millis(100),
    };
    // The same phone (one instance, one token) reaches the cluster through node two, then
    // through node three.
    let via_two = cluster
        .sleeping_phone("sip:bob@localhost", "bob-moves", 1, answer)
        .await;
    answered_call(&alice, at_one).await;
    assert_eq!(via_two.count(rsip::Method::Invite), 1, "through node two");

    cluster.nodes.remove(1).shutdown().await;
    let via_three = Device::builder("sip:bob@localhost", via_three)
        .transport(ua::Transport::Tcp)
        .voip_app("bob-moves")
        .start_registered()
        .await;
    via_three.sleep().await;
    cluster
        .gateway
        .wake_on_push(&via_three, Duration::from_millis(200));
    answered_call(&alice, at_one).await;
    assert_eq!(
        via_three.count(rsip::Method::Invite),
        1,
        "through node three"
    );
    assert_eq!(
        cluster.gateway.pushes_for("bob-moves").len(),
        2,
        "one push per call"
    );
    cluster.stop().await;
}

/// Each node a TLS listener whose certificate the test authority issued for 127.0.0.1, and
/// that authority as the cluster's.
fn over_tls(config: &mut Config, dir: &Path) {
    let (certificate, key, _) = ua::tls::issue(dir, "node");
    let mut listener = Listener::new(Transport::Tls, "127.0.0.1:0".parse().expect("an address"));
    listener.as_mut().certificate = Some(certificate);
    listener.as_mut().private_key = Some(key);
    config.listen.push(listener);
    config.cluster.ca_file = Some(ua::tls::authority_pem(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_clusters_authority_the_nodes_reach_each_other_over_tls() {
    let cluster = Cluster::start_with(2, over_tls).await;
    let bob = cluster
        .sleeping_phone(
            "sip:bob@localhost",
            "bob-tls",
            1,
            Behaviour::Answer {
                ring_for: Duration::from_millis(100),
            },
        )
        .await;
    let alice = alice().await;
    let ok = answered_call(&alice, cluster.udp(0)).await;
    assert_eq!(bob.count(rsip::Method::Invite), 1, "delivered once");
    let tls_two = cluster.nodes[1].local_addr(Transport::Tls).expect("TLS");
    let route_set = ok.header_values("Record-Route").join(", ");
    assert!(
        route_set.contains(&format!("@{tls_two};transport=tls;lr>")),
        "node two is in the dialog through its TLS listener: {route_set}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_authority_that_cannot_be_used_stops_the_start_naming_it() {
    let text = "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n\
                [cluster]\nca_file = \"/etc/pushpark/cluster-ca.pem\"\n";
    let error = Config::parse(text, Path::new("node.toml"))
        .expect_err("no TLS listener")
        .to_string();
    assert!(error.contains("`cluster.ca_file`"), "{error}");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = common::redis_config(dir.path(), &[Transport::Udp], "redis://127.0.0.1:1");
    over_tls(&mut config, dir.path());
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "correct horse battery staple").expect("written");
    config.cluster.ca_file = Some(not_pem.clone());
    let error = Server::start(config)
        .await
        .err()
        .expect("no authority")
        .to_string();
    assert!(error.contains(&not_pem.display().to_string()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_a_password_takes_the_right_one_and_no_error_shows_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let redis = RedisServer::with_password("s3cret-pass");
    let config = common::redis_config(dir.path(), &[Transport::Udp], &redis.url());
    Server::start(config)
        .await
        .expect("starts")
        .shutdown()
        .await;
    let wrong = redis.url().replace("s3cret-pass", "wrong-pass");
    let config = common::redis_config(dir.path(), &[Transport::Udp], &wrong);
    let error = Server::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains(":***@127.0.0.1") && !error.contains("wrong-pass"),
        "the URL is named, its password never: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_over_tls_is_trusted_through_the_authority_given_and_no_other() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (certificate, key, _) = ua::tls::issue(dir.path(), "redis");
    let authority = ua::tls::authority_pem(dir.path());
    let redis = RedisServer::with_tls(&certificate, &key, &authority);
    let mut config = common::redis_config(dir.path(), &[Transport::Udp], &redis.url());
    assert!(redis.url().starts_with("rediss://"));
    // The test authority is none the system trusts.
    let error = Server::start(config.clone())
        .await
        .err()
        .expect("untrusted")
        .to_string();
    assert!(error.contains(&redis.url()), "{error}");
    config.store.ca_file = Some(authority);
    let (node, at) = common::start_udp(config).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a socket");
    let stored = common::final_response(&socket, at, &register(1, None)).await;
    assert!(stored.starts_with("SIP/2.0 200"), "{stored}");
    node.shutdown().await;
}
