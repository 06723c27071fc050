//! Where settings come from: the TOML file, `PGDUAL_*` environment overrides and flags (by
//! dotted field name), and the password files the settings name.

use std::path::{Path, PathBuf};

use crate::{Config, ConfigError, Problem};

/// Environment variables that override file settings, and the field each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PGDUAL_LISTEN", "listen"),
    ("PGDUAL_WORKERS", "workers"),
    ("PGDUAL_LEGACY_HOST", "legacy.host"),
    ("PGDUAL_LEGACY_PORT", "legacy.port"),
    ("PGDUAL_LEGACY_TLS", "legacy.tls"),
    ("PGDUAL_LEGACY_TLS_CA_FILE", "legacy.tls_ca_file"),
    ("PGDUAL_LEGACY_TLS_SERVER_NAME", "legacy.tls_server_name"),
    ("PGDUAL_LEGACY_USER", "legacy.user"),
    ("PGDUAL_LEGACY_PASSWORD", "legacy.password"),
    ("PGDUAL_LEGACY_PASSWORD_FILE", "legacy.password_file"),
    ("PGDUAL_LEGACY_DBNAME", "legacy.dbname"),
    ("PGDUAL_NEW_HOST", "new.host"),
    ("PGDUAL_NEW_PORT", "new.port"),
    ("PGDUAL_NEW_TLS", "new.tls"),
    ("PGDUAL_NEW_TLS_CA_FILE", "new.tls_ca_file"),
    ("PGDUAL_NEW_TLS_SERVER_NAME", "new.tls_server_name"),
    ("PGDUAL_NEW_USER", "new.user"),
    ("PGDUAL_NEW_PASSWORD", "new.password"),
    ("PGDUAL_NEW_PASSWORD_FILE", "new.password_file"),
    ("PGDUAL_NEW_DBNAME", "new.dbname"),
    ("PGDUAL_RULES_FILE", "rules_file"),
    ("PGDUAL_ADMIN_LISTEN", "admin.listen"),
    ("PGDUAL_ADMIN_TOKEN", "admin.token"),
    ("PGDUAL_LOG_LEVEL", "log.level"),
    ("PGDUAL_LOG_FORMAT", "log.format"),
    ("PGDUAL_MAX_MESSAGE_BYTES", "limits.max_message_bytes"),
    (
        "PGDUAL_MAX_CLIENT_CONNECTIONS",
        "limits.max_client_connections",
    ),
    ("PGDUAL_CONNECT_TIMEOUT_MS", "limits.connect_timeout_ms"),
    ("PGDUAL_DRAIN_TIMEOUT_MS", "limits.drain_timeout_ms"),
];

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Reads and parses a file without validating it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Sets a field by its dotted name from a string, as env vars and CLI flags do.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), Problem> {
        let bad = |what: &str| Problem {
            field: field.to_string(),
            message: format!("{value:?} is not {what}"),
        };
        let num = |what| value.trim().parse::<u64>().map_err(|_| bad(what));
        match field {
            "listen" => self.listen = value.to_string(),
            "workers" => self.workers = num("a number")? as usize,
            "legacy.host" => self.legacy.host = value.to_string(),
            "legacy.port" => self.legacy.port = value.trim().parse().map_err(|_| bad("a port"))?,
            "legacy.tls" | "new.tls" => {
                let mode = from_name(value)
                    .ok_or_else(|| bad("one of disable, prefer, require, verify-full"))?;
                match field {
                    "legacy.tls" => self.legacy.tls = mode,
                    _ => self.new.tls = mode,
                }
            }
            "legacy.tls_ca_file" => self.legacy.tls_ca_file = Some(PathBuf::from(value)),
            "legacy.tls_server_name" => self.legacy.tls_server_name = Some(value.to_string()),
            "legacy.user" => self.legacy.user = value.to_string(),
            "legacy.password" => self.legacy.password = Some(value.to_string()),
            "legacy.password_file" => self.legacy.password_file = Some(PathBuf::from(value)),
            "legacy.dbname" => self.legacy.dbname = value.to_string(),
            "new.host" => self.new.host = value.to_string(),
            "new.port" => self.new.port = value.trim().parse().map_err(|_| bad("a port"))?,
            "new.tls_ca_file" => self.new.tls_ca_file = Some(PathBuf::from(value)),
            "new.tls_server_name" => self.new.tls_server_name = Some(value.to_string()),
            "new.user" => self.new.user = value.to_string(),
            "new.password" => self.new.password = Some(value.to_string()),
            "new.password_file" => self.new.password_file = Some(PathBuf::from(value)),
            "new.dbname" => self.new.dbname = value.to_string(),
            "rules_file" => self.rules_file = Some(PathBuf::from(value)),
            "admin.listen" => self.admin.listen = value.to_string(),
            "admin.token" => self.admin.token = Some(value.to_string()),
            "log.level" => self.log.level = value.to_string(),
            "log.format" => {
                self.log.format = from_name(value).ok_or_else(|| bad("one of text, json"))?
            }
            "limits.max_message_bytes" => self.limits.max_message_bytes = num("a byte count")?,
            "limits.max_client_connections" => {
                self.limits.max_client_connections = num("a number")? as usize
            }
            "limits.connect_timeout_ms" => self.limits.connect_timeout_ms = num("milliseconds")?,
            "limits.drain_timeout_ms" => self.limits.drain_timeout_ms = num("milliseconds")?,
            _ => {
                return Err(Problem {
                    field: field.to_string(),
                    message: "no such setting".into(),
                })
            }
        }
        Ok(())
    }

    /// Applies `PGDUAL_*` overrides from the given environment; returns the bad ones.
    pub fn apply_env<I, K, V>(&mut self, vars: I) -> Vec<Problem>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut problems = Vec::new();
        for (k, v) in vars {
            if let Some((_, field)) = ENV_OVERRIDES.iter().find(|(name, _)| *name == k.as_ref()) {
                if let Err(mut p) = self.set(field, v.as_ref()) {
                    p.field = format!("{} (from {})", p.field, k.as_ref());
                    problems.push(p);
                }
            }
        }
        problems
    }

    /// Reads each `password_file` into its `password` and clears the file setting, so that
    /// connections look at `password` alone. Call after validation (which refuses both set).
    /// A trailing newline is trimmed; an unreadable or empty file is a problem naming its
    /// field. Returns warnings: a file that group or others may read is used (secrets mounted
    /// by Kubernetes or Docker are 0644 or 0444 by default) but reported.
    pub fn read_password_files(&mut self, origin: &str) -> Result<Vec<String>, ConfigError> {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        let endpoints = [
            (
                "legacy",
                &mut self.legacy.password,
                &mut self.legacy.password_file,
            ),
            ("new", &mut self.new.password, &mut self.new.password_file),
        ];
        for (name, password, file) in endpoints {
            let Some(path) = file.take() else { continue };
            let field = format!("{name}.password_file");
            match read_password_file(&path) {
                Ok((secret, warning)) => {
                    *password = Some(secret);
                    warnings.extend(warning.map(|w| format!("{field}: {w}")));
                }
                Err(message) => problems.push(Problem { field, message }),
            }
        }
        if problems.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }
}

/// A password file's content without its trailing newline, and a warning when group or
/// others may read it; an error says which file and why, never what it holds.
pub fn read_password_file(path: &Path) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let mut warning = None;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
        if mode & 0o044 != 0 {
            warning = Some(format!(
                "{} may be read by group or others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    Ok((secret.to_string(), warning))
}

/// An enum setting from its name as the file spells it (the same serde names), for flags and
/// environment overrides.
fn from_name<T: serde::de::DeserializeOwned>(value: &str) -> Option<T> {
    use serde::de::IntoDeserializer;
    let name: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        value.into_deserializer();
    T::deserialize(name).ok()
}
