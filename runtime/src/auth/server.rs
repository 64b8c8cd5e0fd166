//! The authenticator: challenges out, verdicts on credentials in (RFC 3261 §22.4,
//! RFC 7616 §3.3–3.4, RFC 8760).

use std::sync::Mutex;

use subtle::ConstantTimeEq;

use super::algorithm::Algorithm;
use super::challenge::format_challenge;
use super::nonce::{self, NcCheck, NcTracker, Secret};
use super::parse::Credentials;
use super::users::UserDb;

/// Settings for one realm's [`DigestAuth`].
#[derive(Debug, Clone)]
pub struct DigestConfig {
    /// The realm, sent in challenges and required in credentials (RFC 3261 §22.1: a
    /// globally unique string, usually the domain the registrar serves).
    pub realm: String,
    /// Keys the nonce MACs.
    pub secret: Secret,
    /// How long a nonce stays fresh, in seconds (default 300). Past that, correct
    /// credentials get [`Verdict::Stale`].
    pub nonce_lifetime: u64,
    /// An `opaque` value to send in challenges; when set, credentials must echo it
    /// (RFC 7616 §3.3). Default `None`.
    pub opaque: Option<String>,
    /// Most nonces whose highest `nc` is remembered at once (default 65 536). When full,
    /// the oldest is forgotten and answered as stale (see [`Verdict::Stale`]).
    pub max_tracked_nonces: usize,
    /// Accept the legacy RFC 2069 form (no `qop`, no `nc`): default `false`. Such
    /// credentials cannot be checked for replay, only for nonce freshness; RFC 3261 §22.4
    /// keeps the form for old phones, which an operator may let in (`[auth]
    /// allow_rfc2069`).
    pub allow_rfc2069: bool,
    /// The algorithms challenges offer, in order ([`Algorithm::DEFAULT`]: MD5 alone), and
    /// the only ones credentials are accepted in.
    pub algorithms: Vec<Algorithm>,
}

impl DigestConfig {
    /// Defaults: lifetime 300 s, no `opaque`, 65 536 tracked nonces, RFC 2069 allowed.
    pub fn new(realm: impl Into<String>, secret: Secret) -> Self {
        DigestConfig {
            realm: realm.into(),
            secret,
            nonce_lifetime: 300,
            opaque: None,
            max_tracked_nonces: 65_536,
            allow_rfc2069: false,
            algorithms: Algorithm::DEFAULT.to_vec(),
        }
    }
}

/// The outcome of [`DigestAuth::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are good: the request comes from this user.
    Authenticated {
        /// The authenticated user name.
        username: String,
    },
    /// The response was right for an authentic nonce that has since expired (or that
    /// the replay map had to forget). Challenge again with `stale=true`
    /// ([`DigestAuth::challenges`]`(now, true)`); the client retries with the new nonce
    /// without asking its user for the password (RFC 7616 §3.3).
    Stale,
    /// The credentials are not good; challenge again (or answer 403).
    Invalid(Rejection),
}

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `realm` is not this authenticator's realm.
    #[error("realm does not match")]
    RealmMismatch,
    /// `opaque` does not match the one sent in challenges.
    #[error("opaque does not match")]
    OpaqueMismatch,
    /// `uri` differs from the Request-URI (RFC 3261 §22.4).
    #[error("uri does not match the Request-URI")]
    UriMismatch,
    /// The nonce is malformed, forged, minted under another secret or for another realm.
    #[error("nonce is not one of ours")]
    BadNonce,
    /// The legacy RFC 2069 form (no `qop`) while it is disabled.
    #[error("qop=auth is required")]
    QopRequired,
    /// An algorithm the server does not offer (`[auth] algorithms`).
    #[error("algorithm not offered")]
    AlgorithmNotOffered,
    /// No such user (or no HA1 for the algorithm) in the users file.
    #[error("unknown user")]
    UnknownUser,
    /// The stored HA1 is not hex of the algorithm's length.
    #[error("stored HA1 is malformed")]
    BadStoredHa1,
    /// The response digest is wrong: wrong password, or the request was altered.
    #[error("wrong response digest")]
    WrongResponse,
    /// `nc` not higher than one already accepted with this nonce.
    #[error("nonce count replayed")]
    Replay,
}

/// One realm's digest authenticator. `Send + Sync`: share it (e.g. in an `Arc`); the
/// replay map is behind a mutex held only for a map update.
#[derive(Debug)]
pub struct DigestAuth {
    config: DigestConfig,
    nc: Mutex<NcTracker>,
}

impl DigestAuth {
    /// An authenticator with the given settings.
    pub fn new(config: DigestConfig) -> Self {
        let nc = Mutex::new(NcTracker::new(config.max_tracked_nonces));
        DigestAuth { config, nc }
    }

    /// The settings.
    pub fn config(&self) -> &DigestConfig {
        &self.config
    }

    /// A fresh nonce issued at `now` (unix seconds).
    pub fn new_nonce(&self, now: u64) -> String {
        nonce::mint_fresh(&self.config.secret, &self.config.realm, now)
    }

    /// Challenge header values, one per algorithm, SHA-256 first then MD5
    /// (RFC 8760 §2.4: a challenge per algorithm, most preferred first), sharing one
    /// fresh nonce, each with `qop="auth"`, the realm, `opaque` if configured, and
    /// `stale=true` when `stale` (answering [`Verdict::Stale`]). Send each as its own
    /// `WWW-Authenticate` (401) or `Proxy-Authenticate` (407) header.
    pub fn challenges(&self, now: u64, stale: bool) -> Vec<String> {
        let nonce = self.new_nonce(now);
        self.config
            .algorithms
            .iter()
            .map(|&alg| {
                format_challenge(
                    &self.config.realm,
                    &nonce,
                    alg,
                    self.config.opaque.as_deref(),
                    stale,
                )
            })
            .collect()
    }

    /// Checks credentials against the user's stored HA1 (lowercase or uppercase hex of
    /// `H(username:realm:password)` for `creds.algorithm`).
    ///
    /// `method` is the request's method and `request_uri` the Request-URI exactly as it
    /// appeared in the request line. RFC 3261 §22.4 has the server check that the
    /// digest-uri names the Request-URI; this compares the two as strings, byte for byte,
    /// which is what a client that copies its Request-URI (as RFC 3261 §22.4 tells it to)
    /// produces, and which cannot be fooled by URI-equivalence tricks. A proxy that
    /// rewrote the Request-URI upstream of us would make this fail (as it would the
    /// digest itself, since HA2 covers the URI).
    ///
    /// Order of checks: realm, opaque, uri, nonce authenticity, qop policy, response
    /// digest (constant-time), nonce freshness (→ [`Verdict::Stale`]), then `nc` replay.
    /// Stale is thus only reported for credentials that were right apart from the age of
    /// the nonce, so a wrong password never looks stale.
    pub fn verify(
        &self,
        creds: &Credentials,
        method: &str,
        request_uri: &str,
        ha1: &str,
        now: u64,
    ) -> Verdict {
        let cfg = &self.config;
        if creds.realm != cfg.realm {
            return Verdict::Invalid(Rejection::RealmMismatch);
        }
        if !cfg.algorithms.contains(&creds.algorithm) {
            return Verdict::Invalid(Rejection::AlgorithmNotOffered);
        }
        if let Some(expected) = &cfg.opaque {
            if creds.opaque.as_deref() != Some(expected.as_str()) {
                return Verdict::Invalid(Rejection::OpaqueMismatch);
            }
        }
        if creds.uri != request_uri {
            return Verdict::Invalid(Rejection::UriMismatch);
        }
        let Some(info) = nonce::open(&cfg.secret, &cfg.realm, &creds.nonce) else {
            return Verdict::Invalid(Rejection::BadNonce);
        };
        if creds.qop.is_none() && !cfg.allow_rfc2069 {
            return Verdict::Invalid(Rejection::QopRequired);
        }
        let alg = creds.algorithm;
        if ha1.len() != alg.hex_len() || !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Verdict::Invalid(Rejection::BadStoredHa1);
        }
        let ha1 = ha1.to_ascii_lowercase();
        let expected = alg.response(
            &ha1,
            &creds.nonce,
            creds
                .qop
                .as_ref()
                .map(|q| (q.nc.as_str(), q.cnonce.as_str())),
            method,
            &creds.uri,
        );
        let given = creds.response.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            return Verdict::Invalid(Rejection::WrongResponse);
        }
        let lifetime = cfg.nonce_lifetime;
        let too_old = now.saturating_sub(info.ts) > lifetime;
        let from_future = info.ts > now.saturating_add(lifetime);
        if too_old || from_future {
            return Verdict::Stale;
        }
        if let Some(q) = &creds.qop {
            let check = self
                .nc
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .check_and_record(info, q.nc_value, now, lifetime);
            match check {
                NcCheck::Accepted => {}
                NcCheck::Replay => return Verdict::Invalid(Rejection::Replay),
                NcCheck::Forgotten => return Verdict::Stale,
            }
        }
        Verdict::Authenticated {
            username: creds.username.clone(),
        }
    }

    /// [`verify`](Self::verify) with the HA1 looked up in `users` by the credentials'
    /// username, this realm and the algorithm the client chose.
    pub fn verify_user(
        &self,
        creds: &Credentials,
        method: &str,
        request_uri: &str,
        users: &UserDb,
        now: u64,
    ) -> Verdict {
        match users.ha1(&creds.username, &self.config.realm, creds.algorithm) {
            Some(ha1) => self.verify(creds, method, request_uri, ha1, now),
            None => Verdict::Invalid(Rejection::UnknownUser),
        }
    }

    #[cfg(test)]
    pub(super) fn tracked_nonces(&self) -> usize {
        self.nc.lock().map(|t| t.len()).unwrap_or(0)
    }
}
