//! TLS listeners (RFC 3261 §26.2, RFC 5630): a certificate chain and its private key from
//! PEM files, read again on [`TlsFiles::reload`] (SIGHUP) so a renewed certificate takes
//! effect without a restart; connections already open keep theirs.
//!
//! And the one kind of TLS connection pushpark opens itself: to another node of its
//! cluster ([`ClusterTls`]), whose certificate must chain to the cluster's own authority.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate or key that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read a PEM certificate chain: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: cannot read a PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: cannot use as the cluster's certificate authority: {reason}")]
    Authority { path: PathBuf, reason: String },
    #[error("{certificate} and {key}: {reason}")]
    Mismatch {
        certificate: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A TLS listener's certificate and key files, and the acceptor made from them.
pub struct TlsFiles {
    certificate: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl TlsFiles {
    /// Reads both files; any problem is an error naming the file.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            acceptor: RwLock::new(acceptor(certificate, key)?),
            certificate: certificate.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads both files again; on any problem the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.certificate, &self.key)?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn certificate(&self) -> &Path {
        &self.certificate
    }
}

fn acceptor(certificate: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: certificate.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: certificate.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    // aws-lc-rs: the provider rustls already links for the push providers' HTTPS. SIP
    // peers authenticate with digest, not with client certificates (RFC 3261 §26.3.2.1
    // lets the server alone present one).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| TlsError::Mismatch {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How this node opens TLS connections to the other nodes of its cluster: it trusts only
/// the certificates its authority (`[cluster] ca_file`) issued, and presents none (the
/// nodes authenticate each other's requests by the cluster's path and route tokens).
#[derive(Clone)]
pub struct ClusterTls {
    connector: TlsConnector,
}

impl ClusterTls {
    /// Reads the authority's certificates (PEM) from `ca_file`.
    pub fn load(ca_file: &Path) -> Result<Self, TlsError> {
        let error = |reason: String| TlsError::Authority {
            path: ca_file.to_owned(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for certificate in
            CertificateDer::pem_file_iter(ca_file).map_err(|e| error(e.to_string()))?
        {
            let certificate = certificate.map_err(|e| error(e.to_string()))?;
            roots.add(certificate).map_err(|e| error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(error("no CERTIFICATE block".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }
}
