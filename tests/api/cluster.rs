//! `scripts/cluster.sh`: N `tessera serve` nodes on one PostgreSQL, started and stopped by the
//! script the README's multi-node recipe uses; a revocation on one node reaches the other.

use std::process::Command;

use crate::helpers::{ISSUER, PROCESS_KEK, client_with, pki, scratch_dir, seeded_database};

fn script(args: &[&str], dir: &std::path::Path, database_url: &str) -> String {
    let pki = pki();
    let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CLUSTER_BIN", env!("CARGO_BIN_EXE_tessera"))
        .env("CLUSTER_DIR", dir)
        // Any free ports: tests run in parallel, and consecutive ports may be taken.
        .env("CLUSTER_BASE_PORT", "0")
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("TESSERA_TOKENS__ISSUER", ISSUER)
        .env("TESSERA_KEYS__KEK_ID", "test")
        .env("TESSERA_KEYS__KEK", PROCESS_KEK)
        .env("TESSERA_REGISTRY__CACHE_TTL_MS", "300")
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cluster.sh {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_cluster_script_runs_nodes_that_share_revocations() {
    let db = seeded_database().await;
    let dir = scratch_dir().join(format!("cluster-{}", uuid::Uuid::new_v4().simple()));
    let started = script(&["start", "2"], &dir, &db.url);
    // "node N: https://127.0.0.1:PORT (pid P)"
    let ports: Vec<u16> = started
        .lines()
        .map(|line| {
            let address = line.split_whitespace().nth(2).unwrap();
            address.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(ports.len(), 2, "{started}");
    let url = |node: usize, path: &str| format!("https://localhost:{}{path}", ports[node]);

    let treasury = client_with(Some("partner-a"), &[&rustls::version::TLS13]);
    let issued: serde_json::Value = treasury
        .post(url(0, "/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["access_token"].as_str().unwrap();
    let introspect = |node: usize| {
        let treasury = treasury.clone();
        let url = url(node, "/oauth2/introspect");
        let token = token.to_owned();
        async move {
            let body: serde_json::Value = treasury
                .post(url)
                .form(&[("client_id", "partner-a-treasury"), ("token", &token)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["active"] == true
        }
    };
    assert!(introspect(1).await, "node 2 accepts node 1's token");
    let revoked = treasury
        .post(url(0, "/oauth2/revoke"))
        .form(&[("client_id", "partner-a-treasury"), ("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let mut seen = false;
    for _ in 0..30 {
        if !introspect(1).await {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "node 2 still accepts a token revoked on node 1 after 3 s"
    );

    let status = script(&["status"], &dir, &db.url);
    assert_eq!(status.matches("running").count(), 2, "{status}");
    script(&["stop"], &dir, &db.url);
    assert!(
        treasury.get(url(0, "/healthz")).send().await.is_err(),
        "node 1 still serves after stop"
    );
    assert!(script(&["status"], &dir, &db.url).is_empty());
}
