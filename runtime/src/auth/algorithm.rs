//! The digest algorithms SIP uses: MD5 (RFC 3261 §22.4, RFC 7616 §3.4) and SHA-256
//! (RFC 8760 §2, RFC 7616 §3.4).

use md5::Md5;
use sha2::{Digest, Sha256};

/// A digest algorithm (RFC 7616 §3.3 `algorithm` parameter; RFC 8760 §2.1).
///
/// The `-sess` variants are not offered (SIP has no use for them; RFC 8760 §2.1 lists
/// them only for completeness), nor is SHA-512-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`: the default when the `algorithm` parameter is absent (RFC 7616 §3.3).
    Md5,
    /// `SHA-256` (RFC 8760).
    Sha256,
}

impl Algorithm {
    /// Every supported algorithm, strongest first: the order challenges go in when both
    /// are configured (RFC 8760 §2.4).
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

    /// What challenges offer by default: MD5 alone. Real clients answer only the first
    /// challenge (SIPp 3.6.1), or give up on a 407 that offers any algorithm they do not
    /// know (baresip 1.0.0: "Function not implemented"), and both know only MD5. SHA-256 is
    /// there for fleets that all do it (`[auth] algorithms`). What protects a digest
    /// exchange is TLS and a strong password, not the choice between the two hashes.
    pub const DEFAULT: [Algorithm; 1] = [Algorithm::Md5];

    /// The token used in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm` parameter value, case-insensitively (RFC 7616 §3.3:
    /// the algorithm name is a token compared without regard to case).
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Length of the lowercase hex digest this algorithm produces.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// `H(parts[0] ":" parts[1] ":" ...)` as lowercase hex (RFC 7616 §3.4: `H` and `KD`
    /// are written as 32/64 lowercase hex digits).
    pub(super) fn hash_joined(self, parts: &[&str]) -> String {
        fn run<D: Digest>(parts: &[&str]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p.as_bytes());
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Md5 => run::<Md5>(parts),
            Algorithm::Sha256 => run::<Sha256>(parts),
        }
    }

    /// The request digest (RFC 7616 §3.4.1; RFC 2069 form when `qop` is `None`):
    /// * with `qop=auth`: `KD(HA1, nonce:nc:cnonce:qop:HA2)`
    /// * without `qop`:   `KD(HA1, nonce:HA2)`
    ///
    /// where `HA2 = H(method:digest-uri)` and `KD(s, d) = H(s:d)`.
    pub(super) fn response(
        self,
        ha1: &str,
        nonce: &str,
        qop: Option<(&str, &str)>,
        method: &str,
        uri: &str,
    ) -> String {
        let ha2 = self.hash_joined(&[method, uri]);
        match qop {
            Some((nc, cnonce)) => self.hash_joined(&[ha1, nonce, nc, cnonce, "auth", &ha2]),
            None => self.hash_joined(&[ha1, nonce, &ha2]),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `HA1 = H(username ":" realm ":" password)` as lowercase hex (RFC 7616 §3.4.2,
/// non-`-sess` algorithms; RFC 3261 §22.4). This is what the users file stores.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash_joined(&[username, realm, password])
}
