//! TLS on every listener (`[tls]`): one certificate and key (PEM) for the four ports, with
//! rustls. Optionally a CA whose client certificates are verified (for proxies): `optional`
//! verifies a certificate when the client sends one, `required` refuses clients without one.
//! A verified certificate proves the connection's origin; what the client may do comes from
//! its bearer token, or without one from the `[[auth.tokens]]` entry whose `client_cert` is
//! among the certificate's URI or DNS names (a mesh's SPIFFE ID, say; see
//! `meshtrace_collector::peer`). ALPN offers `h2` and `http/1.1`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// When client certificates are asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Verified when sent.
    #[default]
    Optional,
    /// Clients without a certificate signed by `client_ca` are refused.
    Required,
}

/// `[tls]`: unset `cert` and `key` serve plain TCP.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

impl TlsSettings {
    /// The acceptor for these settings; `None` without a certificate.
    pub fn acceptor(&self) -> anyhow::Result<Option<TlsAcceptor>> {
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None)
                if self.client_ca.is_some() || self.client_auth == ClientAuth::Required =>
            {
                anyhow::bail!("[tls] client_ca and client_auth need cert and key")
            }
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => anyhow::bail!("[tls] needs both cert and key"),
        };
        anyhow::ensure!(
            self.client_auth == ClientAuth::Optional || self.client_ca.is_some(),
            "[tls] client_auth = \"required\" needs client_ca"
        );
        // ring builds with the C compiler alone (aws-lc-rs, which rustls now prefers for its
        // post-quantum key exchange, needs more tooling); its classical suites are sound.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading TLS key {}", key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("reading client CA {}", ca.display()))?
                {
                    roots.add(c?)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match self.client_auth {
                    ClientAuth::Optional => verifier.allow_unauthenticated().build()?,
                    ClientAuth::Required => verifier.build()?,
                };
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .context("the TLS key does not match the certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}
