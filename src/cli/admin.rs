//! `tessera admin`: registering the first admins from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::Settings;
use crate::domain::admin::Role;
use crate::service::admin::bootstrap;
use crate::tls::ClientCertificate;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Call the admin API over mTLS: `tessera admin call GET partners`, `tessera admin call
    /// PATCH partners/partner-a --if-match 3 --data '{"status":"suspended"}'`. Lists print as
    /// a table, anything else as JSON; `--json` always prints JSON. Exits non-zero when the
    /// API refuses.
    Call {
        #[command(flatten)]
        connection: Connection,
        /// GET, POST or PATCH.
        method: String,
        /// Under `/admin/v1/` (the prefix may be left out).
        path: String,
        /// The JSON body.
        #[arg(long)]
        data: Option<String>,
        /// The version the change is made against (the resource's `ETag`).
        #[arg(long)]
        if_match: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Register an admin by certificate (database access required; audited). The certificate
    /// must chain to `admin.client_ca` to be accepted by the admin API.
    Bootstrap {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The admin's certificate (PEM); its subject identifies the admin.
        #[arg(long)]
        cert: PathBuf,
        /// Comma-separated: viewer, editor, approver, auditor.
        #[arg(long)]
        roles: String,
        /// The admin's id (default: the certificate's common name).
        #[arg(long)]
        id: Option<String>,
    },
}

/// Where the admin API is and who calls it; the defaults are the dev PKI's `admin`.
#[derive(Debug, clap::Args)]
pub struct Connection {
    #[arg(long, default_value = "https://localhost:8443")]
    url: String,
    #[arg(long, default_value = "certs/dev/admin.pem")]
    cert: PathBuf,
    #[arg(long, default_value = "certs/dev/admin.key")]
    key: PathBuf,
    /// The CA that issued the server's certificate.
    #[arg(long, default_value = "certs/dev/ca.pem")]
    ca: PathBuf,
}

impl Connection {
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        use rustls::pki_types::PrivateKeyDer;
        let read = |path: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
            CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: not PEM certificates", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in read(&self.ca)? {
            roots.add(certificate)?;
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("{}: not a PEM private key", self.key.display()))?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(read(&self.cert)?, key)?;
        Ok(reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()?)
    }
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Call {
            connection,
            method,
            path,
            data,
            if_match,
            json,
        } => {
            let method = match method.to_ascii_uppercase().as_str() {
                "GET" => reqwest::Method::GET,
                "POST" => reqwest::Method::POST,
                "PATCH" => reqwest::Method::PATCH,
                other => anyhow::bail!("method `{other}`: GET, POST or PATCH"),
            };
            let path = path.trim_start_matches('/');
            let path = path.strip_prefix("admin/v1/").unwrap_or(path);
            let url = format!("{}/admin/v1/{path}", connection.url.trim_end_matches('/'));
            let mut request = connection.client()?.request(method, url);
            if let Some(version) = if_match {
                request = request.header("if-match", format!("\"{}\"", version.trim_matches('"')));
            }
            if let Some(data) = data {
                let body: serde_json::Value =
                    serde_json::from_str(&data).context("--data: not JSON")?;
                request = request.json(&body);
            }
            let response = request.send().await.context("calling the admin API")?;
            let status = response.status();
            let etag = response
                .headers()
                .get("etag")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let text = response.text().await?;
            let body: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            eprintln!(
                "{status}{}",
                etag.map(|etag| format!(" (ETag {etag})"))
                    .unwrap_or_default()
            );
            match (&body, json) {
                (serde_json::Value::Array(rows), false) => print!("{}", table(rows)),
                _ => println!("{}", serde_json::to_string_pretty(&body)?),
            }
            if !status.is_success() {
                anyhow::bail!("the admin API refused: {status}");
            }
            Ok(())
        }
        AdminCommand::Bootstrap {
            config,
            cert,
            roles,
            id,
        } => {
            let roles =
                Role::parse_list(&roles).map_err(|reason| anyhow::anyhow!("--roles: {reason}"))?;
            let identity = certificate_identity(&cert)?;
            let id = id
                .or_else(|| identity.suggested_id.clone())
                .context("--id is needed: the certificate's common name is not a plain id")?;
            let settings = Settings::load_operator(config.as_deref())?;
            let pool = crate::storage::pool(&settings.database)?;
            let (audit, writer) = crate::cli::operator_audit(&pool, &settings.keys).await?;
            let registered = bootstrap::register(&audit, &id, identity, roles, "operator").await;
            writer.finish().await;
            let admin = registered?;
            let roles: Vec<&str> = admin.roles.iter().map(|role| role.as_str()).collect();
            println!(
                "admin `{}` registered: {} ({})",
                admin.id,
                admin.subject_dn,
                roles.join(", ")
            );
            Ok(())
        }
    }
}

/// The identity in a PEM certificate file: its first certificate.
pub fn certificate_identity(
    path: &std::path::Path,
) -> anyhow::Result<bootstrap::CertificateIdentity> {
    let der = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .next()
        .with_context(|| format!("{}: no certificate", path.display()))?
        .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
    let certificate = ClientCertificate::parse(der, Vec::new())
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok(bootstrap::identity_of(&certificate))
}

/// A list of objects as a table of their plain (non-nested) fields.
fn table(rows: &[serde_json::Value]) -> String {
    use serde_json::Value;
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        for (key, value) in row.as_object().into_iter().flatten() {
            if !matches!(value, Value::Object(_) | Value::Array(_))
                && !columns.contains(&key.as_str())
            {
                columns.push(key);
            }
        }
    }
    let cell = |row: &Value, column: &str| match row.get(column) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|column| {
            rows.iter()
                .map(|row| cell(row, column).chars().count())
                .chain([column.len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(columns.iter().map(|column| column.to_uppercase()).collect());
    for row in rows {
        out.push_str(&line(
            columns.iter().map(|column| cell(row, column)).collect(),
        ));
    }
    out
}
