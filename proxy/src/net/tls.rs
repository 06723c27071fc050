//! TLS configuration: the certificate pgdual offers clients, and how pgdual checks the
//! certificates of legacy and new on every connection it opens to them (client sessions,
//! catalog checks, the mirror, reads): one rustls client config per (mode, CA), one SSLRequest
//! exchange. A bad PEM file is an error naming the file; a check is never silently skipped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use pgdual_config::{LegacyConfig, NewConfig, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::codec::put_ssl_request;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| invalid(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(path, "no PEM certificate found".into()));
    }
    Ok(certs)
}

fn invalid(path: &Path, message: String) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        message,
    }
}

/// The server side of client TLS, from a PEM certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(cert)?;
    let pem = read_pem(key)?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| invalid(key, e.to_string()))?
        .ok_or_else(|| invalid(key, "no PEM private key found".into()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| invalid(cert, e.to_string()))?;
    Ok(Arc::new(config))
}

/// The client side of TLS to a server, for `mode`: `None` for `disable`; for `verify-full`
/// the certificate chain is checked against `ca_file` and the name against the server name
/// given at connect time; `prefer` and `require` encrypt without a certificate check
/// (libpq's `sslmode=require`).
pub fn client_config(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: "tls".into(),
            message: e.to_string(),
        })?;
    let config = match mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::VerifyFull => {
            let path = ca_file.ok_or_else(|| TlsError::Invalid {
                path: "tls_ca_file".into(),
                message: "verify-full needs a CA file".into(),
            })?;
            let mut roots = RootCertStore::empty();
            for cert in certs(path)? {
                roots.add(cert).map_err(|e| invalid(path, e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// How pgdual reaches one server over TLS (`legacy.tls*` or `new.tls*`), as plain data: cheap
/// to compare and clone; [`TlsTarget::client_config`] builds rustls's side when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    pub mode: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// The name checked in the server's certificate (`tls_server_name`, default the host).
    pub server_name: String,
}

impl TlsTarget {
    pub fn legacy(c: &LegacyConfig) -> TlsTarget {
        TlsTarget {
            mode: c.tls,
            ca_file: c.tls_ca_file.clone(),
            server_name: c.tls_server_name.clone().unwrap_or_else(|| c.host.clone()),
        }
    }

    pub fn new_db(c: &NewConfig) -> TlsTarget {
        TlsTarget {
            mode: c.tls,
            ca_file: c.tls_ca_file.clone(),
            server_name: c.tls_server_name.clone().unwrap_or_else(|| c.host.clone()),
        }
    }

    /// Plaintext (Unix sockets, tests).
    pub fn disabled() -> TlsTarget {
        TlsTarget {
            mode: TlsMode::Disable,
            ca_file: None,
            server_name: String::new(),
        }
    }

    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        client_config(self.mode, self.ca_file.as_deref())
    }
}

/// A connection after the SSLRequest exchange.
pub enum Negotiated {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

#[derive(Debug, thiserror::Error)]
pub enum StartTlsError {
    #[error("the server refused TLS (tls = \"{}\")", .0.as_str())]
    Refused(TlsMode),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("unexpected answer {0:?} to SSLRequest")]
    Unexpected(char),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// Sends SSLRequest on a fresh connection (protocol 55.2.10) and runs the handshake when the
/// server answers `S`. A server answering `N` gets plaintext under `prefer` and a refusal
/// otherwise, as libpq's `sslmode` does.
pub async fn start_tls(
    mut tcp: TcpStream,
    mode: TlsMode,
    config: &Arc<ClientConfig>,
    server_name: &str,
) -> Result<Negotiated, StartTlsError> {
    let mut req = BytesMut::new();
    put_ssl_request(&mut req);
    tcp.write_all(&req).await?;
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if mode == TlsMode::Prefer => return Ok(Negotiated::Plain(tcp)),
        b'N' => return Err(StartTlsError::Refused(mode)),
        other => return Err(StartTlsError::Unexpected(other as char)),
    }
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| StartTlsError::ServerName(server_name.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(StartTlsError::Handshake)?;
    Ok(Negotiated::Tls(Box::new(tls)))
}

/// Accepts any certificate, as libpq's `require` does; signatures are still verified so the
/// handshake itself is sound.
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
