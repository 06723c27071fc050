//! One database pgdual connects to (legacy or new), built once from its config section, and
//! every way of connecting to it: the relay's raw stream ([`LegacyTarget`]), pooled protocol
//! connections for reads ([`Target`]) and tokio-postgres clients for the control plane
//! ([`Endpoint::client`]). TLS, timeouts and credentials are settled here, once.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgdual_config::{Config, LegacyConfig, NewConfig, TlsMode};
use rustls::ClientConfig;
use tokio_postgres::{Client, NoTls};

use crate::net::conn::{BackendConn, Target};
use crate::net::legacy::LegacyTarget;
use crate::net::postgres_tls::MakeRustls;
use crate::net::tls::{TlsError, TlsTarget};

/// How long pgdual's own control-plane connections may take to open.
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one database is and as whom pgdual connects to it.
#[derive(Clone)]
pub struct Endpoint {
    /// `legacy` or `new`: names the endpoint (and its config section) in errors.
    pub name: &'static str,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// Read at each control-plane connect when set, so a rotated file is picked up.
    pub password_file: Option<PathBuf>,
    pub dbname: String,
    pub tls: TlsTarget,
    /// rustls's side of `tls`, built once (`None`: plaintext).
    tls_config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls.mode)
            .finish()
    }
}

impl Endpoint {
    /// Legacy, from `[legacy]`.
    pub fn legacy(c: &LegacyConfig) -> Result<Endpoint, TlsError> {
        Endpoint::build(
            "legacy",
            (&c.host, c.port, &c.user, &c.dbname),
            (&c.password, &c.password_file),
            TlsTarget::legacy(c),
        )
    }

    /// New, from `[new]`; `None` when no new database is configured.
    pub fn new_db(c: &NewConfig) -> Result<Option<Endpoint>, TlsError> {
        if c.host.is_empty() {
            return Ok(None);
        }
        Endpoint::build(
            "new",
            (&c.host, c.port, &c.user, &c.dbname),
            (&c.password, &c.password_file),
            TlsTarget::new_db(c),
        )
        .map(Some)
    }

    fn build(
        name: &'static str,
        (host, port, user, dbname): (&str, u16, &str, &str),
        (password, password_file): (&Option<String>, &Option<PathBuf>),
        tls: TlsTarget,
    ) -> Result<Endpoint, TlsError> {
        Ok(Endpoint {
            name,
            host: host.to_string(),
            port,
            user: user.to_string(),
            password: password.clone(),
            password_file: password_file.clone(),
            dbname: dbname.to_string(),
            tls_config: tls.client_config()?,
            tls,
        })
    }

    /// The relay's raw connections (and CancelRequests) to this server.
    pub fn relay_target(&self) -> LegacyTarget {
        LegacyTarget::new(
            &self.host,
            self.port,
            self.tls.clone(),
            self.tls_config.clone(),
        )
    }

    /// Pooled protocol connections as pgdual's own role, opened within `connect_timeout`.
    pub fn target(&self, connect_timeout: Duration) -> Target {
        Target {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: self.dbname.clone(),
            tls: self.tls.clone(),
            tls_config: self.tls_config.clone(),
            connect_timeout,
        }
    }

    /// A tokio-postgres client as pgdual's own role, over TCP with TLS as configured
    /// (libpq's `sslmode` meanings) or a Unix socket. Errors name the endpoint and the role.
    pub async fn client(&self) -> Result<Client, String> {
        let password = match &self.password_file {
            Some(path) => pgdual_config::read_password_file(path)
                .map(|(p, _)| Some(p))
                .map_err(|e| format!("{}.password_file: {e}", self.name))?,
            None => self.password.clone(),
        };
        self.connect_client(password.as_deref()).await.map_err(|e| {
            format!(
                "cannot connect to {} at {}:{} as {}: {e}",
                self.name, self.host, self.port, self.user
            )
        })
    }

    /// A raw protocol session as pgdual's own role, with more startup parameters (a
    /// replication session: `replication=database`). Errors name the endpoint and the role.
    pub async fn raw_session(&self, params: &[(&str, &str)]) -> Result<BackendConn, String> {
        let mut target = self.target(CLIENT_CONNECT_TIMEOUT);
        if let Some(path) = &self.password_file {
            target.password = Some(
                pgdual_config::read_password_file(path)
                    .map(|(p, _)| p)
                    .map_err(|e| format!("{}.password_file: {e}", self.name))?,
            );
        }
        BackendConn::connect_with(&target, params)
            .await
            .map_err(|e| {
                format!(
                    "cannot open a session on {} at {}:{} as {}: {e}",
                    self.name, self.host, self.port, self.user
                )
            })
    }

    async fn connect_client(&self, password: Option<&str>) -> Result<Client, String> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname);
        cfg.connect_timeout(CLIENT_CONNECT_TIMEOUT);
        cfg.application_name("pgdual");
        if let Some(p) = password {
            cfg.password(p);
        }
        match &self.tls_config {
            None => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, conn) = cfg.connect(NoTls).await.map_err(|e| with_causes(&e))?;
                spawn_connection(conn);
                Ok(client)
            }
            Some(config) => {
                cfg.ssl_mode(match self.tls.mode {
                    TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                    _ => tokio_postgres::config::SslMode::Require,
                });
                let make = MakeRustls::new(config.clone(), Some(self.tls.server_name.clone()));
                let (client, conn) = cfg.connect(make).await.map_err(|e| with_causes(&e))?;
                spawn_connection(conn);
                Ok(client)
            }
        }
    }
}

/// Legacy and, when configured, new.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub legacy: Endpoint,
    pub new: Option<Endpoint>,
}

impl Endpoints {
    pub fn from_config(config: &Config) -> Result<Endpoints, TlsError> {
        Ok(Endpoints {
            legacy: Endpoint::legacy(&config.legacy)?,
            new: Endpoint::new_db(&config.new)?,
        })
    }

    /// Control-plane clients of legacy and (when configured) new.
    pub async fn clients(&self) -> Result<(Client, Option<Client>), String> {
        let legacy = self.legacy.client().await?;
        let new = match &self.new {
            None => None,
            Some(n) => Some(n.client().await?),
        };
        Ok((legacy, new))
    }
}

/// tokio-postgres's message and each cause under it ("error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer"): its own message alone says too little.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

fn spawn_connection<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control-plane connection closed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_and_new_is_optional() {
        let mut config = Config::default();
        config.legacy.password = Some("secret".into());
        let e = Endpoints::from_config(&config).unwrap();
        assert!(!format!("{e:?}").contains("secret"));
        assert!(e.new.is_none(), "no [new] host, no new endpoint");
        config.new.host = "127.0.0.1".into();
        assert_eq!(
            Endpoints::from_config(&config).unwrap().new.unwrap().name,
            "new"
        );
    }
}
