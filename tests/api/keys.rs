use serde_json::Value;

use crate::client_credentials::verify_with_jwks;
use crate::helpers::{TestApp, spawn_app};

async fn kids(app: &TestApp) -> Vec<String> {
    let jwks: Value = app
        .client(None)
        .get(app.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn token(app: &TestApp) -> String {
    app.token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn rotation_publishes_next_first_and_keeps_retired_keys_until_their_tokens_expire() {
    let app = spawn_app().await;
    let published = kids(&app).await;
    assert_eq!(published.len(), 2, "active and next are both published");
    let old_token = token(&app).await;
    let old_kid = kid_of(&old_token);

    let rotation = tessera::service::keys::rotate(
        &app.pool,
        &app.settings.keys,
        app.settings.tokens.max_lifetime,
        false,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rotation.retired, old_kid);
    assert!(
        published.contains(&rotation.activated),
        "the new signing key was published before it signed"
    );

    // Every node picks the rotation up within its refresh interval.
    let mut new_token = token(&app).await;
    for _ in 0..50 {
        if kid_of(&new_token) != old_kid {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        new_token = token(&app).await;
    }
    assert_eq!(kid_of(&new_token), rotation.activated);

    let published = kids(&app).await;
    for kid in [&old_kid, &rotation.activated, &rotation.next] {
        assert!(published.contains(kid), "{kid} missing from {published:?}");
    }
    // The old token still verifies offline and at introspection.
    verify_with_jwks(&app, &old_token, "https://ledger.test").await;
    let (_, body) = app
        .post_form(
            Some("resource-server"),
            "/oauth2/introspect",
            &[("client_id", "ledger-rs"), ("token", &old_token)],
        )
        .await;
    assert_eq!(body["active"], true);
}

#[tokio::test]
async fn private_keys_are_stored_sealed() {
    let app = spawn_app().await;
    let rows: Vec<(Vec<u8>, Vec<u8>, String)> =
        sqlx::query_as("SELECT sealed_private_key, wrapped_data_key, kek_id FROM signing_keys")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(!rows.is_empty());
    for (sealed, wrapped, kek_id) in rows {
        assert_eq!(kek_id, "test");
        // nonce + 32-byte data key + tag
        assert_eq!(wrapped.len(), 12 + 32 + 16);
        // Neither the stored bytes nor the ciphertext after the nonce is a usable key.
        let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        assert!(aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, &sealed).is_err());
        assert!(
            aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, &sealed[12..sealed.len() - 16])
                .is_err()
        );
    }
}

#[tokio::test]
async fn metadata_lists_exactly_what_is_supported() {
    let app = spawn_app().await;
    let metadata: Value = app
        .client(None)
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], crate::helpers::ISSUER);
    assert_eq!(
        metadata["grant_types_supported"],
        serde_json::json!([
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "tls_client_auth",
            "self_signed_tls_client_auth",
            "private_key_jwt"
        ])
    );
    assert_eq!(metadata["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        metadata["mtls_endpoint_aliases"]["token_endpoint"],
        format!("{}/oauth2/token", crate::helpers::ISSUER)
    );
}

#[tokio::test]
async fn rewrapping_moves_every_key_to_the_new_key_encryption_key() {
    let app = spawn_app().await;
    let old = app.settings.keys.clone();
    let mut new_kek = crate::helpers::random_kek();
    new_kek.id = "kek-2".into();

    // Without the old KEK configured, the stored keys cannot be opened.
    let mut only_new = old.clone();
    only_new.kek = new_kek.clone();
    only_new.previous_keks = Vec::new();
    assert!(
        tessera::crypto::keys::KeyRing::load(&app.pool, only_new.clone())
            .await
            .is_err()
    );

    let mut rotating = only_new.clone();
    rotating.previous_keks = vec![old.kek.clone()];
    let count = tessera::service::keys::rewrap(&app.pool, &rotating)
        .await
        .unwrap()
        .signing_keys;
    assert_eq!(count, 2);
    let ring = tessera::crypto::keys::KeyRing::load(&app.pool, only_new)
        .await
        .unwrap();
    assert!(!ring.current().active.kid.is_empty());
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM signing_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(kek_ids, ["kek-2"]);
}
