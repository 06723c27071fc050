//! Connections to the legacy database: TCP or Unix socket, optionally TLS, and the
//! CancelRequest that pgdual forwards on a client's behalf.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgdual_config::LegacyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::net::stream::LegacyStream;
use crate::net::tls::{self, Negotiated, StartTlsError, TlsError, TlsTarget};
use crate::proto::codec::{put_initial, CANCEL_REQUEST_CODE};

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("could not connect to the legacy database at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the legacy database at {addr} refused TLS (legacy.tls = \"{mode}\")")]
    TlsRefused { addr: String, mode: &'static str },
}

/// Where legacy is and how to talk to it; built once from the config.
#[derive(Clone)]
pub struct LegacyTarget {
    host: String,
    port: u16,
    tls: TlsTarget,
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Display for LegacyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.socket_path() {
            Some(p) => write!(f, "{}", p.display()),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl LegacyTarget {
    pub fn new(cfg: &LegacyConfig) -> Result<Self, TlsError> {
        let tls = TlsTarget::legacy(cfg);
        Ok(LegacyTarget {
            host: cfg.host.clone(),
            port: cfg.port,
            tls_config: tls.client_config()?,
            tls,
        })
    }

    fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    fn error(&self, reason: impl fmt::Display) -> LegacyError {
        LegacyError::Connect {
            addr: self.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Opens a connection to legacy, negotiating TLS as configured, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<LegacyStream, LegacyError> {
        match tokio::time::timeout(timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(self.error(format!("timed out after {} ms", timeout.as_millis()))),
        }
    }

    /// A plain connection: the Unix socket, or TCP with Nagle off.
    async fn open(&self) -> std::io::Result<LegacyStream> {
        if let Some(path) = self.socket_path() {
            return Ok(LegacyStream::Unix(UnixStream::connect(&path).await?));
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        Ok(LegacyStream::Tcp(tcp))
    }

    /// Runs `f` within `timeout`, naming legacy in any failure.
    async fn bounded<T>(
        &self,
        timeout: Duration,
        f: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> Result<T, LegacyError> {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.error(format!("timed out after {} ms", timeout.as_millis()))),
        }
    }

    async fn connect_inner(&self) -> Result<LegacyStream, LegacyError> {
        let tcp = match self.open().await.map_err(|e| self.error(e))? {
            LegacyStream::Tcp(tcp) => tcp,
            other => return Ok(other),
        };
        let Some(config) = &self.tls_config else {
            return Ok(LegacyStream::Tcp(tcp));
        };
        match tls::start_tls(tcp, self.tls.mode, config, &self.tls.server_name).await {
            Ok(Negotiated::Plain(tcp)) => Ok(LegacyStream::Tcp(tcp)),
            Ok(Negotiated::Tls(tls)) => Ok(LegacyStream::Tls(tls)),
            Err(StartTlsError::Refused(mode)) => Err(LegacyError::TlsRefused {
                addr: self.to_string(),
                mode: mode.as_str(),
            }),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Whether legacy accepts connections now (for `/readyz`).
    pub async fn reachable(&self, timeout: Duration) -> Result<(), LegacyError> {
        self.bounded(timeout, async { self.open().await.map(drop) })
            .await
    }

    /// Sends a CancelRequest for legacy's backend `pid` with its `secret` key
    /// (protocol 55.2.8). Legacy answers nothing; it closes the connection.
    pub async fn cancel(
        &self,
        pid: i32,
        secret: &[u8],
        timeout: Duration,
    ) -> Result<(), LegacyError> {
        let mut body = BytesMut::new();
        body.extend_from_slice(&pid.to_be_bytes());
        body.extend_from_slice(secret);
        let mut req = BytesMut::new();
        put_initial(&mut req, CANCEL_REQUEST_CODE, &body);
        self.bounded(timeout, async {
            let mut s = self.open().await?;
            s.write_all(&req).await?;
            let _ = s.read_u8().await;
            Ok(())
        })
        .await
    }
}
