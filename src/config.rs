//! Typed, layered settings: built-in defaults, then a TOML file, then `TESSERA_*` environment
//! variables (`__` separates sections, e.g. `TESSERA_SERVER__BIND`) and `DATABASE_URL`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{SecretBox, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
    #[error("unknown setting `{setting}` ({origin})")]
    Unknown { setting: String, origin: String },
    #[error("{} problems in the settings:\n  {}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
}

fn list(problems: &[ConfigError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl ConfigError {
    fn invalid(setting: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Collects every problem in the settings, so that one run names them all.
#[derive(Debug, Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn push(&mut self, problem: ConfigError) {
        match problem {
            ConfigError::Several(problems) => self.0.extend(problems),
            problem => self.0.push(problem),
        }
    }

    fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|problem| self.push(problem)).ok()
    }

    fn finish(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Several(self.0)),
        }
    }

    /// The problems as one error; only called once a check has failed.
    fn into_error(self) -> ConfigError {
        match self.finish() {
            Err(problem) => problem,
            Ok(()) => ConfigError::invalid("<root>", "invalid settings"),
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
    tokens: RawTokens,
    keys: RawKeys,
    registry: RawRegistry,
    audit: RawAudit,
    policy: RawPolicy,
    exchange: RawExchange,
    trust: RawTrust,
    admin: RawAdmin,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawAdmin {
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawPolicy {
    dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawTrust {
    jwks_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawExchange {
    max_delegation_depth: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawTokens {
    issuer: Option<String>,
    default_lifetime_s: u32,
    max_lifetime_s: u32,
}

#[derive(Clone, Serialize, Deserialize)]
struct RawKeys {
    algorithm: SigningAlgorithm,
    kek_id: Option<String>,
    kek: Option<String>,
    /// Older key-encryption keys by id, only to unwrap keys not yet re-wrapped.
    previous_keks: BTreeMap<String, String>,
    rotation_interval_s: u64,
    refresh_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawRegistry {
    cache_ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawAudit {
    enabled: bool,
    batch_max: usize,
    checkpoint_every_records: i64,
    checkpoint_interval_s: u64,
    retention_days: u32,
    wait_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawServer {
    bind: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_crls: Vec<PathBuf>,
    tls_min_version: TlsVersion,
    request_timeout_ms: u64,
    body_limit_bytes: usize,
    shutdown_timeout_s: u64,
    workers: usize,
    ops_bind: Option<String>,
    tls_handshake_timeout_ms: u64,
    max_connections_per_address: usize,
}

#[derive(Clone, Serialize, Deserialize)]
struct RawDatabase {
    url: Option<String>,
    max_connections: u32,
    connect_timeout_ms: u64,
}

/// Key material and the database URL (which may carry a password) never go into `Debug`.
impl std::fmt::Debug for RawKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKeys")
            .field("algorithm", &self.algorithm)
            .field("kek_id", &self.kek_id)
            .field("previous_kek_ids", &self.previous_keks.keys())
            .field("rotation_interval_s", &self.rotation_interval_s)
            .field("refresh_interval_ms", &self.refresh_interval_ms)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RawDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDatabase")
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawLog {
    format: LogFormat,
    filter: String,
    otlp_endpoint: Option<String>,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            server: RawServer {
                bind: "127.0.0.1:8443".to_owned(),
                cert: None,
                key: None,
                client_ca: None,
                client_crls: Vec::new(),
                tls_min_version: TlsVersion::Tls13,
                request_timeout_ms: 5_000,
                body_limit_bytes: 64 * 1024,
                shutdown_timeout_s: 30,
                workers: 0,
                ops_bind: None,
                tls_handshake_timeout_ms: 3_000,
                max_connections_per_address: 256,
            },
            database: RawDatabase {
                url: None,
                max_connections: 16,
                connect_timeout_ms: 2_000,
            },
            log: RawLog {
                format: LogFormat::Human,
                filter: "info".to_owned(),
                otlp_endpoint: None,
            },
            tokens: RawTokens {
                issuer: None,
                default_lifetime_s: 300,
                max_lifetime_s: 3600,
            },
            keys: RawKeys {
                algorithm: SigningAlgorithm::Es256,
                kek_id: None,
                kek: None,
                previous_keks: BTreeMap::new(),
                rotation_interval_s: 7 * 24 * 3600,
                refresh_interval_ms: 2_000,
            },
            registry: RawRegistry {
                cache_ttl_ms: 2_000,
            },
            policy: RawPolicy {
                dir: PathBuf::from("policies"),
            },
            exchange: RawExchange {
                max_delegation_depth: 3,
            },
            trust: RawTrust::default(),
            admin: RawAdmin::default(),
            audit: RawAudit {
                enabled: true,
                batch_max: 512,
                checkpoint_every_records: 10_000,
                checkpoint_interval_s: 60,
                retention_days: 2_557,
                wait_timeout_ms: 5_000,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub tokens: TokenSettings,
    pub keys: KeySettings,
    pub registry: RegistrySettings,
    pub audit: AuditSettings,
    /// The directory holding `schema.cedarschema`, `*.cedar` and `tests/`.
    pub policy_dir: PathBuf,
    /// Most actors in a token's `act` chain.
    pub max_delegation_depth: u32,
    /// CA bundle for fetching partners' `jwks_uri` over HTTPS; the platform's roots when unset.
    pub jwks_ca_file: Option<PathBuf>,
    /// The operator's admin trust anchor (`admin.client_ca`): the only CA whose certificates
    /// may identify admins; without it the admin API accepts nobody.
    pub admin_client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The issuer identifier (RFC 8414): `iss` of every token and the `aud` client assertions name.
    pub issuer: String,
    pub default_lifetime: Duration,
    /// No token lives longer, whatever the caps; retired keys stay published this long.
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "PS256")]
    Ps256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Ps256 => "PS256",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Es256, Self::EdDsa, Self::Ps256]
            .into_iter()
            .find(|alg| alg.as_str() == value)
    }
}

/// A key-encryption key: wraps the data keys that seal signing keys at rest.
#[derive(Clone)]
pub struct Kek {
    pub id: String,
    pub key: std::sync::Arc<SecretBox<[u8; 32]>>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    pub fn parse(setting: &str, id: &str, base64_key: &str) -> Result<Self, ConfigError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_key.trim())
            .map_err(|_| ConfigError::invalid(setting, "must be base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ConfigError::invalid(setting, "must decode to exactly 32 bytes"))?;
        if id.is_empty() {
            return Err(ConfigError::invalid("keys.kek_id", "must not be empty"));
        }
        Ok(Self {
            id: id.to_owned(),
            key: std::sync::Arc::new(SecretBox::new(Box::new(key))),
        })
    }
}

#[derive(Debug, Clone)]
pub struct KeySettings {
    pub algorithm: SigningAlgorithm,
    pub kek: Kek,
    pub previous_keks: Vec<Kek>,
    /// Zero disables scheduled rotation (`tessera keys rotate` still works).
    pub rotation_interval: Duration,
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// How long a node may serve a cached client or audience; suspensions take effect within it.
    pub cache_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Off only for benchmarking the cost of the audit trail; never in production.
    pub enabled: bool,
    pub batch_max: usize,
    pub checkpoint_every_records: i64,
    pub checkpoint_interval: Duration,
    /// Records older than this may be pruned (after export), down to a checkpoint.
    pub retention: Duration,
    /// Longest a request waits for its record to commit before it is answered 503.
    pub wait_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub tls: TlsFiles,
    /// CRLs (PEM or DER files) for client certificates, re-read while running.
    pub client_crls: Vec<PathBuf>,
    pub tls_min_version: TlsVersion,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Zero means one worker per core.
    pub workers: usize,
    /// A separate plain-HTTP listener for `/metrics`, `/healthz` and `/readyz`; `/metrics`
    /// then leaves the partner-facing port.
    pub ops_bind: Option<SocketAddr>,
    /// A connection must finish its TLS handshake within this, or it is closed.
    pub tls_handshake_timeout: Duration,
    /// Open connections from one source address beyond this are closed as they arrive.
    pub max_connections_per_address: usize,
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
    /// Base URL of an OTLP/HTTP collector; traces go to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
}

/// The settings of the key and audit commands (see [`Settings::load_operator`]).
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    pub database: DatabaseSettings,
    pub keys: KeySettings,
    pub audit: AuditSettings,
    /// No token lives longer; retired keys stay published this long.
    pub max_token_lifetime: Duration,
}

/// Values that `dev` fills in before validation when the operator did not set them.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    pub tls: Option<TlsFiles>,
    pub database_url: Option<SecretString>,
    pub issuer: Option<String>,
    pub kek: Option<Kek>,
}

impl Settings {
    /// Loads and validates settings for production: nothing is provisioned.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, Provisioned::default())
    }

    pub fn load_with(file: Option<&Path>, provisioned: Provisioned) -> Result<Self, ConfigError> {
        Self::loaded(file, |raw| Self::validate(raw, provisioned))
    }

    /// Reads the layers and validates them, reporting the problems of both in one error.
    fn loaded<T>(
        file: Option<&Path>,
        validate: impl FnOnce(RawSettings) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        let (raw, mut problems) = Self::layered(file)?;
        match problems.check(validate(raw)) {
            Some(validated) => problems.finish().map(|()| validated),
            None => Err(problems.into_error()),
        }
    }

    /// The database URL the layers name, if any, before validation; `dev` uses it to decide
    /// whether it must find or start a database.
    pub fn configured_database_url(file: Option<&Path>) -> Result<Option<String>, ConfigError> {
        Self::loaded(file, |raw| Ok(raw.database.url))
    }

    /// The port of the configured listen address, before validation (`dev` derives its
    /// issuer from it).
    pub fn configured_port(file: Option<&Path>) -> Result<u16, ConfigError> {
        Self::loaded(file, |raw| Ok(parse_bind(&raw.server.bind)?.port()))
    }

    /// Only the database settings, for commands that need nothing else (`migrate`).
    pub fn load_database(file: Option<&Path>) -> Result<DatabaseSettings, ConfigError> {
        Self::loaded(file, |raw| validate_database(raw.database, None))
    }

    /// The database and audit settings, for verifying the trail against pinned audit keys
    /// (`audit verify --key`): no key-encryption key, no server files.
    pub fn load_audit(
        file: Option<&Path>,
    ) -> Result<(DatabaseSettings, AuditSettings), ConfigError> {
        Self::loaded(file, |raw| {
            let mut problems = Problems::default();
            let database = problems.check(validate_database(raw.database, None));
            let audit = problems.check(validate_audit(&raw.audit));
            match (database, audit) {
                (Some(database), Some(audit)) => Ok((database, audit)),
                _ => Err(problems.into_error()),
            }
        })
    }

    /// What operations on stored keys and the audit trail need (`keys`, `audit`): the
    /// database, the key-encryption keys, the audit settings and the token lifetimes; no TLS
    /// files and no issuer.
    pub fn load_operator(file: Option<&Path>) -> Result<OperatorSettings, ConfigError> {
        Self::loaded(file, |raw| {
            let mut problems = Problems::default();
            let database = problems.check(validate_database(raw.database, None));
            let keys = problems.check(validate_keys(raw.keys, None));
            let audit = problems.check(validate_audit(&raw.audit));
            let lifetimes = problems.check(validate_lifetimes(&raw.tokens));
            match (database, keys, audit, lifetimes) {
                (Some(database), Some(keys), Some(audit), Some((_, max_token_lifetime))) => {
                    Ok(OperatorSettings {
                        database,
                        keys,
                        audit,
                        max_token_lifetime,
                    })
                }
                _ => Err(problems.into_error()),
            }
        })
    }

    /// The layers merged, with what was refused in them; a refused value reads as its default
    /// so that validation can go on and report its own problems too. Fails outright only when
    /// the file cannot be read at all.
    fn layered(file: Option<&Path>) -> Result<(RawSettings, Problems), ConfigError> {
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
        let schema = serde_json::to_value(RawSettings::default())
            .map_err(|error| ConfigError::invalid("<root>", error.to_string()))?;
        let variables = environment(&schema);
        let mut problems = Problems::default();
        for variable in &variables {
            if variable.setting.split('.').any(str::is_empty) {
                problems.push(ConfigError::Unknown {
                    setting: variable.setting.clone(),
                    origin: format!("environment variable `{}`", variable.name),
                });
                continue;
            }
            figment = figment.merge(Serialized::default(&variable.setting, &variable.value));
        }
        let mut merged: figment::value::Dict =
            figment.extract().map_err(|error| figment_problem(&error))?;

        let mut unknown = Vec::new();
        remove_unknown(&mut merged, &schema, "", &mut unknown);
        for setting in unknown {
            let variable = variables.iter().find(|variable| {
                variable.setting == setting
                    || variable
                        .setting
                        .strip_prefix(&setting)
                        .is_some_and(|rest| rest.starts_with('.'))
            });
            let mut origin = match (variable, file) {
                (Some(variable), _) => format!("environment variable `{}`", variable.name),
                (None, Some(path)) => format!("in {}", path.display()),
                (None, None) => "in the settings".to_owned(),
            };
            if let Some(known) = closest_setting(&schema, &setting) {
                origin.push_str(&format!("; did you mean `{known}`?"));
            }
            problems.push(ConfigError::Unknown { setting, origin });
        }

        // A refused value is reported and replaced by its default, so that the next attempt
        // finds the problems after it; every attempt removes at least one.
        let defaults = figment::value::Value::serialize(RawSettings::default())
            .map_err(|error| figment_problem(&error))?;
        loop {
            let errors =
                match Figment::from(Serialized::defaults(&merged)).extract_lossy::<RawSettings>() {
                    Ok(raw) => return Ok((raw, problems)),
                    Err(errors) => errors,
                };
            let mut progressed = false;
            for error in errors {
                problems.push(figment_problem(&error));
                progressed |= reset(&mut merged, &error.path, &defaults);
            }
            if !progressed {
                return Err(problems.into_error());
            }
        }
    }

    fn validate(raw: RawSettings, provisioned: Provisioned) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let bind = problems.check(parse_bind(&raw.server.bind));
        let tls = problems.check(validate_tls_files(
            raw.server.cert,
            raw.server.key,
            raw.server.client_ca,
            provisioned.tls,
        ));
        for (setting, zero) in [
            (
                "server.request_timeout_ms",
                raw.server.request_timeout_ms == 0,
            ),
            ("server.body_limit_bytes", raw.server.body_limit_bytes == 0),
            (
                "server.tls_handshake_timeout_ms",
                raw.server.tls_handshake_timeout_ms == 0,
            ),
            (
                "server.max_connections_per_address",
                raw.server.max_connections_per_address == 0,
            ),
        ] {
            if zero {
                problems.push(ConfigError::invalid(setting, "must be greater than zero"));
            }
        }
        let ops_bind = problems
            .check(
                raw.server
                    .ops_bind
                    .as_deref()
                    .map(|value| parse_address("server.ops_bind", value))
                    .transpose(),
            )
            .flatten();
        let database = problems.check(validate_database(raw.database, provisioned.database_url));
        let tokens = problems.check(validate_tokens(raw.tokens, provisioned.issuer));
        let keys = problems.check(validate_keys(raw.keys, provisioned.kek));
        if raw.registry.cache_ttl_ms > 60_000 {
            problems.push(ConfigError::invalid(
                "registry.cache_ttl_ms",
                "must be at most 60000: suspensions must take effect within seconds",
            ));
        }
        let audit = problems.check(validate_audit(&raw.audit));
        let otlp_endpoint_valid = raw.log.otlp_endpoint.as_deref().is_none_or(|endpoint| {
            reqwest::Url::parse(endpoint).is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https") && url.has_host() && url.query().is_none()
            })
        });
        if !otlp_endpoint_valid {
            problems.push(ConfigError::invalid(
                "log.otlp_endpoint",
                "expected the http(s) URL of an OTLP collector, such as http://127.0.0.1:4318",
            ));
        }
        let (Some(bind), Some(tls), Some(database), Some(tokens), Some(keys), Some(audit)) =
            (bind, tls, database, tokens, keys, audit)
        else {
            return Err(problems.into_error());
        };
        problems.finish()?;
        Ok(Self {
            server: ServerSettings {
                bind,
                tls,
                client_crls: raw.server.client_crls,
                tls_min_version: raw.server.tls_min_version,
                request_timeout: Duration::from_millis(raw.server.request_timeout_ms),
                body_limit_bytes: raw.server.body_limit_bytes,
                shutdown_timeout: Duration::from_secs(raw.server.shutdown_timeout_s),
                workers: raw.server.workers,
                ops_bind,
                tls_handshake_timeout: Duration::from_millis(raw.server.tls_handshake_timeout_ms),
                max_connections_per_address: raw.server.max_connections_per_address,
            },
            database,
            log: LogSettings {
                format: raw.log.format,
                filter: raw.log.filter,
                otlp_endpoint: raw.log.otlp_endpoint,
            },
            tokens,
            keys,
            policy_dir: raw.policy.dir,
            max_delegation_depth: raw.exchange.max_delegation_depth,
            jwks_ca_file: raw.trust.jwks_ca_file,
            admin_client_ca: raw.admin.client_ca,
            registry: RegistrySettings {
                cache_ttl: Duration::from_millis(raw.registry.cache_ttl_ms),
            },
            audit,
        })
    }
}

fn validate_tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    provisioned: Option<TlsFiles>,
) -> Result<TlsFiles, ConfigError> {
    let mut problems = Problems::default();
    let mut file = |setting: &str, configured: Option<PathBuf>, provisioned: Option<PathBuf>| {
        let Some(path) = configured.or(provisioned) else {
            problems.push(ConfigError::invalid(setting, "is required"));
            return None;
        };
        match std::fs::File::open(&path) {
            Ok(_) => Some(path),
            Err(error) => {
                problems.push(ConfigError::invalid(
                    setting,
                    format!("cannot read {}: {error}", path.display()),
                ));
                None
            }
        }
    };
    let (provisioned_cert, provisioned_key, provisioned_ca) = match provisioned {
        Some(files) => (Some(files.cert), Some(files.key), Some(files.client_ca)),
        None => (None, None, None),
    };
    let cert = file("server.cert", cert, provisioned_cert);
    let key = file("server.key", key, provisioned_key);
    let client_ca = file("server.client_ca", client_ca, provisioned_ca);
    match (cert, key, client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Ok(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        _ => Err(problems.into_error()),
    }
}

/// The most events one audit commit may carry: the writer's queue and buffers are sized by it.
const MAX_AUDIT_BATCH: usize = 10_000;

fn validate_audit(raw: &RawAudit) -> Result<AuditSettings, ConfigError> {
    let mut problems = Problems::default();
    if raw.checkpoint_every_records <= 0 || raw.checkpoint_interval_s == 0 {
        problems.push(ConfigError::invalid(
            "audit.checkpoint_every_records",
            "checkpoints need a positive record count and interval",
        ));
    }
    if raw.retention_days == 0 {
        problems.push(ConfigError::invalid(
            "audit.retention_days",
            "must be at least one day",
        ));
    }
    if !(1..=MAX_AUDIT_BATCH).contains(&raw.batch_max) {
        problems.push(ConfigError::invalid(
            "audit.batch_max",
            format!("must be between 1 and {MAX_AUDIT_BATCH}"),
        ));
    }
    if raw.wait_timeout_ms == 0 {
        problems.push(ConfigError::invalid(
            "audit.wait_timeout_ms",
            "must be greater than zero",
        ));
    }
    problems.finish()?;
    Ok(AuditSettings {
        enabled: raw.enabled,
        batch_max: raw.batch_max,
        checkpoint_every_records: raw.checkpoint_every_records,
        checkpoint_interval: Duration::from_secs(raw.checkpoint_interval_s),
        retention: Duration::from_secs(u64::from(raw.retention_days) * 86_400),
        wait_timeout: Duration::from_millis(raw.wait_timeout_ms),
    })
}

/// Settings whose values must never appear in a message. An error without a path (a file
/// that does not parse) could be about any of them.
fn is_secret(setting: &str) -> bool {
    setting.is_empty()
        || ["keys.kek", "keys.previous_keks", "database.url"]
            .iter()
            .any(|secret| {
                setting == *secret
                    || setting
                        .strip_prefix(secret)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
}

/// Why a setting was refused, without the value that was given when the setting is secret,
/// and never with the source lines a parser quotes (they may hold a secret).
fn describe(kind: &figment::error::Kind, setting: &str) -> String {
    use figment::error::{Actual, Kind};
    let secret = is_secret(setting);
    let shape = |actual: &Actual| match actual {
        Actual::Str(_) | Actual::Char(_) => "a string".to_owned(),
        Actual::Bytes(_) => "bytes".to_owned(),
        Actual::Bool(_) => "a boolean".to_owned(),
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number".to_owned(),
        Actual::Other(_) => "a value".to_owned(),
        other => other.to_string(),
    };
    match kind {
        Kind::Message(_) if secret && !setting.is_empty() => {
            "has an invalid value (not shown: the setting is secret)".to_owned()
        }
        Kind::Message(message) => message
            .lines()
            .filter(|line| !line.contains('|') && !line.trim().is_empty())
            .collect::<Vec<_>>()
            .join(": "),
        Kind::InvalidType(actual, expected) if secret => {
            format!("invalid type: found {}, expected {expected}", shape(actual))
        }
        Kind::InvalidValue(actual, expected) if secret => {
            format!(
                "invalid value: found {}, expected {expected}",
                shape(actual)
            )
        }
        Kind::UnknownVariant(..)
        | Kind::UnknownField(..)
        | Kind::Unsupported(..)
        | Kind::UnsupportedKey(..)
        | Kind::ISizeOutOfRange(..)
        | Kind::USizeOutOfRange(..)
            if secret =>
        {
            "has an invalid value (not shown: the setting is secret)".to_owned()
        }
        other => other.to_string(),
    }
}

fn figment_problem(error: &figment::Error) -> ConfigError {
    let setting = error.path.join(".");
    let reason = describe(&error.kind, &setting);
    ConfigError::invalid(
        if setting.is_empty() {
            "<root>"
        } else {
            &setting
        },
        reason,
    )
}

/// Settings whose keys are names the operator chooses (not a fixed set of fields).
const MAPS: [&str; 1] = ["keys.previous_keks"];

/// A `TESSERA_*` variable (or `DATABASE_URL`) and the setting it names.
struct Variable {
    name: String,
    setting: String,
    value: figment::value::Value,
}

/// The settings the environment gives. Values stay strings (`1.2` is a TLS version, not a
/// number; numbers are parsed when the setting is a number), except for list and table
/// settings, which are written in TOML-like syntax.
fn environment(schema: &serde_json::Value) -> Vec<Variable> {
    let mut variables: Vec<Variable> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            let setting = if name == "DATABASE_URL" {
                "database.url".to_owned()
            } else {
                name.strip_prefix("TESSERA_")?
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
                    .join(".")
            };
            let value = value.to_string_lossy().into_owned();
            let structured = matches!(
                lookup(schema, &setting),
                Some(serde_json::Value::Array(_) | serde_json::Value::Object(_))
            );
            let value = if structured {
                value.parse().unwrap_or_else(|never| match never {})
            } else {
                figment::value::Value::from(value)
            };
            Some(Variable {
                name,
                setting,
                value,
            })
        })
        .collect();
    // `DATABASE_URL` overrides `TESSERA_DATABASE__URL`: it is merged last.
    variables.sort_by_key(|variable| (variable.name == "DATABASE_URL", variable.name.clone()));
    variables
}

fn lookup<'a>(schema: &'a serde_json::Value, setting: &str) -> Option<&'a serde_json::Value> {
    setting
        .split('.')
        .try_fold(schema, |value, key| value.as_object()?.get(key))
}

/// The setting beside an unknown one whose name is at most two edits away, if there is one.
fn closest_setting(schema: &serde_json::Value, unknown: &str) -> Option<String> {
    let (parent, name) = match unknown.rsplit_once('.') {
        Some((parent, name)) => (lookup(schema, parent)?, name),
        None => (schema, unknown),
    };
    let prefix = unknown.strip_suffix(name).unwrap_or_default();
    parent
        .as_object()?
        .keys()
        .map(|key| (edit_distance(key, name), key))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, key)| format!("{prefix}{key}"))
}

/// Levenshtein distance, over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row.first().copied().unwrap_or_default();
        if let Some(first) = row.first_mut() {
            *first = i.saturating_add(1);
        }
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or_default();
            let left = row.get(j).copied().unwrap_or_default();
            let substitution = diagonal.saturating_add(usize::from(ca != *cb));
            let cost = substitution
                .min(above.saturating_add(1))
                .min(left.saturating_add(1));
            diagonal = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = cost;
            }
        }
    }
    row.last().copied().unwrap_or_default()
}

/// Removes the keys the settings type does not have, naming each in `found`.
fn remove_unknown(
    dict: &mut figment::value::Dict,
    schema: &serde_json::Value,
    prefix: &str,
    found: &mut Vec<String>,
) {
    dict.retain(|key, value| {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match schema.get(key) {
            None => {
                found.push(path);
                false
            }
            Some(fields @ serde_json::Value::Object(_)) if !MAPS.contains(&path.as_str()) => {
                if let figment::value::Value::Dict(_, inner) = value {
                    remove_unknown(inner, fields, &path, found);
                }
                true
            }
            Some(_) => true,
        }
    });
}

/// Puts the default back at `path` (or removes a key that has none); false if nothing changed.
fn reset(
    merged: &mut figment::value::Dict,
    path: &[String],
    defaults: &figment::value::Value,
) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut dict = merged;
    for key in parents {
        match dict.get_mut(key) {
            Some(figment::value::Value::Dict(_, inner)) => dict = inner,
            _ => return false,
        }
    }
    match defaults.find_ref(&path.join(".")) {
        Some(default) => dict.insert(last.clone(), default.clone()).as_ref() != Some(default),
        None => dict.remove(last).is_some(),
    }
}

fn validate_database(
    raw: RawDatabase,
    provisioned_url: Option<SecretString>,
) -> Result<DatabaseSettings, ConfigError> {
    let mut problems = Problems::default();
    let url = match raw.url {
        Some(url) => Some(SecretString::from(url)),
        None => problems.check(provisioned_url.ok_or_else(|| {
            ConfigError::invalid("database.url", "is required (or set DATABASE_URL)")
        })),
    };
    if raw.max_connections == 0 {
        problems.push(ConfigError::invalid(
            "database.max_connections",
            "must be greater than zero",
        ));
    }
    let Some(url) = url else {
        return Err(problems.into_error());
    };
    problems.finish()?;
    Ok(DatabaseSettings {
        url,
        max_connections: raw.max_connections,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
    })
}

fn validate_tokens(
    raw: RawTokens,
    provisioned_issuer: Option<String>,
) -> Result<TokenSettings, ConfigError> {
    let mut problems = Problems::default();
    let issuer = problems.check(
        raw.issuer
            .clone()
            .or(provisioned_issuer)
            .ok_or_else(|| ConfigError::invalid("tokens.issuer", "is required")),
    );
    // RFC 8414 §2: https, no query or fragment.
    let issuer = issuer.filter(|issuer| {
        let valid =
            issuer.starts_with("https://") && !issuer.contains(['?', '#']) && issuer.len() > 8;
        if !valid {
            problems.push(ConfigError::invalid(
                "tokens.issuer",
                "must be an https URL without query or fragment",
            ));
        }
        valid
    });
    let lifetimes = problems.check(validate_lifetimes(&raw));
    let (Some(issuer), Some((default_lifetime, max_lifetime))) = (issuer, lifetimes) else {
        return Err(problems.into_error());
    };
    Ok(TokenSettings {
        issuer: issuer.trim_end_matches('/').to_owned(),
        default_lifetime,
        max_lifetime,
    })
}

/// The default and the longest token lifetime.
fn validate_lifetimes(raw: &RawTokens) -> Result<(Duration, Duration), ConfigError> {
    if raw.default_lifetime_s == 0 || raw.default_lifetime_s > raw.max_lifetime_s {
        return Err(ConfigError::invalid(
            "tokens.default_lifetime_s",
            "must be between 1 and tokens.max_lifetime_s",
        ));
    }
    Ok((
        Duration::from_secs(raw.default_lifetime_s.into()),
        Duration::from_secs(raw.max_lifetime_s.into()),
    ))
}

fn validate_keys(raw: RawKeys, provisioned_kek: Option<Kek>) -> Result<KeySettings, ConfigError> {
    let mut problems = Problems::default();
    let kek = problems.check(match (raw.kek_id, raw.kek) {
        (Some(id), Some(key)) => Kek::parse("keys.kek", &id, &key),
        (None, None) => provisioned_kek
            .ok_or_else(|| ConfigError::invalid("keys.kek", "is required (with keys.kek_id)")),
        (None, Some(_)) => Err(ConfigError::invalid("keys.kek_id", "is required")),
        (Some(_), None) => Err(ConfigError::invalid("keys.kek", "is required")),
    });
    let previous_keks = raw
        .previous_keks
        .iter()
        .filter_map(|(id, key)| {
            problems.check(Kek::parse(&format!("keys.previous_keks.{id}"), id, key))
        })
        .collect();
    if raw.refresh_interval_ms == 0 || raw.refresh_interval_ms > 10_000 {
        problems.push(ConfigError::invalid(
            "keys.refresh_interval_ms",
            "must be between 1 and 10000",
        ));
    }
    let Some(kek) = kek else {
        return Err(problems.into_error());
    };
    problems.finish()?;
    Ok(KeySettings {
        algorithm: raw.algorithm,
        kek,
        previous_keks,
        rotation_interval: Duration::from_secs(raw.rotation_interval_s),
        refresh_interval: Duration::from_millis(raw.refresh_interval_ms),
    })
}

fn parse_bind(value: &str) -> Result<SocketAddr, ConfigError> {
    parse_address("server.bind", value)
}

fn parse_address(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::invalid(setting, "expected HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| {
        ConfigError::invalid(setting, format!("invalid port `{port}` (expected 0-65535)"))
    })?;
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| ConfigError::invalid(setting, format!("invalid address `{host}`")))?;
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
    fn secret_settings_are_described_without_their_value() {
        use figment::error::{Actual, Kind};
        let secret = "c2VjcmV0LWtleS1lbmNyeXB0aW9uLWtleS0wMTIzNDU=";
        for setting in [
            "keys.previous_keks",
            "keys.previous_keks.old",
            "keys.kek",
            "",
        ] {
            for kind in [
                Kind::InvalidType(Actual::Str(secret.into()), "a map".into()),
                Kind::InvalidValue(Actual::Str(secret.into()), "base64".into()),
                Kind::UnknownVariant(secret.into(), &[]),
                Kind::Message(format!(
                    "TOML parse error at line 1\n1 | kek = {secret}\nbad"
                )),
            ] {
                let reason = describe(&kind, setting);
                assert!(!reason.contains(secret), "{setting}: {reason}");
            }
        }
        let raw = RawSettings::default();
        let shown = format!(
            "{:?}",
            RawKeys {
                kek: Some(secret.into()),
                previous_keks: BTreeMap::from([("old".into(), secret.into())]),
                ..raw.keys
            }
        );
        assert!(!shown.contains(secret), "{shown}");
    }

    /// Every field of the settings type, as dotted paths.
    fn fields(schema: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in schema.as_object().into_iter().flatten() {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if value.is_object() && !MAPS.contains(&path.as_str()) {
                fields(value, &path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// `tessera.example.toml` documents every setting and nothing else: every field of the
    /// settings type appears (optional and secret ones commented out), every key is a field,
    /// and the file reads into the settings type.
    #[test]
    fn the_example_file_documents_every_setting() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tessera.example.toml"))
                .unwrap();
        let uncommented = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut documented: figment::value::Dict =
            Figment::from(Toml::string(&uncommented)).extract().unwrap();
        let schema = serde_json::to_value(RawSettings::default()).unwrap();
        let mut unknown = Vec::new();
        remove_unknown(&mut documented, &schema, "", &mut unknown);
        assert!(unknown.is_empty(), "not settings: {unknown:?}");
        let documented = figment::value::Value::from(documented);
        let mut all = Vec::new();
        fields(&schema, "", &mut all);
        let missing: Vec<_> = all
            .iter()
            .filter(|field| documented.find_ref(field).is_none())
            .collect();
        assert!(missing.is_empty(), "not documented: {missing:?}");
        Figment::from(Serialized::defaults(RawSettings::default()))
            .merge(Toml::string(&uncommented))
            .extract_lossy::<RawSettings>()
            .unwrap();
    }

    #[test]
    fn problems_are_collected_and_listed_together() {
        let raw = RawSettings {
            server: RawServer {
                request_timeout_ms: 0,
                ..RawSettings::default().server
            },
            audit: RawAudit {
                retention_days: 0,
                ..RawSettings::default().audit
            },
            ..RawSettings::default()
        };
        let error = Settings::validate(raw, Provisioned::default())
            .err()
            .unwrap()
            .to_string();
        for expected in [
            "server.cert",
            "server.key",
            "server.client_ca",
            "server.request_timeout_ms",
            "database.url",
            "tokens.issuer",
            "keys.kek",
            "audit.retention_days",
        ] {
            assert!(
                error.contains(&format!("`{expected}`")),
                "{expected}: {error}"
            );
        }
    }

    #[test]
    fn a_misspelled_setting_is_answered_with_the_closest_one() {
        let schema = serde_json::to_value(RawSettings::default()).unwrap();
        assert_eq!(
            closest_setting(&schema, "tokens.default_lifetim_s").as_deref(),
            Some("tokens.default_lifetime_s")
        );
        assert_eq!(
            closest_setting(&schema, "sevrer").as_deref(),
            Some("server")
        );
        assert_eq!(closest_setting(&schema, "server.nothing_like_it"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn bind_accepts_ipv6() {
        assert_eq!(
            parse_bind("[::1]:8443").ok(),
            Some("[::1]:8443".parse().unwrap_or_else(|_| unreachable!()))
        );
    }
}
