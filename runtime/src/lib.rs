//! pushpark: a SIP registrar and stateful proxy that parks calls for mobile apps that sleep.
//!
//! Every call-level decision is made by the pure core of the `pushpark-model` crate; this
//! crate is the shell around it, one module per concept:
//!
//! | module | what lives there |
//! |---|---|
//! | [`app_api`] | the app API: an app answers busy, decline or ringing from its push, over HTTPS |
//! | [`auth`] | SIP digest authentication (MD5, SHA-256) and the users file of HA1 hashes |
//! | [`config`] | the TOML configuration and its embedded defaults |
//! | [`driver`] | the core driver: feeds the core with the time, keeps its timers |
//! | [`metrics`] | Prometheus metrics and health on the admin listener |
//! | [`node`] | the sans-IO SIP node: transactions, registrar, proxy and core in one value; `handle_*` in, `poll_*` out |
//! | [`push`] | push providers (APNs, FCM, webhook, log) behind one trait, dispatched off the SIP path |
//! | [`server`] | the tokio shell: sockets, store thread, push providers, the loop that feeds the node; start and shutdown |
//! | [`sip`] | SIP syntax: framing, parsing, typed headers, validation, serialisation |
//! | [`transaction`] | RFC 3261 §17 transactions and their timers, sans-IO (RFC 6026 included) |
//! | [`transport`] | UDP and TCP listeners and the flows devices are reached on |
//! | [`store`] | bindings that survive a restart, in an embedded SQLite database |
//! | [`demo`] | `pushpark demo`: a call parked, pushed and delivered between simulated phones |

pub mod app_api;
pub mod auth;
pub mod config;
pub mod demo;
pub mod driver;
pub mod metrics;
pub mod node;
pub mod push;
pub mod server;
pub mod sip;
pub mod store;
pub mod transaction;
pub mod transport;

/// The hash map of the event loop's tables: keyed by what peers send (branches, Call-IDs,
/// AORs), so hashed with a per-process random key (HashDoS), by aHash, which costs a
/// fraction of SipHash on the SIP path.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
/// The hash set of the event loop's tables, hashed as [`Map`] is.
pub(crate) type Set<K> = std::collections::HashSet<K, ahash::RandomState>;
