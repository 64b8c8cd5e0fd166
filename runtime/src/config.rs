//! The configuration file: one TOML file, every key optional, every key documented in
//! `runtime/pushpark.example.toml`. Unknown keys are errors, and every error names the file,
//! the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The whole configuration, with the embedded defaults for every key left out.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The domains this server is the registrar and home proxy of. Requests for other
    /// domains are refused: pushpark is no open relay.
    pub domains: Vec<String>,
    /// Where to listen for SIP.
    pub listen: Vec<Spanned<Listener>>,
    pub parking: Parking,
    pub registrar: Registrar,
    pub auth: Auth,
    pub store: Store,
    pub sip: Sip,
    pub push: Push,
    pub admin: Admin,
    pub connections: Connections,
    pub rate_limit: RateLimit,
    pub app_api: AppApi,
    pub cluster: Cluster,
}

/// What the nodes of a cluster share.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// A file holding the node secret, at least 32 bytes as hex digits (`openssl rand -hex
    /// 32`): the key of the digest nonces, the route tokens of our Record-Routes, stateless
    /// branches and the app API's answer tokens. Give every node of a cluster the same file,
    /// so that a challenge one node issued is answered on another and a route token one
    /// node wrote verifies on all. Without it each node keeps a random secret of its own in
    /// its store.
    pub secret_file: Option<PathBuf>,
    /// The certificate authority (PEM) of the cluster's nodes: with it, the nodes reach each
    /// other over TLS (each through its TLS listener, whose certificate this authority
    /// issued for the address the node is reached at); without it, over TCP, which only a
    /// private network between the nodes should carry.
    pub ca_file: Option<PathBuf>,
}

/// The app API (specs/parking.md §9): an HTTPS listener where an app woken by a call's push
/// answers busy, decline or ringing without its SIP stack. Off unless `listen` is set; call
/// pushes then carry an answer token and the URL to post it to.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AppApi {
    /// Where to listen, e.g. "0.0.0.0:5443" (with where it stands in the file, for errors).
    pub listen: Option<Spanned<SocketAddr>>,
    /// The PEM certificate chain (read again on SIGHUP). Without it (and `private_key`) the
    /// API speaks plain HTTP, which only a loopback address may (behind a local TLS proxy).
    pub certificate: Option<PathBuf>,
    /// The certificate's PEM private key (read again on SIGHUP).
    pub private_key: Option<PathBuf>,
    /// The URL apps post their answers to, as they reach it, e.g.
    /// "https://sip.example.com:5443/v1/calls/answer". Default: built from `listen`
    /// (needed when `listen` is on all addresses).
    pub public_url: Option<String>,
}

impl AppApi {
    /// The path apps post their answers to.
    pub const ANSWER_PATH: &'static str = "/v1/calls/answer";
    /// The longest `public_url`: every call push carries it (FCM data values are cut at 512,
    /// an APNs VoIP payload holds 5 KB).
    pub const MAX_URL_LEN: usize = 256;

    /// Whether the API is served over TLS.
    pub fn tls(&self) -> bool {
        self.certificate.is_some()
    }

    /// The address to listen on, if the API is on.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.as_ref().map(|l| *l.get_ref())
    }

    /// The URL call pushes carry, if the API is on.
    pub fn answer_url(&self) -> Option<String> {
        let listen = self.address()?;
        Some(self.public_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls() { "https" } else { "http" };
            format!("{scheme}://{listen}{}", Self::ANSWER_PATH)
        }))
    }
}

/// The admin HTTP listener: Prometheus metrics at `/metrics`, liveness at `/health`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Where to serve it (e.g. "127.0.0.1:9060"); none by default.
    pub listen: Option<SocketAddr>,
}

/// One SIP listener.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub transport: Transport,
    pub address: SocketAddr,
    /// TLS: the PEM certificate chain (read again on SIGHUP).
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// TLS: the certificate's PEM private key (read again on SIGHUP).
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The address phones reach this listener at, `host` or `host:port` (a public IP or
    /// DNS name), where it differs from `address`: bound to 0.0.0.0 or `[::]`, or behind
    /// NAT. Our Via and Record-Route name it instead of the socket's address.
    #[serde(default)]
    pub advertised_address: Option<String>,
}

impl Listener {
    /// The host part of `advertised_address` (an IPv6 address without its brackets).
    pub fn advertised_host(&self) -> Option<&str> {
        let a = self.advertised_address.as_deref()?;
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next();
        }
        Some(a.split(':').next().unwrap_or(a))
    }

    /// A listener without TLS files, as if it stood in a configuration file.
    pub fn new(transport: Transport, address: SocketAddr) -> Spanned<Self> {
        Spanned::new(
            0..0,
            Self {
                transport,
                address,
                certificate: None,
                private_key: None,
                advertised_address: None,
            },
        )
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Whether messages go over a connection (reliably, RFC 3261 §17: no retransmissions).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The transport a Via's protocol or a URI's `transport` parameter names (any case);
    /// `None` for those pushpark does not speak (SCTP, WS...).
    pub fn from_token(token: &str) -> Option<Transport> {
        [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(token))
    }

    /// The `transport` URI parameter that leads back to a listener of this transport
    /// (none for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        })
    }
}

/// Requests per source address, in the spirit of Kamailio's `pike`: a source that sends
/// more than `max_requests` in a `window`, or fails digest authentication
/// `max_auth_failures` times within `failure_window`, is blocked for `block_for` (its
/// requests dropped unanswered). `auth.trusted_peers` are exempt.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub max_requests: u32,
    pub max_auth_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    #[serde(with = "humantime_serde")]
    pub block_for: Duration,
    /// Sources tracked at once; beyond, new sources go untracked until old ones expire.
    pub max_sources: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(2),
            max_requests: 60,
            max_auth_failures: 10,
            failure_window: Duration::from_secs(600),
            block_for: Duration::from_secs(300),
            max_sources: 65_536,
        }
    }
}

/// TCP and TLS connections: what one peer, and all of them together, may hold
/// (see `transport/stream.rs`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Connections {
    /// Connections open at once, in all (ours to peers included).
    pub max: usize,
    /// Connections from one source address; `auth.trusted_peers` are exempt.
    pub max_per_ip: usize,
    /// A message (and a new connection's TLS handshake and first message) must be whole
    /// this long after its first octet arrived.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// A connection on which nothing arrives this long is closed (keep-alives count).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Octets waiting to be written to a peer that does not read; beyond, it is dropped.
    pub max_write_queue: usize,
    /// How long opening a connection to a peer may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max: 4096,
            max_per_ip: 64,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_write_queue: 1 << 20,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The call-parking policy (see specs/parking.md §4).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Parking {
    #[serde(with = "humantime_serde")]
    pub park_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub ended_notice_window: Duration,
    pub push_attempts: u8,
    #[serde(with = "humantime_serde")]
    pub push_retry_base: Duration,
    /// A device heard from over UDP this recently counts as awake (specs/parking.md §3).
    #[serde(with = "humantime_serde")]
    pub awake_window: Duration,
    pub max_calls: usize,
    pub max_calls_per_callee: usize,
    /// `max_calls_per_callee` for particular callees, by address of record as the
    /// registrar writes it (`sip:user@domain`, the domain in lower case).
    pub callee_limits: BTreeMap<String, usize>,
}

/// REGISTER handling.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Registrar {
    /// Shorter registrations get 423 Interval Too Brief with this Min-Expires.
    #[serde(with = "humantime_serde")]
    pub min_expires: Duration,
    /// Longer registrations are granted this much.
    #[serde(with = "humantime_serde")]
    pub max_expires: Duration,
    /// Granted when the REGISTER asks for no particular time.
    #[serde(with = "humantime_serde")]
    pub default_expires: Duration,
    /// A binding with a push token that has not been refreshed this long before it expires
    /// gets a refresh push (RFC 8599 §5.5; not to APNs VoIP tokens, see specs/parking.md).
    #[serde(with = "humantime_serde")]
    pub refresh_push_before: Duration,
    /// How often expired bindings are swept and due refresh pushes sent.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Contacts one REGISTER may add or refresh; more get 403 and change nothing.
    pub max_contacts_per_register: usize,
    /// Bindings one address may hold; a REGISTER that would leave more gets 403 and
    /// changes nothing.
    pub max_bindings_per_aor: usize,
}

/// Digest authentication.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// The digest realm; the first domain when absent.
    pub realm: Option<String>,
    /// The users and their HA1 hashes (`pushpark user add`). Without it every REGISTER is
    /// accepted unauthenticated, which is allowed only when every listener is on loopback.
    pub users_file: Option<PathBuf>,
    /// How long a nonce stays valid.
    #[serde(with = "humantime_serde::option")]
    pub nonce_lifetime: Option<Duration>,
    /// Peers (addresses or CIDR blocks, e.g. an SBC in front) whose INVITEs need no digest.
    pub trusted_peers: Vec<ipnet::IpNet>,
    /// The digest algorithms offered, in order (`MD5` alone by default; `SHA-256`), and the
    /// only ones accepted.
    pub algorithms: Option<Vec<Spanned<String>>>,
    /// Accept the legacy RFC 2069 digest form (no `qop`, so no replay check) for old phones.
    pub allow_rfc2069: bool,
    /// Let callers from other domains ring our users' phones without authenticating (a
    /// public SIP address). Off: with a users file, only our own users (authenticated) and
    /// trusted peers may call; others get 403. Without a users file anyone may.
    pub accept_foreign_callers: bool,
}

/// Where bindings are kept.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    /// SQLite (one node) or Redis (the nodes of a cluster).
    pub backend: Backend,
    /// The SQLite database file; created if missing.
    pub path: PathBuf,
    /// Redis: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS, or
    /// `redis+unix:///path/to/socket`.
    pub url: Option<Spanned<String>>,
    /// Redis: what every key pushpark writes starts with.
    pub prefix: String,
    /// Redis: for connecting, and for each reply; past it a REGISTER gets 503.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Redis: refuse a server that does not fsync its append-only file before it answers
    /// (`appendonly yes`, `appendfsync always`), so that a 200 OK to a REGISTER is never a
    /// lie. Off only where the operator knows persistence is safe otherwise.
    pub require_fsync: bool,
    /// Redis over TLS (`rediss://`): the authority (PEM) its certificate chains to, when it
    /// is not one the system trusts.
    pub ca_file: Option<PathBuf>,
}

/// The binding store's backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An embedded SQLite file ([`Store::path`]).
    #[default]
    Sqlite,
    /// A Redis server shared by the nodes ([`Store::url`]).
    Redis,
}

impl Store {
    /// The longest key prefix.
    pub const MAX_PREFIX_LEN: usize = 64;
}

/// SIP transaction timers and message limits.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sip {
    #[serde(with = "humantime_serde")]
    pub t1: Duration,
    #[serde(with = "humantime_serde")]
    pub t2: Duration,
    #[serde(with = "humantime_serde")]
    pub t4: Duration,
    /// The largest message accepted, in bytes; larger ones get 513.
    pub max_message_size: usize,
    /// Networks an in-dialog request may be sent to by address although they are loopback,
    /// link-local or private. Those of the listeners' own addresses always are.
    pub allowed_targets: Vec<ipnet::IpNet>,
    /// On SIGTERM: how long the server goes on after ending every call (503 to callers,
    /// CANCEL to ringing phones) for those answers to get through, before it exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Transactions held at once (RFC 3261 keeps each up to 32 s after its final response);
    /// beyond, a request that would start one gets 503 with Retry-After.
    pub max_transactions: usize,
    /// Graceful overload: when even the quickest message of a 100 ms interval waited
    /// longer than this before the server handled it (or a REGISTER's write, for the
    /// store), new calls and REGISTERs get 503 with Retry-After until the queues are
    /// calm again. `0s` never sheds.
    #[serde(with = "humantime_serde")]
    pub overload_delay: Duration,
}

/// Push providers, and which provider serves each RFC 8599 `pn-provider` value.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Push {
    /// Named providers; a `log` provider is always there unless redefined.
    pub providers: BTreeMap<String, Provider>,
    /// `pn-provider` value (`apns`, `fcm`, `webpush`...) → a provider name above. Only these
    /// values are advertised in Feature-Caps; any other gets 555 at REGISTER.
    pub routes: BTreeMap<String, Spanned<String>>,
    /// Pushes one device may get per minute, calls and retries together (a burst of as many
    /// is allowed): nobody can make a phone wake without bound. A device is its push token:
    /// bindings that share a token share its budget. Beyond it a push fails as transient,
    /// and the core gives up on that device in time.
    pub max_per_device_per_minute: u32,
    /// Pushes one caller (its From address) may cause to one callee's phones per minute:
    /// one caller redialling cannot drain a callee's budget for everyone else.
    pub max_per_caller_per_minute: u32,
}

/// One push provider.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Provider {
    /// Logs each push and reports it accepted: for local use.
    Log,
    /// POSTs each push as JSON to an operator's push gateway.
    Webhook {
        url: String,
        #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
        timeout: Duration,
        #[serde(default)]
        bearer_token: Option<String>,
        /// The body's shape: `pushpark` (the push request as it is) or `gorush` (gorush's
        /// `/api/push`, to delegate to a gorush gateway).
        #[serde(default)]
        format: crate::push::WebhookFormat,
    },
    /// Apple Push Notification service, VoIP pushes (PushKit), with token auth (`key`,
    /// `key_id`, `team_id`) or certificate auth (`certificate`, a PKCS#12 or PEM file).
    Apns {
        /// Token auth: the .p8 signing key.
        #[serde(default)]
        key: Option<PathBuf>,
        #[serde(default)]
        key_id: Option<String>,
        #[serde(default)]
        team_id: Option<String>,
        /// Certificate auth: a .p12/.pfx file (with `certificate_password`) or a PEM
        /// certificate (with its key inside or in `certificate_key`).
        #[serde(default)]
        certificate: Option<PathBuf>,
        #[serde(default)]
        certificate_password: Option<String>,
        #[serde(default)]
        certificate_key: Option<PathBuf>,
        /// Send every push to the sandbox (development builds); `apns.dev` bindings always go
        /// there.
        #[serde(default)]
        sandbox: bool,
        /// The app's bundle id, for bindings whose pn-param names no topic.
        #[serde(default)]
        bundle_id: Option<String>,
        #[serde(default = "default_apns_timeout", with = "humantime_serde")]
        timeout: Duration,
    },
    /// Firebase Cloud Messaging, HTTP v1 API, with a service-account key.
    Fcm {
        /// The service-account JSON key file.
        service_account: PathBuf,
        /// The Firebase project when the binding's pn-param names none (default: the key's).
        #[serde(default)]
        project_id: Option<String>,
        /// The FCM API's base URL (default https://fcm.googleapis.com).
        #[serde(default)]
        api_base_url: Option<String>,
        /// The OAuth2 token endpoint (default: the key's `token_uri`).
        #[serde(default)]
        token_url: Option<String>,
        #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
        timeout: Duration,
    },
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_apns_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for Config {
    fn default() -> Self {
        let loopback = "127.0.0.1:5060".parse().expect("a valid address");
        Self {
            domains: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            listen: vec![
                Listener::new(Transport::Udp, loopback),
                Listener::new(Transport::Tcp, loopback),
            ],
            parking: Parking::default(),
            registrar: Registrar::default(),
            auth: Auth::default(),
            store: Store::default(),
            sip: Sip::default(),
            push: Push::default(),
            admin: Admin::default(),
            connections: Connections::default(),
            rate_limit: RateLimit::default(),
            app_api: AppApi::default(),
            cluster: Cluster::default(),
        }
    }
}

impl Default for Parking {
    fn default() -> Self {
        let core = pushpark_model::Config::default();
        Self {
            park_timeout: Duration::from_millis(core.park_timeout),
            ended_notice_window: Duration::from_millis(core.ended_notice_window),
            push_attempts: core.push_attempts,
            push_retry_base: Duration::from_millis(core.push_retry_base),
            awake_window: Duration::from_millis(core.awake_window),
            max_calls: core.max_calls,
            max_calls_per_callee: core.max_calls_per_callee,
            callee_limits: BTreeMap::new(),
        }
    }
}

impl Default for Registrar {
    fn default() -> Self {
        Self {
            min_expires: Duration::from_secs(60),
            max_expires: Duration::from_secs(7 * 24 * 3600),
            default_expires: Duration::from_secs(3600),
            refresh_push_before: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(30),
            max_contacts_per_register: 10,
            max_bindings_per_aor: 20,
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            path: PathBuf::from("pushpark.db"),
            url: None,
            prefix: "pushpark:".to_owned(),
            timeout: Duration::from_secs(1),
            require_fsync: true,
            ca_file: None,
        }
    }
}

impl Default for Sip {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            max_message_size: 65_535,
            allowed_targets: Vec::new(),
            shutdown_grace: Duration::from_secs(5),
            max_transactions: 500_000,
            overload_delay: Duration::from_millis(10),
        }
    }
}

impl Default for Push {
    fn default() -> Self {
        let log = "log".to_owned();
        Self {
            providers: BTreeMap::from([(log.clone(), Provider::Log)]),
            routes: ["apns", "fcm", "webpush"]
                .into_iter()
                .map(|pns| (pns.to_owned(), Spanned::new(0..0, log.clone())))
                .collect(),
            max_per_device_per_minute: 20,
            max_per_caller_per_minute: 12,
        }
    }
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{location}: `{key}`: {problem}")]
    Invalid {
        location: String,
        key: String,
        problem: String,
    },
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        // The built-in `log` provider stays available (the default routes use it) unless
        // the file defines a provider of that name itself.
        config
            .push
            .providers
            .entry("log".to_owned())
            .or_insert(Provider::Log);
        config.check(|span| match span {
            Some(span) => format!("{}:{}", path.display(), line_of(text, span.start)),
            None => path.display().to_string(),
        })?;
        Ok(config)
    }

    /// The checks that go beyond types. `locate` turns a span of the file into a location.
    fn check(&self, locate: impl Fn(Option<Range<usize>>) -> String) -> Result<(), ConfigError> {
        let invalid = |span, key: &str, problem: String| ConfigError::Invalid {
            location: locate(span),
            key: key.to_owned(),
            problem,
        };
        if self.domains.is_empty() {
            return Err(invalid(
                None,
                "domains",
                "at least one domain is needed".into(),
            ));
        }
        if self.listen.is_empty() {
            return Err(invalid(
                None,
                "listen",
                "at least one listener is needed".into(),
            ));
        }
        for (i, listener) in self.listen.iter().enumerate() {
            let span = Some(listener.span()).filter(|s| !s.is_empty());
            let tls = listener.as_ref().transport == Transport::Tls;
            let files = (
                &listener.as_ref().certificate,
                &listener.as_ref().private_key,
            );
            let l = listener.as_ref();
            let advertised = l.advertised_address.as_deref();
            let problem = match (tls, files) {
                _ if advertised.is_some_and(|a| !is_host_port(a)) => {
                    "advertised_address must be host or host:port (an IP address or DNS name)"
                }
                _ if l.address.ip().is_unspecified() && advertised.is_none() => {
                    "a listener on all addresses needs advertised_address: the address phones \
                     reach, which our Via and Record-Route name"
                }
                (true, (Some(_), Some(_))) | (false, (None, None)) => continue,
                (true, _) => "a TLS listener needs both certificate and private_key",
                (false, _) => "certificate and private_key are for TLS listeners",
            };
            return Err(invalid(span, &format!("listen[{i}]"), problem.into()));
        }
        let api = &self.app_api;
        if let Some(spanned) = &api.listen {
            let listen = *spanned.get_ref();
            let problem = match (&api.certificate, &api.private_key) {
                (Some(_), None) | (None, Some(_)) => {
                    Some("the app API needs both certificate and private_key")
                }
                (None, None) if !listen.ip().is_loopback() => Some(
                    "an app API on a non-loopback address needs certificate and private_key: \
                     apps post their answers over HTTPS",
                ),
                _ if listen.ip().is_unspecified() && api.public_url.is_none() => {
                    Some("an app API on all addresses needs public_url: the URL apps reach it at")
                }
                _ if api.public_url.as_deref().is_some_and(|u| {
                    !(u.starts_with("https://") || u.starts_with("http://"))
                        || u.len() > AppApi::MAX_URL_LEN
                }) =>
                {
                    Some("public_url must be an http:// or https:// URL of 256 characters at most")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                let span = Some(spanned.span()).filter(|s| !s.is_empty());
                return Err(invalid(span, "app_api.listen", problem.into()));
            }
        } else if api.certificate.is_some() || api.private_key.is_some() || api.public_url.is_some()
        {
            return Err(invalid(
                None,
                "app_api",
                "certificate, private_key and public_url need listen".into(),
            ));
        }
        let has_tls = (self.listen.iter()).any(|l| l.as_ref().transport == Transport::Tls);
        if self.cluster.ca_file.is_some() && !(has_tls && self.store.backend == Backend::Redis) {
            return Err(invalid(
                None,
                "cluster.ca_file",
                "nodes reach each other over TLS only in a cluster (store.backend = \"redis\") \
                 and through a TLS listener: add one"
                    .into(),
            ));
        }
        let store = &self.store;
        let url = store.url.as_ref();
        let url_span = url.map(|u| u.span()).filter(|s| !s.is_empty());
        let problem = match (store.backend, url.map(|u| u.get_ref().as_str())) {
            (Backend::Redis, None) => Some(("store.backend", "the redis backend needs url")),
            (Backend::Sqlite, Some(_)) => Some((
                "store.url",
                "url is for backend = \"redis\" (the sqlite backend uses path)",
            )),
            (Backend::Redis, Some(u))
                if !["redis://", "rediss://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|scheme| u.starts_with(scheme)) =>
            {
                Some((
                    "store.url",
                    "url must start with redis://, rediss:// or redis+unix://",
                ))
            }
            (Backend::Redis, Some(u)) if store.ca_file.is_some() && !u.starts_with("rediss://") => {
                Some((
                    "store.ca_file",
                    "ca_file is for a Redis over TLS (rediss://)",
                ))
            }
            (Backend::Sqlite, None) if store.ca_file.is_some() => {
                Some(("store.ca_file", "ca_file is for backend = \"redis\""))
            }
            _ if store.prefix.len() > Store::MAX_PREFIX_LEN => {
                Some(("store.prefix", "prefix may have 64 bytes at most"))
            }
            _ if store.timeout.is_zero() => Some(("store.timeout", "must not be zero")),
            _ => None,
        };
        if let Some((key, problem)) = problem {
            return Err(invalid(url_span, key, problem.into()));
        }
        let c = &self.connections;
        for (key, zero) in [
            ("connections.max", c.max == 0),
            ("connections.max_per_ip", c.max_per_ip == 0),
            ("connections.message_timeout", c.message_timeout.is_zero()),
            ("connections.idle_timeout", c.idle_timeout.is_zero()),
            ("connections.max_write_queue", c.max_write_queue == 0),
            ("connections.connect_timeout", c.connect_timeout.is_zero()),
            ("sip.max_transactions", self.sip.max_transactions == 0),
            ("rate_limit.window", self.rate_limit.window.is_zero()),
            ("rate_limit.max_requests", self.rate_limit.max_requests == 0),
            (
                "rate_limit.max_auth_failures",
                self.rate_limit.max_auth_failures == 0,
            ),
            (
                "rate_limit.failure_window",
                self.rate_limit.failure_window.is_zero(),
            ),
            ("rate_limit.block_for", self.rate_limit.block_for.is_zero()),
            ("rate_limit.max_sources", self.rate_limit.max_sources == 0),
        ] {
            if zero {
                return Err(invalid(None, key, "must not be zero".into()));
            }
        }
        for (pns, provider) in &self.push.routes {
            if !self.push.providers.contains_key(provider.get_ref()) {
                return Err(invalid(
                    Some(provider.span()),
                    &format!("push.routes.{pns}"),
                    format!(
                        "no provider named {:?} in [push.providers]",
                        provider.get_ref()
                    ),
                ));
            }
        }
        for (name, provider) in &self.push.providers {
            if let Provider::Apns {
                key,
                key_id,
                team_id,
                certificate,
                ..
            } = provider
            {
                let token = key.is_some() && key_id.is_some() && team_id.is_some();
                if token == certificate.is_some() {
                    return Err(invalid(
                        None,
                        &format!("push.providers.{name}"),
                        "give either key, key_id and team_id (token auth) or certificate".into(),
                    ));
                }
            }
        }
        let r = &self.registrar;
        if r.min_expires > r.default_expires || r.default_expires > r.max_expires {
            return Err(invalid(
                None,
                "registrar",
                "need min_expires <= default_expires <= max_expires".into(),
            ));
        }
        for algorithm in self.auth.algorithms.iter().flatten() {
            if crate::auth::Algorithm::from_name(algorithm.get_ref()).is_none() {
                return Err(invalid(
                    Some(algorithm.span()),
                    "auth.algorithms",
                    format!(
                        "unknown digest algorithm {:?} (SHA-256 or MD5)",
                        algorithm.get_ref()
                    ),
                ));
            }
        }
        if self.registrar.sweep_interval.is_zero() {
            return Err(invalid(
                None,
                "registrar.sweep_interval",
                "must not be zero".into(),
            ));
        }
        if self.registrar.max_bindings_per_aor == 0 {
            return Err(invalid(
                None,
                "registrar.max_bindings_per_aor",
                "must be at least 1".into(),
            ));
        }
        if self.registrar.max_contacts_per_register == 0 {
            return Err(invalid(
                None,
                "registrar.max_contacts_per_register",
                "must be at least 1: a phone registers one contact".into(),
            ));
        }
        if self.push.max_per_device_per_minute == 0 {
            return Err(invalid(
                None,
                "push.max_per_device_per_minute",
                "must be at least 1".into(),
            ));
        }
        if self.parking.push_attempts == 0 {
            return Err(invalid(
                None,
                "parking.push_attempts",
                "must be at least 1".into(),
            ));
        }
        if self.auth.users_file.is_none()
            && !self
                .listen
                .iter()
                .all(|l| l.as_ref().address.ip().is_loopback())
        {
            return Err(invalid(
                None,
                "auth.users_file",
                "required when listening beyond loopback: without it anyone could register".into(),
            ));
        }
        Ok(())
    }

    /// The core's policy from `[parking]`.
    pub fn core(&self) -> pushpark_model::Config {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let p = &self.parking;
        pushpark_model::Config {
            park_timeout: ms(p.park_timeout),
            ended_notice_window: ms(p.ended_notice_window),
            push_attempts: p.push_attempts,
            push_retry_base: ms(p.push_retry_base),
            awake_window: ms(p.awake_window),
            max_calls: p.max_calls,
            max_calls_per_callee: p.max_calls_per_callee,
        }
    }

    /// Whether REGISTERs naming `pn_provider` are served: a route names it, or it is
    /// `apns.dev` (the de-facto sandbox spelling) and `apns` is routed.
    pub fn serves_push_provider(&self, pn_provider: &str) -> bool {
        let routed = |p: &str| self.push.routes.keys().any(|k| k.eq_ignore_ascii_case(p));
        routed(pn_provider) || (pn_provider.eq_ignore_ascii_case("apns.dev") && routed("apns"))
    }

    /// The digest algorithms to offer, most preferred first.
    pub fn digest_algorithms(&self) -> Vec<crate::auth::Algorithm> {
        match &self.auth.algorithms {
            Some(names) => names
                .iter()
                .filter_map(|n| crate::auth::Algorithm::from_name(n.get_ref()))
                .collect(),
            None => crate::auth::Algorithm::DEFAULT.to_vec(),
        }
    }

    /// The digest realm.
    pub fn realm(&self) -> &str {
        self.auth
            .realm
            .as_deref()
            .or(self.domains.first().map(String::as_str))
            .unwrap_or("localhost")
    }
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `host` or `host:port`: an IPv4 address, a bracketed IPv6 address or a DNS name, with
/// an optional port (what a Via sent-by or a SIP URI's host part takes, RFC 3261 §25.1).
/// The host part of one is [`Listener::advertised_host`].
fn is_host_port(value: &str) -> bool {
    if value.parse::<SocketAddr>().is_ok() || value.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    if let Some(v6) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    labels_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("pushpark.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_file_gives_the_embedded_defaults() {
        assert_eq!(parse(""), Ok(Config::default()));
    }

    #[test]
    fn the_example_file_parses_and_documents_every_section() {
        let example = include_str!("../pushpark.example.toml");
        let config = parse(example).expect("the example is valid");
        assert_eq!(config.parking.park_timeout, Duration::from_secs(30));
        for section in [
            "[parking]",
            "[registrar]",
            "[auth]",
            "[store]",
            "[sip]",
            "[push.providers.",
            "[push.routes]",
            "[[listen]]",
        ] {
            assert!(example.contains(section), "{section} is not documented");
        }
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let config = parse("[parking]\npark_timeout = \"45s\"\npush_retry_base = \"250ms\"\n")
            .expect("valid");
        assert_eq!(config.parking.park_timeout, Duration::from_secs(45));
        assert_eq!(config.core().park_timeout, 45_000);
        assert_eq!(config.core().push_retry_base, 250);
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_file_line_and_key() {
        let err = parse("domains = [\"example.com\"]\n\n[parking]\npark_timout = \"30s\"\n")
            .expect_err("unknown key");
        assert!(err.starts_with("pushpark.toml: "), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("park_timout"), "{err}");
    }

    #[test]
    fn the_app_api_is_https_but_on_loopback_and_errors_name_the_listen_line() {
        let config = parse(
            "[app_api]\nlisten = \"0.0.0.0:5443\"\ncertificate = \"/c.pem\"\n\
             private_key = \"/k.pem\"\npublic_url = \"https://sip.example.com/v1/calls/answer\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.app_api.answer_url().as_deref(),
            Some("https://sip.example.com/v1/calls/answer")
        );
        let local =
            parse("[app_api]\nlisten = \"127.0.0.1:5443\"\n").expect("plain HTTP on loopback");
        assert_eq!(
            local.app_api.answer_url().as_deref(),
            Some("http://127.0.0.1:5443/v1/calls/answer")
        );
        assert_eq!(
            Config::default().app_api.answer_url(),
            None,
            "off by default"
        );
        for (text, problem) in [
            (
                "[app_api]\nlisten = \"192.0.2.1:5443\"\n",
                "needs certificate and private_key",
            ),
            (
                "[app_api]\nlisten = \"127.0.0.1:5443\"\ncertificate = \"/c.pem\"\n",
                "needs both certificate and private_key",
            ),
            (
                "[app_api]\nlisten = \"0.0.0.0:5443\"\ncertificate = \"/c\"\nprivate_key = \"/k\"\n",
                "needs public_url",
            ),
            (
                "[app_api]\nlisten = \"127.0.0.1:5443\"\npublic_url = \"ftp://x\"\n",
                "must be an http:// or https:// URL",
            ),
            (
                &format!(
                    "[app_api]\nlisten = \"127.0.0.1:5443\"\npublic_url = \"https://{}\"\n",
                    "a".repeat(300)
                ),
                "256 characters at most",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                err.starts_with("pushpark.toml:2: `app_api.listen`: ") && err.contains(problem),
                "{err}"
            );
        }
        let err = parse("[app_api]\ncertificate = \"/c.pem\"\n").expect_err("no listen");
        assert!(
            err.contains("`app_api`: ") && err.contains("need listen"),
            "{err}"
        );
    }

    #[test]
    fn a_tls_listener_takes_a_certificate_and_its_key() {
        let tls = "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:5060\"\n\n\
                   [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"\n";
        let config = parse(&format!(
            "{tls}certificate = \"/etc/pushpark/sip.crt\"\nprivate_key = \"/etc/pushpark/sip.key\"\n"
        ))
        .expect("valid");
        let listener = config.listen[1].as_ref();
        assert_eq!(listener.transport, Transport::Tls);
        assert_eq!(
            listener.private_key.as_deref(),
            Some(Path::new("/etc/pushpark/sip.key"))
        );
        let err =
            parse(&format!("{tls}certificate = \"/etc/pushpark/sip.crt\"\n")).expect_err("no key");
        assert_eq!(
            err,
            "pushpark.toml:5: `listen[1]`: a TLS listener needs both certificate and private_key"
        );
        let err = parse(
            "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:5060\"\n\
                         private_key = \"/k\"\n",
        )
        .expect_err("a key on TCP");
        assert!(err.starts_with("pushpark.toml:1: `listen[0]`: "), "{err}");
    }

    #[test]
    fn the_redis_store_needs_a_redis_url_and_errors_name_its_line() {
        let config = parse(
            "[store]\nbackend = \"redis\"\nurl = \"redis://10.0.0.5:6379/2\"\nprefix = \"pp:\"\n",
        )
        .expect("valid");
        assert_eq!(config.store.backend, Backend::Redis);
        assert_eq!(config.store.prefix, "pp:");
        assert!(config.store.require_fsync, "durable unless told otherwise");
        let err = parse("[store]\nbackend = \"redis\"\n").expect_err("no url");
        assert_eq!(
            err,
            "pushpark.toml: `store.backend`: the redis backend needs url"
        );
        let err = parse("[store]\nbackend = \"redis\"\n\nurl = \"http://10.0.0.5\"\n")
            .expect_err("not a Redis URL");
        assert!(err.starts_with("pushpark.toml:4: `store.url`: "), "{err}");
        let err = parse("[store]\nurl = \"redis://10.0.0.5\"\n").expect_err("url on sqlite");
        assert!(err.starts_with("pushpark.toml:2: `store.url`: "), "{err}");
        let err = parse("[store]\nbackend = \"mysql\"\n").expect_err("no such backend");
        assert!(
            err.contains("pushpark.toml") && err.contains("mysql"),
            "{err}"
        );
        let err =
            parse("[store]\nbackend = \"redis\"\nurl = \"redis://h\"\nca_file = \"/etc/ca.pem\"\n")
                .expect_err("a CA without TLS");
        assert!(err.contains("`store.ca_file`"), "{err}");
        let long = "x".repeat(65);
        let err = parse(&format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://h\"\nprefix = \"{long}\"\n"
        ))
        .expect_err("a long prefix");
        assert!(err.contains("`store.prefix`"), "{err}");
    }

    #[test]
    fn a_listener_on_all_addresses_needs_an_advertised_address() {
        let any = "domains = [\"example.com\"]\n[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:5060\"\n";
        let err = parse(any).expect_err("no advertised address");
        assert!(err.starts_with("pushpark.toml:2: `listen[0]`: "), "{err}");
        assert!(err.contains("advertised_address"), "{err}");
        for good in [
            "sip.example.com",
            "sip.example.com:5070",
            "203.0.113.5:5060",
            "[2001:db8::1]",
        ] {
            let text = format!(
                "[auth]\nusers_file = \"/etc/pushpark/users\"\n{}advertised_address = \"{good}\"\n",
                any.replace("domains = [\"example.com\"]\n", "")
            );
            let config = parse(&format!("domains = [\"example.com\"]\n{text}"));
            assert!(config.is_ok(), "{good}: {config:?}");
        }
        for bad in [
            "",
            "2001:db8::1",
            "sip example.com",
            "sip.example.com:0",
            "a;b",
            "<x>",
        ] {
            let text = format!("{any}advertised_address = \"{bad}\"\n");
            let err = parse(&text).expect_err(bad);
            assert!(err.contains("host or host:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_zero_connection_limit_is_an_error_naming_the_key() {
        let err = parse("[connections]\nmax_per_ip = 0\n").expect_err("zero");
        assert!(
            err.contains("`connections.max_per_ip`: must not be zero"),
            "{err}"
        );
        let err = parse("[connections]\nmessage_timeout = \"0s\"\n").expect_err("zero");
        assert!(err.contains("`connections.message_timeout`"), "{err}");
    }

    #[test]
    fn a_bad_address_is_an_error_naming_the_line() {
        let err = parse("[[listen]]\ntransport = \"udp\"\naddress = \"localhost:50x0\"\n")
            .expect_err("bad address");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_route_to_a_missing_provider_names_its_line_and_key() {
        let err = parse("[push.routes]\napns = \"gateway\"\n").expect_err("no such provider");
        assert_eq!(
            err,
            "pushpark.toml:2: `push.routes.apns`: no provider named \"gateway\" in [push.providers]"
        );
    }

    #[test]
    fn an_fcm_provider_reads_its_key_path_and_defaults() {
        let config = parse(
            "[push.providers.firebase]\nkind = \"fcm\"\nservice_account = \"/etc/key.json\"\n\
             [push.routes]\nfcm = \"firebase\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.push.providers.get("firebase"),
            Some(&Provider::Fcm {
                service_account: PathBuf::from("/etc/key.json"),
                project_id: None,
                api_base_url: None,
                token_url: None,
                timeout: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn an_apns_provider_needs_exactly_one_kind_of_credentials() {
        let token = "[push.providers.apple]\nkind = \"apns\"\nkey = \"/k.p8\"\nkey_id = \"ABC123DEFG\"\nteam_id = \"DEF123GHIJ\"\n";
        assert!(parse(token).is_ok());
        let both = format!("{token}certificate = \"/c.p12\"\n");
        let err = parse(&both).expect_err("two kinds of credentials");
        assert!(err.contains("`push.providers.apple`"), "{err}");
        let neither = "[push.providers.apple]\nkind = \"apns\"\n";
        assert!(parse(neither).is_err());
    }

    #[test]
    fn apns_dev_is_served_where_apns_is() {
        let config = Config::default();
        assert!(config.serves_push_provider("apns.dev"));
        assert!(config.serves_push_provider("FCM"));
        assert!(!config.serves_push_provider("pigeon"));
    }

    #[test]
    fn listening_beyond_loopback_needs_a_users_file() {
        let err = parse(
            "[[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:5060\"\n\
             advertised_address = \"sip.example.com\"\n",
        )
        .expect_err("open registrar on the network");
        assert!(err.contains("auth.users_file"), "{err}");
    }

    #[test]
    fn expiry_bounds_must_be_ordered() {
        let err = parse("[registrar]\nmin_expires = \"2h\"\n").expect_err("min above default");
        assert!(err.contains("`registrar`"), "{err}");
    }

    #[test]
    fn an_unknown_digest_algorithm_names_its_line() {
        let err = parse("[auth]\nalgorithms = [\"MD5\", \"SHA-1\"]\n").expect_err("no SHA-1");
        assert!(
            err.starts_with("pushpark.toml:2: `auth.algorithms`"),
            "{err}"
        );
    }

    #[test]
    fn the_realm_defaults_to_the_first_domain() {
        let config = parse("domains = [\"example.com\"]\n").expect("valid");
        assert_eq!(config.realm(), "example.com");
    }

    #[test]
    fn a_registrar_that_takes_no_contact_is_refused_naming_the_key() {
        let err = parse("[registrar]\nmax_contacts_per_register = 0\n").expect_err("zero");
        assert!(err.contains("registrar.max_contacts_per_register"), "{err}");
        assert_eq!(Config::default().registrar.max_contacts_per_register, 10);
    }
}
