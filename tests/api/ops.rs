use std::time::Duration;

use crate::helpers::{TestDatabase, scratch_dir, spawn_app, spawn_app_on, start_cluster};

#[tokio::test]
async fn every_response_carries_a_fresh_request_id() {
    let app = spawn_app().await;
    let client = app.client(None);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = client.get(app.url("/healthz")).send().await.unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "not a uuid: {id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let client = app.client(None);
    client.get(app.url("/healthz")).send().await.unwrap();
    client.get(app.url("/no/such/path")).send().await.unwrap();
    let response = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = response.text().await.unwrap();
    assert!(
        body.contains(
            r#"tessera_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        )
    );
    assert!(
        body.contains(
            r#"tessera_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
        )
    );
    assert!(body.contains("tessera_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn readyz_is_503_while_the_database_is_down_and_200_once_it_is_back() {
    let data_dir = scratch_dir().join(format!("readyz-{}", uuid::Uuid::new_v4().simple()));
    let (cluster, _) = start_cluster(&data_dir).await;
    let port = cluster.port();
    let db = TestDatabase::create_on(&cluster.admin_url()).await;
    let app = spawn_app_on(db, |settings| {
        settings.database.connect_timeout = Duration::from_millis(500);
    })
    .await;
    let client = app.client(None);

    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    cluster.stop().await.unwrap();
    let down = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["reason"], "database unreachable");
    // Liveness does not depend on the database.
    let alive = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);

    let (restarted, initialised) = tessera::dev::postgres::LocalCluster::start(&data_dir, port)
        .await
        .unwrap();
    assert!(!initialised);
    let back = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(back.status(), 200);
    drop(app);
    restarted.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.database.max_connections = 1;
        settings.database.connect_timeout = Duration::from_secs(5);
    })
    .await;
    // Holding the pool's only connection keeps /readyz waiting inside its handler.
    let held = app.pool.acquire().await.unwrap();
    let client = app.client(None);
    let in_flight = tokio::spawn(client.get(app.url("/readyz")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = tokio::spawn(app.handle.clone().stop(true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the request should still be in flight"
    );
    drop(held);

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    drop(client);
    stopping.await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Once stopped, nothing accepts connections any more.
    let after = tokio::net::TcpStream::connect(app.addr).await;
    assert!(after.is_err());
}
