//! The server under load: the configuration it must run with for the load generator, and
//! (by default) the `pushpark` binary started on that configuration in a temporary
//! directory, stopped and cleaned up when the run ends.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::{LoadgenError, Mode, Options};

/// How long the spawned server may take to answer on its admin listener.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a server for the load generator listens, and where it pushes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAddrs {
    /// The SIP UDP listener (port 0: any).
    pub udp: SocketAddr,
    /// The SIP TCP listener (port 0: any).
    pub tcp: SocketAddr,
    /// The admin (metrics) listener.
    pub admin: SocketAddr,
    /// The load generator's webhook.
    pub webhook: SocketAddr,
    /// The app API's listener (plain HTTP on loopback), on with
    /// [`Options::answer_from_push`] only. Its port must be a real one, not 0: call pushes
    /// carry the answer URL built from it.
    pub app_api: SocketAddr,
}

/// TOML has one string escape we may meet in a path: backslash, and quotes.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn duration(d: Duration) -> String {
    format!("\"{}ms\"", d.as_millis())
}

/// Where a server keeps its bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store<'a> {
    /// Its own SQLite file.
    Sqlite(&'a Path),
    /// The Redis a cluster's nodes share (`redis://…`), with the cluster's secret file.
    Redis {
        /// The Redis URL.
        url: &'a str,
        /// The `[cluster] secret_file` every node of the cluster is given.
        secret_file: &'a Path,
    },
}

impl Store<'_> {
    /// The `[store]` section, and the `[cluster]` one on Redis.
    fn sections(&self) -> String {
        match self {
            Store::Sqlite(path) => {
                format!("[store]\npath = {}\n", toml_string(&path.to_string_lossy()))
            }
            Store::Redis { url, secret_file } => format!(
                "[store]\nbackend = \"redis\"\nurl = {}\n\n[cluster]\nsecret_file = {}\n",
                toml_string(url),
                toml_string(&secret_file.to_string_lossy())
            ),
        }
    }
}

/// The configuration a server needs for a run of `options`: loopback listeners, metrics on
/// the admin listener, `pn-provider=fcm` routed to the load generator's webhook, limits
/// (calls per callee, pushes per device) out of the way, and its `store`. A node of a
/// cluster reaches the others over its TCP listener and trusts them as it trusts the
/// simulated phones (127.0.0.1). In hold
/// mode a call's record lingers only 2 s after its CANCEL, so the server drains quickly.
/// The simulated phones keep their sockets open while they "sleep", which no real sleeping
/// app does, and are called seconds after registering: `awake_window = "0s"` keeps the server
/// from taking them to be awake, so park and hold runs measure the park path. With
/// `--answer-from-push` the app API listens on `addrs.app_api` over plain HTTP (loopback).
pub fn config_text(options: &Options, addrs: &ServerAddrs, store: &Store<'_>) -> String {
    let devices = options.device_count().max(1) as u64;
    let per_callee = match options.mode {
        Mode::Hold => options.calls.div_ceil(devices) + 10,
        Mode::Park | Mode::Relay => 1000,
    };
    let max_calls = (options.planned_calls() * 2).max(200_000);
    let linger = match options.mode {
        Mode::Hold => Duration::from_secs(2),
        Mode::Park | Mode::Relay => Duration::from_secs(30),
    };
    // Every simulated phone and caller is one source address, 127.0.0.1, sending thousands
    // of requests a second over as many connections as phones: trusted, so neither the rate
    // limiter nor the per-address connection cap counts it.
    let connections = (devices + 1024).max(4096);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# pushpark configuration for `loadgen {}` (generated)\n\
         domains = [\"127.0.0.1\", \"localhost\"]\n\n\
         [auth]\ntrusted_peers = [\"127.0.0.1/32\"]\n\n\
         [connections]\nmax = {connections}\n\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"{}\"\n\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"{}\"\n\n\
         [parking]\npark_timeout = {}\nended_notice_window = {}\nawake_window = \"0s\"\n\
         max_calls = {max_calls}\nmax_calls_per_callee = {per_callee}\n\n\
         {}\n\
         [push]\nmax_per_device_per_minute = 1000000\nmax_per_caller_per_minute = 1000000\n\n\
         [push.providers.loadgen]\nkind = \"webhook\"\nurl = \"http://{}/push\"\n\n\
         [push.routes]\n{} = \"loadgen\"\n\n\
         [admin]\nlisten = \"{}\"",
        options.mode,
        addrs.udp,
        addrs.tcp,
        duration(options.park_timeout),
        duration(linger),
        store.sections(),
        addrs.webhook,
        super::sip::PN_PROVIDER,
        addrs.admin,
    );
    // The app API only when the devices answer from the push. Always on, it would change
    // what every other run measures: each call push would carry an answer token (an
    // HMAC-SHA256 the server computes per push) and its URL (some 200 bytes more of JSON
    // to send and parse), so park figures would no longer compare with those of earlier
    // builds or of a server deployed without the API. A `--busy-ratio 1` run, the SIP
    // path it is compared with, pays neither, as a server without the app API would.
    if options.answer_from_push.is_some() {
        let _ = writeln!(text, "\n[app_api]\nlisten = \"{}\"", addrs.app_api);
    }
    text
}

/// A port free on 127.0.0.1 for both UDP and TCP right now.
pub fn free_port() -> io::Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no port free for both UDP and TCP"))
}

/// The `pushpark` binary next to the running executable (`target/release/pushpark` for
/// `target/release/loadgen`).
pub fn sibling_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("pushpark"))
}

/// A `pushpark run` process started for the load generator. Killed when dropped.
pub struct SpawnedServer {
    child: Child,
    dir: TempDir,
    sip: SocketAddr,
    admin: SocketAddr,
}

impl SpawnedServer {
    /// Writes the configuration for `options` (pushing to `webhook`, its bindings in
    /// `shared`, or else in an SQLite file of its own) into a temporary directory and starts
    /// `bin run --config` on it; returns once its admin listener answers. The server's log goes to `server.log` in that directory (`RUST_LOG`
    /// defaults to `warn`: per-call info lines would slow it down).
    pub async fn start(
        bin: &Path,
        options: &Options,
        webhook: SocketAddr,
        shared: Option<Store<'_>>,
    ) -> Result<SpawnedServer, LoadgenError> {
        if !bin.is_file() {
            return Err(LoadgenError::Server(format!(
                "no server binary at {} (build it: cargo build --release -p pushpark, or \
                 name one with --server-bin)",
                bin.display()
            )));
        }
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| LoadgenError::Io { what, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("pushpark-loadgen-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let free = || {
            free_port()
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
                .map_err(io("finding a free port"))
        };
        let (sip, admin, app_api) = (free()?, free()?, free()?);
        let addrs = ServerAddrs {
            udp: sip,
            tcp: sip,
            admin,
            webhook,
            app_api,
        };
        let config = dir.path().join("pushpark.toml");
        let sqlite = dir.path().join("bindings.db");
        let store = shared.unwrap_or(Store::Sqlite(&sqlite));
        let text = config_text(options, &addrs, &store);
        std::fs::write(&config, text).map_err(io("writing the server configuration"))?;
        let log = std::fs::File::create(dir.path().join("server.log"))
            .map_err(io("creating the server log"))?;
        let log_err = log.try_clone().map_err(io("creating the server log"))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(&format!("starting {}", bin.display())))?;
        let mut server = SpawnedServer {
            child,
            dir,
            sip,
            admin,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), LoadgenError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| LoadgenError::Server(format!("HTTP client: {e}")))?;
        let url = format!("http://{}/health", self.admin);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LoadgenError::Server(format!(
                    "the server exited at once ({status}):\n{}",
                    self.log_tail()
                )));
            }
            let answered = client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LoadgenError::Server(format!(
                    "the server did not answer on {url} within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Its SIP address (UDP and TCP).
    pub fn sip(&self) -> SocketAddr {
        self.sip
    }

    /// Its admin (metrics) address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it, waits for it to go, and removes its directory.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
