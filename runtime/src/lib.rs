//! pushpark: a SIP registrar and stateful proxy that parks calls for mobile apps that sleep.
//!
//! Every call-level decision is made by the pure core of the `pushpark-model` crate; this
//! crate is the shell around it, one module per concept:
//!
//! | module | what lives there |
//! |---|---|
//! | [`auth`] | SIP digest authentication (MD5, SHA-256) and the users file of HA1 hashes |
//! | [`config`] | the TOML configuration and its embedded defaults |
//! | [`driver`] | the core driver: feeds the core with the time, keeps its timers |
//! | [`metrics`] | Prometheus metrics and health on the admin listener |
//! | [`proxy`] | INVITE, CANCEL and in-dialog requests; the core's effects carried out as SIP |
//! | [`push`] | push providers (webhook, log) behind one trait, dispatched off the SIP path |
//! | [`registrar`] | REGISTER: bindings, expiry, RFC 8599 push parameters, Feature-Caps |
//! | [`server`] | the event loop that owns it all; start and shutdown |
//! | [`sip`] | SIP syntax: framing, parsing, typed headers, validation, serialisation |
//! | [`transaction`] | RFC 3261 §17 transactions and their timers, sans-IO (RFC 6026 included) |
//! | [`transport`] | UDP and TCP listeners and the flows devices are reached on |
//! | [`store`] | bindings that survive a restart, in an embedded SQLite database |
//! | [`demo`] | `pushpark demo`: a call parked, pushed and delivered between simulated phones |

pub mod auth;
pub mod config;
pub mod demo;
pub mod driver;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod push;
pub mod registrar;
pub mod server;
pub mod sip;
pub mod store;
pub mod transaction;
pub mod transport;

/// The hash map of the event loop's tables: keyed by what peers send (branches, Call-IDs,
/// AORs), so hashed with a per-process random key (HashDoS), by aHash, which costs a
/// fraction of SipHash on the SIP path.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
