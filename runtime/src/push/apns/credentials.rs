//! APNs credentials: where the key or certificate comes from ([`KeySource`], [`ApnsAuth`]),
//! and how it becomes what a2 takes ([`Credentials`]): a `.p8` token key as is; a PKCS#12 file
//! or PEM files as a certificate chain PEM plus a PKCS#8 key PEM (the PEM and DER helpers for
//! that are at the end of this file).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

use super::{ApnsEnvironment, ApnsError};

/// How long an idle connection to APNs is kept (a2's default).
const POOL_IDLE_TIMEOUT_SECS: u64 = 600;

/// Where key or certificate material comes from.
#[derive(Clone)]
pub enum KeySource {
    /// The file's content, already in memory.
    Bytes(Vec<u8>),
    /// A file, read once when the provider is built.
    Path(PathBuf),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Bytes(bytes) => write!(f, "Bytes(<{} bytes>)", bytes.len()),
            KeySource::Path(path) => f.debug_tuple("Path").field(path).finish(),
        }
    }
}

impl KeySource {
    fn load(&self) -> Result<Vec<u8>, ApnsError> {
        match self {
            KeySource::Bytes(bytes) => Ok(bytes.clone()),
            KeySource::Path(path) => std::fs::read(path).map_err(|source| ApnsError::Read {
                path: path.clone(),
                source,
            }),
        }
    }
}

/// How the provider authenticates to APNs.
#[derive(Clone)]
pub enum ApnsAuth {
    /// Token-based (JWT, ES256) authentication with a `.p8` key from the developer account.
    Token {
        /// The `.p8` file: a PKCS#8 PEM EC P-256 private key.
        key: KeySource,
        /// The key's 10-character key id (JWT `kid`).
        key_id: String,
        /// The 10-character team id (JWT `iss`).
        team_id: String,
    },
    /// A VoIP Services certificate exported as PKCS#12 (`.p12`).
    Pkcs12 {
        /// The `.p12` file.
        file: KeySource,
        /// Its password (may be empty).
        password: String,
    },
    /// A VoIP Services certificate as PEM.
    Pem {
        /// The certificate chain (leaf first); may also hold the private key.
        cert: KeySource,
        /// The private key, when it is not in `cert`.
        key: Option<KeySource>,
    },
}

impl fmt::Debug for ApnsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApnsAuth::Token {
                key,
                key_id,
                team_id,
            } => f
                .debug_struct("Token")
                .field("key", key)
                .field("key_id", key_id)
                .field("team_id", team_id)
                .finish(),
            ApnsAuth::Pkcs12 { file, .. } => f
                .debug_struct("Pkcs12")
                .field("file", file)
                .field("password", &"<redacted>")
                .finish(),
            ApnsAuth::Pem { cert, key } => f
                .debug_struct("Pem")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

/// Credentials as a2 takes them.
pub(super) enum Credentials {
    Token {
        key_pem: Vec<u8>,
        key_id: String,
        team_id: String,
    },
    Certificate {
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token {
                key_id, team_id, ..
            } => write!(f, "Token {{ key_id: {key_id:?}, team_id: {team_id:?} }}"),
            Credentials::Certificate { .. } => f.write_str("Certificate"),
        }
    }
}

impl Credentials {
    pub(super) fn load(auth: &ApnsAuth) -> Result<Self, ApnsError> {
        match auth {
            ApnsAuth::Token {
                key,
                key_id,
                team_id,
            } => {
                if key_id.trim().is_empty() {
                    return Err(ApnsError::Empty("key_id"));
                }
                if team_id.trim().is_empty() {
                    return Err(ApnsError::Empty("team_id"));
                }
                Ok(Credentials::Token {
                    key_pem: key.load()?,
                    key_id: key_id.trim().to_owned(),
                    team_id: team_id.trim().to_owned(),
                })
            }
            ApnsAuth::Pkcs12 { file, password } => {
                let (cert_pem, key_pem) = pkcs12_to_pem(&file.load()?, password)?;
                Ok(Credentials::Certificate { cert_pem, key_pem })
            }
            ApnsAuth::Pem { cert, key } => {
                let cert_pem = cert.load()?;
                let key_pem = match key {
                    Some(key) => key.load()?,
                    None => cert_pem.clone(),
                };
                if !contains(&cert_pem, b"-----BEGIN CERTIFICATE-----") {
                    return Err(ApnsError::NoCertificate);
                }
                let key_pem = pkcs8_key_pem(&key_pem)?;
                Ok(Credentials::Certificate { cert_pem, key_pem })
            }
        }
    }

    pub(super) fn team_id(&self) -> Option<&str> {
        match self {
            Credentials::Token { team_id, .. } => Some(team_id),
            Credentials::Certificate { .. } => None,
        }
    }

    /// Builds an a2 client: no I/O; with token auth, signs a fresh JWT (`iat` = now).
    pub(super) fn client(
        &self,
        environment: ApnsEnvironment,
        timeout: Duration,
    ) -> Result<a2::Client, a2::Error> {
        let mut config = a2::ClientConfig::new(environment.endpoint());
        // a2's own timeout, whole seconds, as a backstop to ours.
        config.request_timeout_secs = Some(timeout.as_secs_f64().ceil().max(1.0) as u64);
        config.pool_idle_timeout_secs = Some(POOL_IDLE_TIMEOUT_SECS);
        match self {
            Credentials::Token {
                key_pem,
                key_id,
                team_id,
            } => a2::Client::token(
                key_pem.as_slice(),
                key_id.as_str(),
                team_id.as_str(),
                config,
            ),
            Credentials::Certificate { cert_pem, key_pem } => {
                a2::Client::certificate_parts(cert_pem, key_pem, config)
            }
        }
    }
}

// --- Credentials material ---------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn pem_encode(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem.into_bytes()
}

/// The base64 body of the first `label` PEM block, decoded. `None` if absent or not plain
/// base64 (e.g. an encrypted legacy PEM with `Proc-Type` headers).
fn pem_block(pem: &[u8], label: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The private key of `pem` as a PKCS#8 PEM (what a2 reads), converting PKCS#1 RSA keys.
fn pkcs8_key_pem(pem: &[u8]) -> Result<Vec<u8>, ApnsError> {
    if contains(pem, b"-----BEGIN PRIVATE KEY-----") {
        return Ok(pem.to_vec());
    }
    if contains(pem, b"-----BEGIN RSA PRIVATE KEY-----") {
        let pkcs1 = pem_block(pem, "RSA PRIVATE KEY").ok_or(ApnsError::UnsupportedKey(
            "encrypted or unreadable RSA key: decrypt it with `openssl pkcs8 -topk8 -nocrypt`",
        ))?;
        return Ok(pem_encode("PRIVATE KEY", &rsa_pkcs1_to_pkcs8(&pkcs1)));
    }
    if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(ApnsError::UnsupportedKey(
            "encrypted PKCS#8 key: decrypt it with `openssl pkcs8 -nocrypt`",
        ));
    }
    if contains(pem, b"-----BEGIN EC PRIVATE KEY-----") {
        return Err(ApnsError::UnsupportedKey(
            "SEC1 EC key: convert it with `openssl pkcs8 -topk8 -nocrypt`",
        ));
    }
    Err(ApnsError::NoPrivateKey("no PEM private key block"))
}

/// Wraps a PKCS#1 `RSAPrivateKey` in a PKCS#8 `PrivateKeyInfo` (RFC 5208).
fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend_from_slice(&RSA_ALGORITHM);
    body.extend(der_tlv(0x04, pkcs1));
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Extracts (certificate chain PEM, PKCS#8 key PEM) from a PKCS#12 file.
fn pkcs12_to_pem(der: &[u8], password: &str) -> Result<(Vec<u8>, Vec<u8>), ApnsError> {
    use p12_keystore::{KeyStore, Pkcs12ImportPolicy};

    let store = KeyStore::from_pkcs12(der, password, Pkcs12ImportPolicy::Strict)
        .map_err(|e| ApnsError::Pkcs12(e.to_string()))?;
    let (_alias, chain) = store.private_key_chain().ok_or(ApnsError::NoPrivateKey(
        "no key with a matching certificate",
    ))?;
    if chain.certs().is_empty() {
        return Err(ApnsError::NoCertificate);
    }
    let cert_pem = chain
        .certs()
        .iter()
        .flat_map(|cert| pem_encode("CERTIFICATE", cert.as_der()))
        .collect();
    let key_pem = pem_encode("PRIVATE KEY", chain.key().as_der());
    Ok((cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        cert_provider, token_provider, CERT_PEM, KEY_ID, KEY_PKCS1_PEM, KEY_PKCS8_PEM, P12_LEGACY,
        P12_MODERN, TEAM, TOKEN_KEY,
    };
    use super::super::{ApnsConfig, ApnsProvider};
    use super::*;

    #[test]
    fn token_key_that_is_not_an_ec_key_is_refused() {
        let config = ApnsConfig::token(KeySource::Bytes(KEY_PKCS8_PEM.into()), KEY_ID, TEAM);
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Client(_))
        ));
        let config = ApnsConfig::token(KeySource::Bytes(b"not a key".to_vec()), KEY_ID, TEAM);
        assert!(ApnsProvider::new(config).is_err());
    }

    #[test]
    fn token_auth_requires_key_id_and_team_id() {
        let config = ApnsConfig::token(KeySource::Bytes(TOKEN_KEY.into()), " ", TEAM);
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Empty("key_id"))
        ));
        let config = ApnsConfig::token(KeySource::Bytes(TOKEN_KEY.into()), KEY_ID, "");
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Empty("team_id"))
        ));
    }

    #[test]
    fn key_is_read_from_a_path() {
        let path = std::env::temp_dir().join(format!("pushpark-apns-{}.p8", std::process::id()));
        std::fs::write(&path, TOKEN_KEY).expect("write key");
        let result = ApnsProvider::new(ApnsConfig::token(
            KeySource::Path(path.clone()),
            KEY_ID,
            TEAM,
        ));
        let _ = std::fs::remove_file(&path);
        result.expect("provider from a key file");

        let missing = ApnsConfig::token(KeySource::Path(path.clone()), KEY_ID, TEAM);
        assert!(matches!(
            ApnsProvider::new(missing),
            Err(ApnsError::Read { path: p, .. }) if p == path
        ));
    }

    #[test]
    fn pem_certificate_builds_from_one_or_two_files() {
        cert_provider();
        let combined = format!("{CERT_PEM}{KEY_PKCS8_PEM}");
        ApnsProvider::new(ApnsConfig::pem(KeySource::Bytes(combined.into()), None))
            .expect("cert and key in one PEM file");
    }

    #[test]
    fn pem_without_certificate_or_key_is_refused() {
        let no_cert = ApnsConfig::pem(KeySource::Bytes(KEY_PKCS8_PEM.into()), None);
        assert!(matches!(
            ApnsProvider::new(no_cert),
            Err(ApnsError::NoCertificate)
        ));
        let no_key = ApnsConfig::pem(KeySource::Bytes(CERT_PEM.into()), None);
        assert!(matches!(
            ApnsProvider::new(no_key),
            Err(ApnsError::NoPrivateKey(_))
        ));
    }

    #[test]
    fn pkcs1_rsa_key_becomes_the_pkcs8_key_openssl_writes() {
        let pkcs1 = pem_block(KEY_PKCS1_PEM.as_bytes(), "RSA PRIVATE KEY").expect("pkcs1");
        let pkcs8 = pem_block(KEY_PKCS8_PEM.as_bytes(), "PRIVATE KEY").expect("pkcs8");
        assert_eq!(rsa_pkcs1_to_pkcs8(&pkcs1), pkcs8);
        ApnsProvider::new(ApnsConfig::pem(
            KeySource::Bytes(CERT_PEM.into()),
            Some(KeySource::Bytes(KEY_PKCS1_PEM.into())),
        ))
        .expect("certificate with a PKCS#1 key");
    }

    #[test]
    fn encrypted_and_sec1_keys_are_refused_with_a_hint() {
        for label in ["ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY"] {
            let key = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            let config = ApnsConfig::pem(
                KeySource::Bytes(CERT_PEM.into()),
                Some(KeySource::Bytes(key.into())),
            );
            match ApnsProvider::new(config) {
                Err(ApnsError::UnsupportedKey(hint)) => assert!(hint.contains("openssl"), "{hint}"),
                other => panic!("{label}: {other:?}"),
            }
        }
    }

    #[test]
    fn pkcs12_modern_and_legacy_yield_the_certificate_and_key() {
        let cert_der = pem_block(CERT_PEM.as_bytes(), "CERTIFICATE").expect("cert");
        let key_der = pem_block(KEY_PKCS8_PEM.as_bytes(), "PRIVATE KEY").expect("key");
        for (name, p12) in [("modern", P12_MODERN), ("legacy", P12_LEGACY)] {
            let (cert_pem, key_pem) = pkcs12_to_pem(p12, "s3cret").expect(name);
            assert_eq!(
                pem_block(&cert_pem, "CERTIFICATE").as_deref(),
                Some(&cert_der[..]),
                "{name}"
            );
            assert_eq!(
                pem_block(&key_pem, "PRIVATE KEY").as_deref(),
                Some(&key_der[..]),
                "{name}"
            );
            ApnsProvider::new(ApnsConfig::pkcs12(KeySource::Bytes(p12.to_vec()), "s3cret"))
                .expect(name);
        }
    }

    #[test]
    fn pkcs12_with_wrong_password_is_refused() {
        let config = ApnsConfig::pkcs12(KeySource::Bytes(P12_LEGACY.to_vec()), "wrong");
        assert!(matches!(
            ApnsProvider::new(config),
            Err(ApnsError::Pkcs12(_))
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = ApnsConfig::pkcs12(KeySource::Bytes(P12_LEGACY.to_vec()), "s3cret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = format!("{:?}", token_provider());
        assert!(!shown.contains("BEGIN"), "{shown}");
    }
}
