//! Validation: every problem of a configuration at once, each naming its field.

use std::net::SocketAddr;

use crate::{Config, ConfigError, Problem, TlsMode, MAX_POOL_MIN_IDLE, POSTGRES_MAX_MESSAGE_BYTES};

impl Config {
    /// Every problem with this configuration; empty when it is usable.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(Problem {
                field: field.into(),
                message,
            })
        };
        self.connection_problems(&mut bad);
        self.job_problems(&mut bad);
        self.identity_problems(&mut bad);
        self.surface_problems(&mut bad);
        out
    }

    /// Addresses, TLS and passwords of the listener, legacy and new.
    fn connection_problems(&self, bad: &mut impl FnMut(&str, String)) {
        if self.listen.parse::<SocketAddr>().is_err() {
            bad(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:6432", self.listen),
            );
        }
        if self.legacy.host.trim().is_empty() {
            bad("legacy.host", "must not be empty".into());
        }
        if self.legacy.port == 0 {
            bad("legacy.port", "must be between 1 and 65535".into());
        }
        let endpoints = [
            (
                "legacy",
                &self.legacy.host,
                self.legacy.tls,
                &self.legacy.tls_ca_file,
            ),
            ("new", &self.new.host, self.new.tls, &self.new.tls_ca_file),
        ];
        for (name, host, tls, ca_file) in endpoints {
            if tls == TlsMode::VerifyFull && ca_file.is_none() {
                bad(
                    &format!("{name}.tls_ca_file"),
                    format!("is required when {name}.tls = \"verify-full\""),
                );
            }
            if host.starts_with('/') && tls != TlsMode::Disable {
                bad(
                    &format!("{name}.tls"),
                    "TLS is not used over a Unix socket; set it to \"disable\"".into(),
                );
            }
        }
        let passwords = [
            ("legacy", &self.legacy.password, &self.legacy.password_file),
            ("new", &self.new.password, &self.new.password_file),
        ];
        for (name, password, file) in passwords {
            if password.is_some() && file.is_some() {
                bad(
                    &format!("{name}.password"),
                    format!("set either {name}.password or {name}.password_file, not both"),
                );
            }
        }
    }

    /// The read router and the mirror.
    fn job_problems(&self, bad: &mut impl FnMut(&str, String)) {
        if self.reads.timeout_ms == 0 {
            bad("reads.timeout_ms", "must be at least 1".into());
        }
        if self.reads.max_result_bytes == 0 {
            bad("reads.max_result_bytes", "must be at least 1".into());
        }
        if self.reads.shadow_concurrency == 0 {
            bad("reads.shadow_concurrency", "must be at least 1".into());
        }
        if self.reads.pool_min_idle > MAX_POOL_MIN_IDLE {
            bad(
                "reads.pool_min_idle",
                format!(
                    "must be at most {MAX_POOL_MIN_IDLE} (the idle connections a worker keeps)"
                ),
            );
        }
        let b = &self.backfill;
        for (field, value) in [
            ("backfill.target_chunk_ms", b.target_chunk_ms),
            ("backfill.concurrency", b.concurrency as u64),
            ("backfill.retry_initial_ms", b.retry_initial_ms),
            ("verify.chunk_rows", self.verify.chunk_rows as u64),
        ] {
            if value == 0 {
                bad(field, "must be at least 1".into());
            }
        }
        if !(b.max_latency_ratio == 0.0 || b.max_latency_ratio >= 1.0) {
            bad(
                "backfill.max_latency_ratio",
                "must be 0 (off) or at least 1".into(),
            );
        }
        if b.concurrency > 64 {
            bad("backfill.concurrency", "must be at most 64".into());
        }
        if b.retry_max_ms < b.retry_initial_ms {
            bad(
                "backfill.retry_max_ms",
                "must be at least backfill.retry_initial_ms".into(),
            );
        }
        for (field, name) in [
            ("mirror.slot", &self.mirror.slot),
            ("mirror.publication", &self.mirror.publication),
        ] {
            let plain = name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if name.is_empty() || name.len() > 63 || !plain {
                bad(
                    field,
                    format!("{name:?}: use 1 to 63 lower-case letters, digits and underscores"),
                );
            }
        }
        if self.mirror.batch_size == 0 {
            bad("mirror.batch_size", "must be at least 1".into());
        }
        if self.mirror.poll_interval_ms == 0 {
            bad("mirror.poll_interval_ms", "must be at least 1".into());
        }
        if self.mirror.retry_initial_ms == 0
            || self.mirror.retry_max_ms < self.mirror.retry_initial_ms
        {
            bad(
                "mirror.retry_max_ms",
                "must be at least mirror.retry_initial_ms, which must be at least 1".into(),
            );
        }
    }

    /// Who pgdual connects as, and where.
    fn identity_problems(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.new.host.is_empty() && self.new.port == 0 {
            bad("new.port", "must be between 1 and 65535".into());
        }
        for (field, value) in [
            ("legacy.user", &self.legacy.user),
            ("legacy.dbname", &self.legacy.dbname),
            ("new.user", &self.new.user),
            ("new.dbname", &self.new.dbname),
        ] {
            if value.trim().is_empty() {
                bad(field, "must not be empty".into());
            }
        }
    }

    /// Client TLS, the admin API, logging and limits.
    fn surface_problems(&self, bad: &mut impl FnMut(&str, String)) {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => bad("tls.key_file", "is required with tls.cert_file".into()),
            (None, Some(_)) => bad("tls.cert_file", "is required with tls.key_file".into()),
            _ => {}
        }
        if !self.admin.listen.is_empty() {
            match self.admin.listen.parse::<SocketAddr>() {
                Err(_) => bad(
                    "admin.listen",
                    format!(
                        "{:?} is not an address like 127.0.0.1:9187 (or \"\" to disable)",
                        self.admin.listen
                    ),
                ),
                Ok(addr) if !addr.ip().is_loopback() && self.admin.token.is_none() => bad(
                    "admin.token",
                    format!("is required because admin.listen {addr} is not a loopback address"),
                ),
                Ok(_) => {}
            }
        }
        if self.admin.token.as_deref() == Some("") {
            bad("admin.token", "must not be empty".into());
        }
        if self.log.level.trim().is_empty() {
            bad("log.level", "must not be empty".into());
        }
        if self.limits.max_message_bytes < 1024 {
            bad(
                "limits.max_message_bytes",
                "must be at least 1024".to_string(),
            );
        }
        if self.limits.max_message_bytes > POSTGRES_MAX_MESSAGE_BYTES {
            bad(
                "limits.max_message_bytes",
                format!("must be at most {POSTGRES_MAX_MESSAGE_BYTES} (PostgreSQL's limit)"),
            );
        }
        if self.limits.max_client_connections == 0 {
            bad("limits.max_client_connections", "must be at least 1".into());
        }
        if self.limits.connect_timeout_ms == 0 {
            bad("limits.connect_timeout_ms", "must be at least 1".into());
        }
    }

    /// `Ok` when usable, else every problem; `origin` names where the settings came from.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }
}
