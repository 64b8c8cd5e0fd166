//! Set-up shared by the test files that start a real server.

// Each test file uses its own part of this module.
#![allow(dead_code)]

pub mod redis;

use std::net::SocketAddr;
use std::path::Path;

use std::time::Duration;

use pushpark::config::{Config, Listener, Provider, Transport};
use pushpark::server::Server;

/// A configuration with listeners on ephemeral loopback ports (IPv4, or IPv6 when `v6`),
/// its store in `dir`, and everything else embedded defaults.
pub fn loopback_config(dir: &Path, transports: &[Transport], v6: bool) -> Config {
    let address = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
    let mut config = Config {
        listen: transports
            .iter()
            .map(|&transport| Listener::new(transport, address.parse().expect("a literal address")))
            .collect(),
        ..Config::default()
    };
    config.store.path = dir.join("bindings.db");
    config
}

/// [`loopback_config`] with its bindings in the Redis at `url` (the cluster's store).
pub fn redis_config(dir: &Path, transports: &[Transport], url: &str) -> Config {
    let mut config = loopback_config(dir, transports, false);
    config.store.backend = pushpark::config::Backend::Redis;
    config.store.url = Some(toml::Spanned::new(0..0, url.to_owned()));
    config
}

/// Starts the server on `config` and returns it with its UDP address.
pub async fn start_udp(config: Config) -> (Server, SocketAddr) {
    let server = Server::start(config).await.expect("the server starts");
    let addr = server.local_addr(Transport::Udp).expect("a UDP listener");
    (server, addr)
}

/// A configuration on UDP and TCP (IPv4 loopback) with its store in `dir`, 127.0.0.1 a
/// trusted peer (the tests' callers), and every push routed to the webhook at `url`.
pub fn pushing_config(dir: &Path, url: String) -> Config {
    let mut config = loopback_config(dir, &[Transport::Udp, Transport::Tcp], false);
    config.auth.trusted_peers = vec!["127.0.0.1/32".parse().expect("a network")];
    route_pushes_to(&mut config, url);
    config
}

/// Routes every push provider of `config` to one webhook at `url` (a test's push gateway).
pub fn route_pushes_to(config: &mut Config, url: String) {
    config.push.providers.insert(
        "gateway".into(),
        Provider::Webhook {
            url,
            timeout: Duration::from_secs(2),
            bearer_token: None,
            format: Default::default(),
        },
    );
    for route in config.push.routes.values_mut() {
        *route = toml::Spanned::new(0..0, "gateway".to_owned());
    }
}

/// How often `limit` was hit, from the admin listener's `/metrics`
/// (`pushpark_limit_hits_total{limit="..."}`).
pub async fn limit_hits(server: &Server, limit: &str) -> u64 {
    counter(
        server,
        &format!("pushpark_limit_hits_total{{limit=\"{limit}\"}}"),
    )
    .await
}

/// The value of the counter `series` (its name and labels, as `/metrics` writes them) on
/// the admin listener; 0 if it is not there yet.
pub async fn counter(server: &Server, series: &str) -> u64 {
    let admin = server.admin_addr().expect("an admin listener");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("the admin listener answers")
        .text()
        .await
        .expect("a body");
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Sends `text` from `socket` to `server` and returns the first final response (2 s at most).
pub async fn final_response(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    text: &str,
) -> String {
    socket.send_to(text.as_bytes(), server).await.expect("sent");
    let mut buf = vec![0; 65_536];
    loop {
        let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let response = String::from_utf8_lossy(&buf[..len]).into_owned();
        if !response.starts_with("SIP/2.0 1") {
            return response;
        }
    }
}
