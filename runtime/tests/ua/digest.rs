//! Client side of SIP digest authentication (RFC 3261 §22, RFC 7616 with `qop=auth`,
//! RFC 8760 for SHA-256), computed here rather than with the server's code so the test
//! checks the server against an independent implementation.

use md5::Md5;
use sha2::{Digest, Sha256};

use super::sip::{random_hex, split_list};

/// A user's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The digest username.
    pub username: String,
    /// The password in clear.
    pub password: String,
}

impl Credentials {
    /// Credentials from a username and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// `MD5` (the default when a challenge names none).
    Md5,
    /// `SHA-256`.
    Sha256,
}

impl DigestAlgorithm {
    /// The token used in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }

    /// Lowercase hex digest of `parts` joined with `:`.
    pub fn hash(self, parts: &[&str]) -> String {
        let joined = parts.join(":");
        match self {
            DigestAlgorithm::Md5 => hex::encode(Md5::digest(joined.as_bytes())),
            DigestAlgorithm::Sha256 => hex::encode(Sha256::digest(joined.as_bytes())),
        }
    }
}

/// One parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, if any.
    pub opaque: Option<String>,
    /// `algorithm` (MD5 when absent); `None` for an algorithm this client does not know.
    pub algorithm: Option<DigestAlgorithm>,
    /// Whether `qop` offers `auth`.
    pub qop_auth: bool,
}

/// Parses a `WWW-Authenticate` / `Proxy-Authenticate` value; `None` if it is not a digest
/// challenge with a realm and a nonce.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, rest) = value.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut challenge = Challenge {
        realm: String::new(),
        nonce: String::new(),
        opaque: None,
        algorithm: Some(DigestAlgorithm::Md5),
        qop_auth: false,
    };
    let (mut realm, mut nonce) = (None, None);
    for item in split_list(rest) {
        let Some((name, v)) = item.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "nonce" => nonce = Some(v),
            "opaque" => challenge.opaque = Some(v),
            "algorithm" => {
                challenge.algorithm = match v.to_ascii_uppercase().as_str() {
                    "MD5" => Some(DigestAlgorithm::Md5),
                    "SHA-256" => Some(DigestAlgorithm::Sha256),
                    _ => None,
                }
            }
            "qop" => challenge.qop_auth = v.split(',').any(|q| q.trim() == "auth"),
            _ => {}
        }
    }
    challenge.realm = realm?;
    challenge.nonce = nonce?;
    Some(challenge)
}

/// Picks the challenge to answer among several (one per algorithm, RFC 8760 §2.4):
/// `prefer` if offered, else SHA-256, else MD5.
pub fn choose(challenges: &[String], prefer: Option<DigestAlgorithm>) -> Option<Challenge> {
    let parsed: Vec<Challenge> = challenges
        .iter()
        .filter_map(|c| parse_challenge(c))
        .collect();
    let pick = |alg| parsed.iter().find(|c| c.algorithm == Some(alg)).cloned();
    prefer
        .and_then(pick)
        .or_else(|| pick(DigestAlgorithm::Sha256))
        .or_else(|| pick(DigestAlgorithm::Md5))
}

/// The `response` parameter (RFC 7616 §3.4.1): with `qop=auth`
/// `H(H(user:realm:password):nonce:nc:cnonce:auth:H(method:uri))`, without a qop (RFC 2069)
/// `H(HA1:nonce:HA2)`.
pub fn response(
    alg: DigestAlgorithm,
    credentials: &Credentials,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = alg.hash(&[&credentials.username, realm, &credentials.password]);
    let ha2 = alg.hash(&[method, uri]);
    match qop {
        Some((nc, cnonce)) => alg.hash(&[&ha1, nonce, nc, cnonce, "auth", &ha2]),
        None => alg.hash(&[&ha1, nonce, &ha2]),
    }
}

/// The `Authorization` value answering `challenge` for `method` `uri`, with `qop=auth`
/// when offered (RFC 7616 §3.4.1), the RFC 2069 form otherwise.
pub fn authorization(
    challenge: &Challenge,
    credentials: &Credentials,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let alg = challenge.algorithm.unwrap_or(DigestAlgorithm::Md5);
    let (realm, nonce) = (&challenge.realm, &challenge.nonce);
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm={}",
        credentials.username,
        alg.name()
    );
    if challenge.qop_auth {
        let cnonce = random_hex(16);
        let nc = format!("{nc:08x}");
        let qop = Some((nc.as_str(), cnonce.as_str()));
        let response = response(alg, credentials, realm, nonce, method, uri, qop);
        value.push_str(&format!(
            ", response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
        ));
    } else {
        let response = response(alg, credentials, realm, nonce, method, uri, None);
        value.push_str(&format!(", response=\"{response}\""));
    }
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    value
}
