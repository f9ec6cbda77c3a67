//! A property test over random exchange chains (issue 9): partner D's subject, exchanged 2–5
//! times by random clients for random audiences, scopes and actors, with the consent or a
//! token in the chain revoked at random points. Every issued token must stay within what the
//! original consent, trust profile and residency allow and never widen its parent; nothing
//! issued under a revoked consent or from a revoked token is active afterwards.
//!
//! `CHAIN_TEST_CASES` and `CHAIN_TEST_SEED` choose how many cases and which (not `TESSERA_*`:
//! the settings loader refuses unknown names there); the ignored
//! variant runs many more (`cargo test -- --ignored chains`).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tessera::dev::seed::Seed;

use crate::helpers::{TestApp, TestDatabase, pki, spawn_app_on};
use crate::partner::{EXCHANGE, JWT_TYPE, PARTNER_ISSUER, partner_key, sign, start_idp};

const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// xorshift64*: enough randomness for choosing, and a seed that reproduces a failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn subset<'a>(&mut self, items: &[&'a str]) -> Vec<&'a str> {
        let subset: Vec<&str> = items.iter().copied().filter(|_| self.chance(50)).collect();
        if subset.is_empty() {
            vec![*self.pick(items)]
        } else {
            subset
        }
    }
}

const AUDIENCES: [&str; 5] = [
    "https://ledger.test",
    "https://payments.test",
    "https://settlement.test",
    "https://reports.test",
    "https://us-ledger.test",
];
/// What consents name; partner D's profile leaves out the payments audience, so that a consent
/// reaching further than the profile is tried too.
const CONSENT_AUDIENCES: [&str; 4] = [
    "https://ledger.test",
    "https://payments.test",
    "https://settlement.test",
    "https://us-ledger.test",
];
const PROFILE_AUDIENCES: [&str; 3] = [
    "https://ledger.test",
    "https://settlement.test",
    "https://us-ledger.test",
];
const SCOPES: [&str; 3] = ["ledger:read", "settlement:read", "settlement:instruct"];
const PROFILE_SCOPES: [&str; 2] = ["ledger:read", "settlement:read"];
/// (client id, certificate identity) of clients that may exchange.
const EXCHANGERS: [(&str, &str); 4] = [
    ("partner-a-treasury", "partner-a"),
    ("partner-a-ops", "partner-a"),
    ("payments-rs", "partner-b"),
    ("partner-b-reconciliation", "partner-b"),
];

fn scopes_of(claims: &Value) -> BTreeSet<String> {
    claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect()
}

fn decoded(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

struct World {
    app: TestApp,
    key: crate::partner::PartnerKey,
    _idp: crate::partner::PartnerIdp,
}

async fn world() -> World {
    let key = partner_key("d-1");
    let idp = start_idp(json!({ "keys": [key.jwk] })).await;
    let app = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.jwks_ca_file = Some(pki().ca_cert());
    })
    .await;
    Seed {
        audiences: vec![crate::boundaries::ledger_audience(
            "https://us-ledger.test",
            "us",
            true,
        )],
        ..Seed::default()
    }
    .apply(&app.pool)
    .await
    .unwrap();
    // Every exchanger may ask for every audience: only consent, profile, residency and the
    // subject's own reach should stop it.
    for (client, _) in EXCHANGERS {
        for audience in AUDIENCES {
            sqlx::query(
                "INSERT INTO client_audiences (client_id, audience_id, scopes)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (client_id, audience_id) DO UPDATE SET scopes = EXCLUDED.scopes",
            )
            .bind(client)
            .bind(audience)
            .bind(SCOPES.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .execute(&app.pool)
            .await
            .unwrap();
        }
    }
    tessera::storage::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(&app).await,
        "partner-d",
        &tessera::domain::trust::NewProfile {
            issuers: vec![PARTNER_ISSUER.into()],
            jwks_uri: Some(idp.url.clone()),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({}),
            single_use: true,
            audiences: PROFILE_AUDIENCES.iter().map(|a| (*a).to_owned()).collect(),
            scopes: PROFILE_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            region: "eu".into(),
            active: true,
            ..tessera::domain::trust::NewProfile::default()
        },
        "admin",
    )
    .await
    .unwrap();
    World {
        app,
        key,
        _idp: idp,
    }
}

/// One issued token of a chain, with what bounds it.
struct Link {
    token: String,
    claims: Value,
    holder: usize,
    /// The link it was exchanged from.
    parent: Option<usize>,
    revoked: bool,
}

async fn exchange(
    app: &TestApp,
    exchanger: (&str, &str),
    subject: &str,
    subject_type: &str,
    audience: &str,
    scope: Option<&str>,
    actor: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", EXCHANGE),
        ("client_id", exchanger.0),
        ("subject_token", subject),
        ("subject_token_type", subject_type),
        ("audience", audience),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    if let Some(actor) = actor {
        form.push(("actor_token", actor));
        form.push(("actor_token_type", ACCESS_TOKEN));
    }
    app.post_form(Some(exchanger.1), "/oauth2/token", &form)
        .await
}

async fn is_active(app: &TestApp, token: &str) -> bool {
    let (_, body) = app
        .post_form(
            Some("resource-server"),
            "/oauth2/introspect",
            &[("client_id", "ops-admin"), ("token", token)],
        )
        .await;
    body["active"] == true
}

async fn run_case(world: &World, rng: &mut Rng, case: usize) -> usize {
    let app = &world.app;
    let consent_audiences = rng.subset(&CONSENT_AUDIENCES);
    let consent_scopes = if rng.chance(70) {
        rng.subset(&PROFILE_SCOPES)
    } else {
        rng.subset(&SCOPES)
    };
    // Partner A (eu) or partner B (us) receives the consent: B's clients are where residency,
    // not the client's own region, must stop the US-only audience.
    let (grantee, grantee_client) = if rng.chance(60) {
        ("partner-a", rng.chance(50).then_some("partner-a-treasury"))
    } else {
        (
            "partner-b",
            rng.chance(50).then_some("partner-b-reconciliation"),
        )
    };
    let now = time::OffsetDateTime::now_utc();
    let consent = tessera::storage::consents::create(
        &app.pool,
        &crate::helpers::admin_audit(app).await,
        &tessera::domain::consents::NewConsent {
            grantor: "partner-d".into(),
            grantee_partner: grantee.into(),
            grantee_client: grantee_client.map(str::to_owned),
            scopes: consent_scopes.iter().map(|s| (*s).to_owned()).collect(),
            audiences: consent_audiences.iter().map(|a| (*a).to_owned()).collect(),
            effective_from: now - time::Duration::hours(1),
            effective_until: now + time::Duration::hours(1),
            legal_basis: "contract".into(),
            constraints: json!({}),
        },
        "compliance-officer",
    )
    .await
    .unwrap();
    let subject_scopes = if rng.chance(70) {
        rng.subset(&PROFILE_SCOPES)
    } else {
        rng.subset(&SCOPES)
    };
    // Partner JWTs are single-use: each first hop presents a fresh one for the same trader.
    let subject = || {
        sign(
            &world.key,
            "d-1",
            &json!({
                "iss": PARTNER_ISSUER,
                "sub": format!("trader-{case}@partner-d"),
                "aud": crate::helpers::ISSUER,
                "iat": tessera::crypto::keys::unix_now(),
                "exp": tessera::crypto::keys::unix_now() + 240,
                "jti": uuid::Uuid::new_v4().to_string(),
                "scope": subject_scopes.join(" "),
            }),
        )
    };
    // What the original grant allows, computed from the test's own knowledge.
    let reach_audiences: BTreeSet<&str> = consent_audiences
        .iter()
        .copied()
        .filter(|audience| PROFILE_AUDIENCES.contains(audience))
        .filter(|audience| *audience != "https://us-ledger.test")
        .collect();
    let reach_scopes: BTreeSet<String> = consent_scopes
        .iter()
        .copied()
        .filter(|scope| PROFILE_SCOPES.contains(scope) && subject_scopes.contains(scope))
        .map(str::to_owned)
        .collect();

    let hops = 2 + rng.below(4);
    let mut chain: Vec<Link> = Vec::new();
    let mut consent_revoked = false;
    let mut issued = 0;
    for hop in 0..hops {
        // Biased towards requests that can succeed, so that the invariants are exercised
        // on many issued tokens and not only on refusals.
        let exchanger = if rng.chance(50) {
            if grantee == "partner-a" {
                EXCHANGERS[0]
            } else {
                EXCHANGERS[3]
            }
        } else {
            *rng.pick(&EXCHANGERS)
        };
        let reachable: Vec<&str> = reach_audiences.iter().copied().collect();
        let audience = if !reachable.is_empty() && rng.chance(60) {
            *rng.pick(&reachable)
        } else if rng.chance(50) {
            *rng.pick(&consent_audiences)
        } else {
            *rng.pick(&AUDIENCES)
        };
        let scope = rng.chance(50).then(|| rng.subset(&SCOPES).join(" "));
        let (subject_token, subject_type, parent) = match chain.len() {
            0 => (subject(), JWT_TYPE, None),
            n => {
                let index = rng.below(n);
                (chain[index].token.clone(), ACCESS_TOKEN, Some(index))
            }
        };
        // An actor token is the exchanger's own (the payments resource server has none).
        let actor = if exchanger.0 != "payments-rs" && rng.chance(25) {
            Some(
                app.token(exchanger.1, exchanger.0, "https://ledger.test")
                    .await,
            )
        } else {
            None
        };
        let (status, body) = exchange(
            app,
            exchanger,
            &subject_token,
            subject_type,
            audience,
            scope.as_deref(),
            actor.as_deref(),
        )
        .await;
        let context = format!(
            "case {case} hop {hop}: {} → {audience} scope {scope:?} from {parent:?}: {body}",
            exchanger.0
        );
        assert!(
            matches!(status, 200 | 400),
            "only grants and protocol refusals: {context}"
        );
        let parent_revoked = parent.is_some_and(|index| chain[index].revoked);
        if status == 200 {
            issued += 1;
            let token = body["access_token"].as_str().unwrap().to_owned();
            let claims = decoded(&token);
            assert!(
                !consent_revoked,
                "issued after the consent was revoked: {context}"
            );
            assert!(!parent_revoked, "issued from a revoked token: {context}");
            assert_eq!(claims["owner_partner"], "partner-d", "{context}");
            assert_eq!(claims["owner_region"], "eu", "{context}");
            assert_eq!(claims["consent_id"], consent.id.to_string(), "{context}");
            let aud = claims["aud"].as_str().unwrap();
            assert!(
                reach_audiences.contains(aud),
                "audience beyond the grant: {context}"
            );
            let scopes = scopes_of(&claims);
            assert!(
                scopes.is_subset(&reach_scopes),
                "scopes beyond the grant: {context}"
            );
            if let Some(index) = parent {
                let parent = &chain[index].claims;
                assert!(scopes.is_subset(&scopes_of(parent)), "widened: {context}");
                assert!(
                    claims["exp"].as_i64() <= parent["exp"].as_i64(),
                    "{context}"
                );
            }
            let holder = EXCHANGERS
                .iter()
                .position(|(id, _)| *id == exchanger.0)
                .unwrap();
            chain.push(Link {
                token,
                claims,
                holder,
                parent,
                revoked: false,
            });
        }
        // Revoke at random points: the consent, or one token (and so its descendants).
        if !consent_revoked && rng.chance(8) {
            tessera::storage::consents::revoke(
                &app.pool,
                &crate::helpers::admin_audit(app).await,
                consent.id,
                "compliance-officer",
                "random revocation",
            )
            .await
            .unwrap();
            consent_revoked = true;
        } else if !chain.is_empty() && rng.chance(10) {
            let index = rng.below(chain.len());
            let (client_id, identity) = EXCHANGERS[chain[index].holder];
            let (status, _) = app
                .post_form(
                    Some(identity),
                    "/oauth2/revoke",
                    &[("client_id", client_id), ("token", &chain[index].token)],
                )
                .await;
            assert_eq!(status, 200);
            mark_revoked(&mut chain, index);
        }
    }
    // Checked before the end of the case revokes the consent, so that the token revocations
    // are checked on their own.
    for link in &chain {
        if consent_revoked || link.revoked {
            assert!(
                !is_active(app, &link.token).await,
                "case {case}: active after revocation: {}",
                link.claims
            );
        }
    }
    // Cases share the partners: a consent left active would cover the next case's chain.
    if !consent_revoked {
        tessera::storage::consents::revoke(
            &app.pool,
            &crate::helpers::admin_audit(app).await,
            consent.id,
            "compliance-officer",
            "end of case",
        )
        .await
        .unwrap();
    }
    issued
}

/// Marks the token and every token exchanged from it, transitively.
fn mark_revoked(chain: &mut [Link], index: usize) {
    chain[index].revoked = true;
    // Links are in issue order, so a parent always comes before its children.
    for child in index + 1..chain.len() {
        if chain[child]
            .parent
            .is_some_and(|parent| chain[parent].revoked)
        {
            chain[child].revoked = true;
        }
    }
}

async fn run(cases: usize) {
    let seed = std::env::var("CHAIN_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x7e55_e4a0_2026_1202_u64);
    let world = world().await;
    let mut rng = Rng(seed);
    let mut issued = 0;
    for case in 0..cases {
        issued += run_case(&world, &mut rng, case).await;
    }
    eprintln!("{issued} tokens issued in {cases} cases (seed {seed})");
    // The generator must reach issuance often enough for the invariants to mean something.
    assert!(
        issued >= cases / 5,
        "only {issued} tokens issued in {cases} cases (seed {seed})"
    );
}

#[tokio::test]
async fn random_exchange_chains_stay_within_the_original_grant() {
    let cases = std::env::var("CHAIN_TEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(300);
    run(cases).await;
}

#[tokio::test]
#[ignore = "nightly: thousands of chains"]
async fn many_random_exchange_chains_stay_within_the_original_grant() {
    run(3000).await;
}
