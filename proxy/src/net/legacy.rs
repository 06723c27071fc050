//! The relay's connections to legacy (opened for each client session, which then runs its
//! own startup and authentication through them), and the CancelRequest that pgdual forwards
//! on a client's behalf.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::stream::{self, OpenError, ServerStream};
use crate::net::tls::{StartTlsError, TlsTarget};
use crate::proto::codec::put_cancel_request;

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
        f.write_str(&stream::display_addr(&self.host, self.port))
    }
}

impl LegacyTarget {
    /// Built by [`crate::net::endpoint::Endpoint::relay_target`].
    pub(crate) fn new(
        host: &str,
        port: u16,
        tls: TlsTarget,
        tls_config: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        LegacyTarget {
            host: host.to_string(),
            port,
            tls,
            tls_config,
        }
    }

    fn error(&self, reason: impl fmt::Display) -> LegacyError {
        LegacyError::Connect {
            addr: self.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Opens a connection to legacy, negotiating TLS as configured, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<ServerStream, LegacyError> {
        match tokio::time::timeout(timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(self.error(format!("timed out after {} ms", timeout.as_millis()))),
        }
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

    async fn connect_inner(&self) -> Result<ServerStream, LegacyError> {
        match stream::open(&self.host, self.port, &self.tls, self.tls_config.as_ref()).await {
            Ok(s) => Ok(s),
            Err(OpenError::Tls(StartTlsError::Refused(mode))) => Err(LegacyError::TlsRefused {
                addr: self.to_string(),
                mode: mode.as_str(),
            }),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Whether legacy accepts connections now (for `/readyz`).
    pub async fn reachable(&self, timeout: Duration) -> Result<(), LegacyError> {
        self.bounded(timeout, async {
            stream::open_plain(&self.host, self.port).await.map(drop)
        })
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
        let mut req = BytesMut::new();
        put_cancel_request(&mut req, pid, secret);
        self.bounded(timeout, async {
            let mut s = stream::open_plain(&self.host, self.port).await?;
            s.write_all(&req).await?;
            let _ = s.read_u8().await;
            Ok(())
        })
        .await
    }
}
