//! The real server on loopback with its pushes going to a local push gateway, and the phones
//! and callers of tests/ua/ around it: what the end-to-end tests (e2e.rs, app_api.rs) start.
//!
//! Include with `mod common; mod ua; mod harness;` from a file in `runtime/tests/`.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pushpark::config::{Config, Transport as Listen};
use pushpark::server::Server;

use crate::common;
use crate::ua::{Behaviour, Caller, Device, PushGateway, Transport};

/// A server whose pushes go to a local push gateway.
pub struct Harness {
    pub server: Option<Server>,
    pub gateway: PushGateway,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The configuration it started on, for a restart.
    config: Config,
}

impl Harness {
    /// The server on UDP and TCP (127.0.0.1 trusted), on the configuration `adjust` makes
    /// of that; its store in a temporary directory.
    pub async fn start(adjust: impl FnOnce(&mut Config, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let gateway = PushGateway::start().await.expect("the push gateway");
        let mut config = common::pushing_config(dir.path(), gateway.url());
        adjust(&mut config, dir.path());
        let server = Server::start(config.clone())
            .await
            .expect("the server starts");
        Self {
            udp: server.local_addr(Listen::Udp).expect("UDP"),
            tcp: server.local_addr(Listen::Tcp).expect("TCP"),
            server: Some(server),
            gateway,
            dir,
            config,
        }
    }

    /// A phone of `aor` on TCP with push token `token`, registered, then asleep.
    pub async fn sleeping_phone(&self, aor: &str, token: &str, behaviour: Behaviour) -> Device {
        let phone = self.phone(aor, token, behaviour).await;
        phone.sleep().await;
        // Let the server see the connection close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        phone
    }

    /// A phone of `aor` on TCP with push token `token`, registered and awake.
    pub async fn phone(&self, aor: &str, token: &str, behaviour: Behaviour) -> Device {
        Device::builder(aor, self.tcp)
            .transport(Transport::Tcp)
            .voip_app(token)
            .behaviour(behaviour)
            .start_registered()
            .await
    }

    pub async fn caller(&self) -> Caller {
        Caller::new("sip:alice@localhost", Transport::Udp)
            .await
            .expect("the caller starts")
            .with_display_name("Alice")
    }

    /// Stops the server and starts it again on the same configuration and store.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let server = Server::start(self.config.clone())
            .await
            .expect("the server restarts");
        self.udp = server.local_addr(Listen::Udp).expect("UDP");
        self.tcp = server.local_addr(Listen::Tcp).expect("TCP");
        self.server = Some(server);
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the server runs")
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}
