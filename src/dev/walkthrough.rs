//! The tour `dev` prints: shell lines that run the product's whole flow against the dev server
//! as they stand (client credentials, settlement narrowing, a partner's identity provider
//! vouching for a trader under a consent, delegation, introspection, cascading revocation, the
//! audit trail's verification). A test runs every printed line, so they stay true.

use std::path::Path;

use crate::audit::{AuditLog, AuditSigner, CheckpointPolicy};
use crate::config::Settings;
use crate::dev::seed::Seed;

/// Seeds the trust profiles and consents of `seed`, audited on a chain of their own that is
/// signed off before the server starts. Key sets named relatively come from the dev PKI.
pub async fn seed_agreements(
    seed: &Seed,
    pool: &sqlx::PgPool,
    settings: &Settings,
    pki_dir: &Path,
) -> anyhow::Result<()> {
    let signer = AuditSigner::load(pool, &settings.keys).await?;
    let (audit, writer) = AuditLog::start(
        pool.clone(),
        format!("dev-seed/{}", std::process::id()),
        1,
        signer,
        CheckpointPolicy {
            every_records: 1,
            every: std::time::Duration::from_secs(60),
        },
        None,
    );
    let applied = seed.apply_agreements(pool, &audit, pki_dir).await;
    writer.finish().await;
    Ok(applied?)
}

/// What the printed lines need to name.
pub struct Tour<'a> {
    /// The issuer, which is also the URL to call.
    pub issuer: &'a str,
    pub certs_dir: &'a Path,
    pub kek_file: &'a Path,
    /// The settings file `dev` was given, which the audit command then reads too.
    pub config: Option<&'a Path>,
    /// The database URL to name, unless the shell already has it (`DATABASE_URL`) or the
    /// settings file holds it.
    pub database_url: Option<&'a str>,
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A path as the shell should read it: absolute, single-quoted.
fn quoted(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!(
        "'{}'",
        absolute.display().to_string().replace('\'', r"'\''")
    )
}

fn curl(identity: &str) -> String {
    format!(
        "curl -sS --fail-with-body --cacert \"$P/ca.pem\" --cert \"$P/{identity}.pem\" \
         --key \"$P/{identity}.key\""
    )
}

impl Tour<'_> {
    /// The lines, comments included, in the order they must run in one shell.
    pub fn lines(&self) -> Vec<String> {
        let tessera = std::env::current_exe()
            .map(|exe| quoted(&exe))
            .unwrap_or_else(|_| "tessera".to_owned());
        let token = "sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/'";
        let issuer = self.issuer;
        let config = self
            .config
            .map(|file| format!(" --config {}", quoted(file)))
            .unwrap_or_default();
        let database = self
            .database_url
            .map(|url| format!("DATABASE_URL='{url}' "))
            .unwrap_or_default();
        let partner_a = curl("partner-a");
        let settlement = curl("settlement");
        let resource_server = curl("resource-server");
        vec![
            "# Shorthands: the server, the dev PKI, and reading access_token from a response."
                .to_owned(),
            format!("T={issuer} P={}", quoted(self.certs_dir)),
            format!("token() {{ {token}; }}"),
            "# 1. client_credentials: partner A's treasury gets a broad token for the payments API."
                .to_owned(),
            format!(
                "BROAD=$({partner_a} -d grant_type=client_credentials \
                 -d client_id=partner-a-treasury -d resource=https://payments.tessera.test \
                 $T/oauth2/token | token)"
            ),
            "# 2. Partner A's settlement service (it serves the payments API) narrows that token \
             to the settlement audience and one scope."
                .to_owned(),
            format!(
                "SETTLE=$({settlement} -d grant_type={EXCHANGE} -d client_id=partner-a-settlement \
                 -d subject_token=$BROAD -d subject_token_type={ACCESS_TOKEN} \
                 -d audience=https://settlement.tessera.test -d scope=settlement:instruct \
                 $T/oauth2/token | token)"
            ),
            "# 3. Partner B's identity provider (its key is in the dev PKI; partner B's trust \
             profile trusts it) vouches for a trader."
                .to_owned(),
            format!(
                "TRADER=$({tessera} certs partner-jwt --dir \"$P\" --subject trader-7 \
                 --audience $T)"
            ),
            "# 4. Under partner B's consent to partner A, the treasury exchanges the trader's \
             assertion for a ledger token, acting with its own token (act)."
                .to_owned(),
            format!(
                "DELEGATED=$({partner_a} -d grant_type={EXCHANGE} -d client_id=partner-a-treasury \
                 -d subject_token=$TRADER -d subject_token_type={JWT} -d actor_token=$BROAD \
                 -d actor_token_type={ACCESS_TOKEN} -d audience=https://ledger.tessera.test \
                 -d scope=ledger:read $T/oauth2/token | token)"
            ),
            "# 5. Introspection: the ledger's resource server reads the delegated token (sub, \
             act, consent_id); the settlement service its own."
                .to_owned(),
            format!(
                "{resource_server} -d client_id=ledger-resource-server -d token=$DELEGATED \
                 $T/oauth2/introspect; echo"
            ),
            format!(
                "{settlement} -d client_id=partner-a-settlement -d token=$SETTLE \
                 $T/oauth2/introspect; echo"
            ),
            "# 6. Revoking the broad token revokes what was exchanged from it and what it acted \
             in: both read inactive now."
                .to_owned(),
            format!(
                "{partner_a} -d client_id=partner-a-treasury -d token=$BROAD $T/oauth2/revoke"
            ),
            format!(
                "{settlement} -d client_id=partner-a-settlement -d token=$SETTLE \
                 $T/oauth2/introspect; echo"
            ),
            format!(
                "{resource_server} -d client_id=ledger-resource-server -d token=$DELEGATED \
                 $T/oauth2/introspect; echo"
            ),
            "# 7. Every decision above is in the hash-chained audit trail; verify it.".to_owned(),
            format!(
                "{database}TESSERA_KEYS__KEK_ID=dev TESSERA_KEYS__KEK=\"$(cat {kek})\" {tessera} \
                 audit verify{config}",
                kek = quoted(self.kek_file),
            ),
        ]
    }
}
