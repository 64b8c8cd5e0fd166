//! SIP digest authentication for the registrar and proxy.
//!
//! Implements the server side of HTTP digest as SIP uses it:
//! RFC 3261 §22 (SIP's use of digest), RFC 7616 (the digest algorithms and the `qop`
//! rules; it obsoletes RFC 2617) and RFC 8760 (SHA-256 for SIP digest).
//!
//! The pieces:
//! * [`DigestAuth`]: one realm's authenticator. It mints challenges
//!   ([`DigestAuth::challenges`]) and checks parsed credentials ([`DigestAuth::verify`]).
//!   Nonces are stateless and unforgeable (an HMAC-SHA256 under a server [`Secret`]);
//!   the only state is a bounded replay map of the highest `nc` seen per nonce.
//!   Time is always passed in as `now` (unix seconds): nothing here reads a clock.
//! * [`parse_authorization`]: a tolerant parser of `Authorization` /
//!   `Proxy-Authorization` header values.
//! * [`UserDb`] and [`add_user`] / [`remove_user`] / [`list_users`]: the users file,
//!   which holds HA1 hashes only, never passwords (format documented on [`UserDb`]).
//!
//! A registrar's flow per request:
//! 1. No credentials for our realm → 401 with one `WWW-Authenticate` per value of
//!    [`DigestAuth::challenges`]`(now, false)` (a proxy: 407 and `Proxy-Authenticate`,
//!    see [`ChallengeKind`]).
//! 2. [`parse_authorization`] fails with [`ParseError::UnknownScheme`] → 401 with a fresh
//!    challenge (RFC 4475 §3.1.2.1, "regaut01"); another [`ParseError`] → 400 (or 401).
//! 3. [`DigestAuth::verify_user`] → [`Verdict::Authenticated`] (go on),
//!    [`Verdict::Stale`] (401 with `challenges(now, true)`: the phone retries without
//!    asking its user) or [`Verdict::Invalid`] (401 with a fresh challenge; or 403).

mod algorithm;
mod challenge;
mod nonce;
mod parse;
mod server;
mod users;

#[cfg(test)]
mod tests;

pub use self::algorithm::{ha1, Algorithm};
pub use self::challenge::ChallengeKind;
pub use self::nonce::Secret;
pub use self::parse::{parse_authorization, Credentials, ParseError, QopAuth};
pub use self::server::{DigestAuth, DigestConfig, Rejection, Verdict};
pub use self::users::{add_user, list_users, remove_user, UserDb, UserEntry, UsersError};
