//! TLS to PostgreSQL with libpq's `sslmode` meanings, on rustls:
//!
//! | mode | encrypted | certificate checked against the CA | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | | |
//! | `prefer` | when the server offers it | no | no |
//! | `require` | yes | only when a CA is given (then as `verify-ca`) | no |
//! | `verify-ca` | yes | yes (CA required) | no |
//! | `verify-full` | yes | yes (CA required) | yes |
//!
//! Handshake signatures are always verified; "not checked" above means the chain or the name.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::cdc::SslMode;

/// Why a TLS configuration cannot be built. The caller says where the CA comes from (the
/// operator: `spec.postgres.caCert`; the CDC worker: `postgres.caFile`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("a CA certificate is required with sslMode {mode}")]
    CaRequired { mode: &'static str },
    #[error("{detail}")]
    BadCa { detail: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A connection's I/O task, whatever its TLS stream.
pub type Connection =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// Connects `config` (its `ssl_mode` is set from `mode`) with the TLS `mode` asks for; the
/// caller spawns the returned connection task.
pub async fn connect(
    config: &mut tokio_postgres::Config,
    mode: SslMode,
    ca_pem: Option<&[u8]>,
) -> Result<(tokio_postgres::Client, Connection), ConnectError> {
    let tls = setup(mode, ca_pem)?;
    config.ssl_mode(tls.mode);
    let connected = match tls.config {
        None => config
            .connect(tokio_postgres::NoTls)
            .await
            .map(|(c, conn)| (c, Box::pin(conn) as Connection)),
        Some(rustls_config) => config
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config))
            .await
            .map(|(c, conn)| (c, Box::pin(conn) as Connection)),
    };
    Ok(connected?)
}

/// Why [`connect`] failed: the TLS settings, or the connection itself.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// What to connect with: tokio-postgres' `sslmode` and, unless TLS is off, the rustls config.
pub struct TlsSetup {
    pub mode: tokio_postgres::config::SslMode,
    pub config: Option<ClientConfig>,
}

/// Makes ring the process-wide rustls provider. A build that enables both of rustls's providers
/// (the workspace build: kube asks for ring, the S3 client of object_store for aws-lc-rs) leaves
/// rustls unable to pick one, and a client built without an explicit provider (kube's) panics.
/// Call it first thing in a binary; later calls do nothing.
pub fn install_default_provider() {
    // Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS setup for `mode`, with the CA certificates in `ca_pem` (PEM) when given.
pub fn setup(mode: SslMode, ca_pem: Option<&[u8]>) -> Result<TlsSetup, TlsError> {
    use tokio_postgres::config::SslMode as Pg;
    let roots = ca_pem.map(roots).transpose()?;
    let (pg, verifier): (Pg, Option<Arc<dyn ServerCertVerifier>>) = match (mode, roots) {
        (SslMode::Disable, _) => (Pg::Disable, None),
        (SslMode::Prefer, _) | (SslMode::Require, None) => {
            let pg = if mode == SslMode::Prefer {
                Pg::Prefer
            } else {
                Pg::Require
            };
            (pg, Some(Arc::new(AnyCertificate::new(provider()))))
        }
        (SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
            (Pg::Require, Some(Arc::new(AnyName(webpki(roots)?))))
        }
        (SslMode::VerifyFull, Some(roots)) => (Pg::Require, Some(webpki(roots)?)),
        (SslMode::VerifyCa, None) => return Err(TlsError::CaRequired { mode: "verify-ca" }),
        (SslMode::VerifyFull, None) => {
            return Err(TlsError::CaRequired {
                mode: "verify-full",
            });
        }
    };
    let config = verifier
        .map(|v| {
            Ok::<_, TlsError>(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .dangerous()
                    .with_custom_certificate_verifier(v)
                    .with_no_client_auth(),
            )
        })
        .transpose()?;
    Ok(TlsSetup { mode: pg, config })
}

fn roots(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::BadCa {
            detail: format!("not a PEM certificate: {e}"),
        })?;
        store.add(cert).map_err(|e| TlsError::BadCa {
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    if store.is_empty() {
        return Err(TlsError::BadCa {
            detail: "no certificate found (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(store)
}

fn webpki(roots: RootCertStore) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::BadCa {
            detail: e.to_string(),
        })
}

/// `verify-ca`: the chain must lead to the CA; the name in the certificate is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: encrypted, but anyone's certificate is accepted (as
/// libpq does); the handshake signature is still checked.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl AnyCertificate {
    fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_need_what_libpq_needs() {
        use tokio_postgres::config::SslMode as Pg;
        let ok = |mode| setup(mode, None).map(|s| (s.mode, s.config.is_some()));
        assert!(matches!(ok(SslMode::Disable), Ok((Pg::Disable, false))));
        assert!(matches!(ok(SslMode::Prefer), Ok((Pg::Prefer, true))));
        assert!(matches!(ok(SslMode::Require), Ok((Pg::Require, true))));
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = setup(mode, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("a CA certificate is required"), "{err}");
        }
    }

    #[test]
    fn a_ca_that_is_not_a_certificate_is_named() {
        for (pem, says) in [
            (&b"hello"[..], "no certificate found"),
            (
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                "PEM",
            ),
        ] {
            let err = setup(SslMode::VerifyFull, Some(pem))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(says), "{err}");
        }
    }
}
