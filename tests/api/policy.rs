use std::path::Path;
use std::time::Duration;

use crate::helpers::{ServerProcess, scratch_dir, seeded_database};

fn copy_policies(to: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::create_dir_all(to.join("tests")).unwrap();
    for file in ["schema.cedarschema", "tessera.cedar"] {
        std::fs::copy(shipped.join(file), to.join(file)).unwrap();
    }
}

async fn wait_for_log(server: &ServerProcess, needle: &str) {
    for _ in 0..100 {
        if server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{needle}` never logged: {:#?}", server.log.lock().unwrap());
}

#[tokio::test]
async fn sighup_reloads_policies_and_an_invalid_set_keeps_the_running_one() {
    let db = seeded_database().await;
    let dir = scratch_dir().join(format!("policies-{}", uuid::Uuid::new_v4().simple()));
    copy_policies(&dir);
    let mut server = ServerProcess::start_with(&db.url, &[("TESSERA_POLICY__DIR", &dir)]);
    let client = crate::helpers::client_with(Some("partner-a"), &[&rustls::version::TLS13]);
    let token = || async {
        client
            .post(server.url("/oauth2/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "partner-a-treasury"),
                ("resource", "https://ledger.test"),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(token().await, 200);

    std::fs::write(
        dir.join("broken.cedar"),
        r#"@id("typo") forbid (principal, action, resource) when { resource.regoin == "eu" };"#,
    )
    .unwrap();
    server.signal("-HUP");
    wait_for_log(&server, "policy reload refused").await;
    assert_eq!(token().await, 200, "the running set stays");

    std::fs::write(
        dir.join("broken.cedar"),
        r#"@id("ledger-closed") forbid (principal, action, resource) when { resource.kind == "standard" };"#,
    )
    .unwrap();
    server.signal("-HUP");
    wait_for_log(&server, "policies reloaded").await;
    assert_eq!(token().await, 400, "the new set is in force");

    server.signal("-TERM");
    assert!(server.wait().success());
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM audit_events WHERE kind = 'policy_reloaded' ORDER BY recorded_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outcomes, ["deny", "allow"]);
}
