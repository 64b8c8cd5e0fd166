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
//!   binding's Path, the answer and the hang-up back the same way; with that node gone,
//!   the phone registers on a third and the next call reaches it there.

mod common;
mod ua;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::redis::RedisServer;
use pushpark::config::Transport;
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

/// A node of a cluster on the Redis at `url`, with the cluster's secret file, pushing to
/// `gateway`, on UDP and TCP (127.0.0.1, the other nodes among them, trusted).
async fn cluster_node(dir: &Path, name: &str, url: &str, secret: &Path, gateway: &str) -> Server {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("a dir");
    let mut config = common::pushing_config(&dir, gateway.to_owned());
    config.store.backend = pushpark::config::Backend::Redis;
    config.store.url = Some(toml::Spanned::new(0..0, url.to_owned()));
    config.cluster.secret_file = Some(secret.to_owned());
    Server::start(config).await.expect("the node starts")
}

/// A call from `alice` to bob through `node`, answered 200, acknowledged and hung up.
async fn answered_call(alice: &Caller, node: SocketAddr) -> rsip::Response {
    alice.invite("sip:bob@localhost", node).await.expect("sent");
    let ok = alice
        .expect_response(200, Duration::from_secs(10))
        .await
        .expect("answered");
    alice.ack_and_hang_up(&ok).await;
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_parked_on_one_node_reaches_the_phone_that_wakes_on_another() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let redis = RedisServer::start();
    let gateway = PushGateway::start().await.expect("the push gateway");
    let secret = secret_file(dir.path(), "cluster.secret");
    let one = cluster_node(dir.path(), "one", &redis.url(), &secret, &gateway.url()).await;
    let two = cluster_node(dir.path(), "two", &redis.url(), &secret, &gateway.url()).await;
    let via_two = two.local_addr(Transport::Tcp).expect("TCP");
    let bob = Device::builder("sip:bob@localhost", via_two)
        .transport(ua::Transport::Tcp)
        .voip_app("bob-cluster")
        .start_registered()
        .await;
    bob.sleep().await;
    gateway.wake_on_push(&bob, Duration::from_millis(300));

    let alice = Caller::new("sip:alice@localhost", ua::Transport::Udp)
        .await
        .expect("a caller");
    let at_one = one.local_addr(Transport::Udp).expect("UDP");
    let ok = answered_call(&alice, at_one).await;
    assert_eq!(gateway.pushes_for("bob-cluster").len(), 1, "one push");
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
    for node in [one, two] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_phones_node_is_gone_it_registers_on_a_third_and_the_next_call_finds_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let redis = RedisServer::start();
    let gateway = PushGateway::start().await.expect("the push gateway");
    let secret = secret_file(dir.path(), "cluster.secret");
    let url = redis.url();
    let mut nodes = Vec::new();
    for name in ["one", "two", "three"] {
        nodes.push(cluster_node(dir.path(), name, &url, &secret, &gateway.url()).await);
    }
    let tcp: Vec<SocketAddr> = (nodes.iter())
        .map(|n| n.local_addr(Transport::Tcp).expect("TCP"))
        .collect();
    let at_one = nodes[0].local_addr(Transport::Udp).expect("UDP");
    let alice = Caller::new("sip:alice@localhost", ua::Transport::Udp)
        .await
        .expect("a caller");
    // The same phone (one instance, one token), as it reaches the cluster through one node
    // or another.
    let phone_via = |node: SocketAddr| {
        Device::builder("sip:bob@localhost", node)
            .transport(ua::Transport::Tcp)
            .voip_app("bob-moves")
            .start_registered()
    };
    let call = || answered_call(&alice, at_one);

    let via_two = phone_via(tcp[1]).await;
    via_two.sleep().await;
    gateway.wake_on_push(&via_two, Duration::from_millis(200));
    call().await;
    assert_eq!(via_two.count(rsip::Method::Invite), 1, "through node two");

    // Node two goes; the phone's next REGISTER goes to node three.
    let two = nodes.remove(1);
    two.shutdown().await;
    let via_three = phone_via(tcp[2]).await;
    via_three.sleep().await;
    gateway.wake_on_push(&via_three, Duration::from_millis(200));
    call().await;
    assert_eq!(
        via_three.count(rsip::Method::Invite),
        1,
        "through node three"
    );
    assert_eq!(
        gateway.pushes_for("bob-moves").len(),
        2,
        "one push per call"
    );
    for node in nodes {
        node.shutdown().await;
    }
}
