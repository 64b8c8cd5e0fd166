//! TLS for the test user agents: one certificate authority per test process, the server
//! certificates it issues (written as the PEM files a `transport = "tls"` listener reads),
//! and a client configuration that trusts that authority alone — so a UA's handshake checks
//! the server's certificate for real (name 127.0.0.1, chain, signature).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

struct Authority {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    /// `root` as PEM, for clients that read their trust anchors from a file.
    pem: String,
}

fn authority() -> &'static Authority {
    static CA: OnceLock<Authority> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pushpark test CA");
        let root = params.self_signed(&key).expect("the CA certificate");
        Authority {
            root: root.der().clone(),
            pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    })
}

/// A server certificate for 127.0.0.1 and `localhost`, with `common_name`, issued by the
/// test authority: its chain and key written to `<dir>/<common_name>.{crt,key}`. Returns the
/// two paths and the certificate (DER), to compare with what a handshake presented.
///
/// 127.0.0.1 is in it twice: as an IP address (what RFC 5280 and rustls match an address
/// against) and as a DNS name, for linphonec, whose mbedtls 2.28 matches the server's name
/// against the DNS names only (an IP address entry is "<unsupported>" to it, and without
/// the DNS name its handshake fails with CN-mismatch).
pub fn issue(dir: &Path, common_name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = KeyPair::generate().expect("a server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server parameters");
    let address_as_name = "127.0.0.1".try_into().expect("an IA5 string");
    params
        .subject_alt_names
        .push(SanType::DnsName(address_as_name));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params
        .signed_by(&key, &authority().issuer)
        .expect("the server certificate");
    let (cert_path, key_path) = (
        dir.join(format!("{common_name}.crt")),
        dir.join(format!("{common_name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("certificate written");
    std::fs::write(&key_path, key.serialize_pem()).expect("key written");
    (cert_path, key_path, cert.der().to_vec())
}

/// The test authority's certificate, written to `<dir>/test-ca.crt` (PEM): the trust anchor
/// of a client that is not rustls (linphonec's `[sip] root_ca`). Returns its path.
pub fn authority_pem(dir: &Path) -> PathBuf {
    let path = dir.join("test-ca.crt");
    std::fs::write(&path, &authority().pem).expect("CA certificate written");
    path
}

/// A client configuration trusting the test authority only.
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots
                .add(authority().root.clone())
                .expect("the CA certificate is a trust anchor");
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS 1.2 and 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}
