//! Typed, layered settings: built-in defaults, then a TOML file, then `TESSERA_*` environment
//! variables (`__` separates sections, e.g. `TESSERA_SERVER__BIND`) and `DATABASE_URL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
}

impl ConfigError {
    fn invalid(setting: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.to_owned(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The raw, serde-facing shape; `Settings::load` validates it into `Settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawSettings {
    server: RawServer,
    database: RawDatabase,
    log: RawLog,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawServer {
    bind: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    tls_min_version: TlsVersion,
    request_timeout_ms: u64,
    body_limit_bytes: usize,
    shutdown_timeout_s: u64,
    workers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawDatabase {
    url: Option<String>,
    max_connections: u32,
    connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawLog {
    format: LogFormat,
    filter: String,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            server: RawServer {
                bind: "127.0.0.1:8443".to_owned(),
                cert: None,
                key: None,
                client_ca: None,
                tls_min_version: TlsVersion::Tls13,
                request_timeout_ms: 5_000,
                body_limit_bytes: 64 * 1024,
                shutdown_timeout_s: 30,
                workers: 0,
            },
            database: RawDatabase {
                url: None,
                max_connections: 16,
                connect_timeout_ms: 2_000,
            },
            log: RawLog {
                format: LogFormat::Human,
                filter: "info".to_owned(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub tls: TlsFiles,
    pub tls_min_version: TlsVersion,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Zero means one worker per core.
    pub workers: usize,
}

/// PEM files for the server identity and the CAs that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

/// Values that `dev` fills in before validation when the operator did not set them.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    pub tls: Option<TlsFiles>,
    pub database_url: Option<SecretString>,
}

impl Settings {
    /// Loads and validates settings for production: nothing is provisioned.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, Provisioned::default())
    }

    pub fn load_with(file: Option<&Path>, provisioned: Provisioned) -> Result<Self, ConfigError> {
        let raw = Self::layered(file)?;
        Self::validate(raw, provisioned)
    }

    /// The database URL the layers name, if any, before validation; `dev` uses it to decide
    /// whether it must find or start a database.
    pub fn configured_database_url(file: Option<&Path>) -> Result<Option<String>, ConfigError> {
        Ok(Self::layered(file)?.database.url)
    }

    /// Only the database settings, for commands that need nothing else (`migrate`).
    pub fn load_database(file: Option<&Path>) -> Result<DatabaseSettings, ConfigError> {
        validate_database(Self::layered(file)?.database, None)
    }

    fn layered(file: Option<&Path>) -> Result<RawSettings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawSettings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "not found or not a regular file".to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("TESSERA_").split("__")).merge(
            Env::raw()
                .only(&["DATABASE_URL"])
                .map(|_| "database.url".into()),
        );
        figment.extract().map_err(|error| {
            let setting = error.path.join(".");
            ConfigError::invalid(
                if setting.is_empty() {
                    "<root>"
                } else {
                    &setting
                },
                error.kind.to_string(),
            )
        })
    }

    fn validate(raw: RawSettings, provisioned: Provisioned) -> Result<Self, ConfigError> {
        let bind = parse_bind(&raw.server.bind)?;
        let tls = match (raw.server.cert, raw.server.key, raw.server.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => TlsFiles {
                cert,
                key,
                client_ca,
            },
            (cert, key, client_ca) => match provisioned.tls {
                Some(files) => TlsFiles {
                    cert: cert.unwrap_or(files.cert),
                    key: key.unwrap_or(files.key),
                    client_ca: client_ca.unwrap_or(files.client_ca),
                },
                None => {
                    let missing = if cert.is_none() {
                        "server.cert"
                    } else if key.is_none() {
                        "server.key"
                    } else {
                        "server.client_ca"
                    };
                    return Err(ConfigError::invalid(missing, "is required"));
                }
            },
        };
        for (setting, path) in [
            ("server.cert", &tls.cert),
            ("server.key", &tls.key),
            ("server.client_ca", &tls.client_ca),
        ] {
            std::fs::File::open(path).map_err(|error| {
                ConfigError::invalid(setting, format!("cannot read {}: {error}", path.display()))
            })?;
        }
        if raw.server.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.request_timeout_ms",
                "must be greater than zero",
            ));
        }
        if raw.server.body_limit_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.body_limit_bytes",
                "must be greater than zero",
            ));
        }
        let database = validate_database(raw.database, provisioned.database_url)?;
        Ok(Self {
            server: ServerSettings {
                bind,
                tls,
                tls_min_version: raw.server.tls_min_version,
                request_timeout: Duration::from_millis(raw.server.request_timeout_ms),
                body_limit_bytes: raw.server.body_limit_bytes,
                shutdown_timeout: Duration::from_secs(raw.server.shutdown_timeout_s),
                workers: raw.server.workers,
            },
            database,
            log: LogSettings {
                format: raw.log.format,
                filter: raw.log.filter,
            },
        })
    }
}

fn validate_database(
    raw: RawDatabase,
    provisioned_url: Option<SecretString>,
) -> Result<DatabaseSettings, ConfigError> {
    let url = match raw.url {
        Some(url) => SecretString::from(url),
        None => provisioned_url.ok_or_else(|| {
            ConfigError::invalid("database.url", "is required (or set DATABASE_URL)")
        })?,
    };
    if raw.max_connections == 0 {
        return Err(ConfigError::invalid(
            "database.max_connections",
            "must be greater than zero",
        ));
    }
    Ok(DatabaseSettings {
        url,
        max_connections: raw.max_connections,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
    })
}

fn parse_bind(value: &str) -> Result<SocketAddr, ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::invalid("server.bind", "expected HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| {
        ConfigError::invalid(
            "server.bind",
            format!("invalid port `{port}` (expected 0-65535)"),
        )
    })?;
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| ConfigError::invalid("server.bind", format!("invalid address `{host}`")))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_rejects_out_of_range_port_naming_the_setting() {
        let error = parse_bind("127.0.0.1:70000").err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("setting `server.bind`: invalid port `70000` (expected 0-65535)")
        );
    }

    #[test]
    fn bind_accepts_ipv6() {
        assert_eq!(
            parse_bind("[::1]:8443").ok(),
            Some("[::1]:8443".parse().unwrap_or_else(|_| unreachable!()))
        );
    }
}
