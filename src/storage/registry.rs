//! Clients and audiences as this node sees them, read through a short-lived cache.

use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::cache::Cache;
use crate::domain::audiences::{Audience, AudienceId};
use crate::domain::clients::Client;
use crate::domain::ids::ClientId;
use crate::storage::clients::{RegistryError, find};

/// Registry entries a node keeps; beyond it the oldest goes first.
const REGISTRY_CACHE_ENTRIES: usize = 10_000;

/// Clients and audiences as this node sees them: read through a short-lived cache so the
/// token hot path rarely touches the database, while a suspension or a change reaches every
/// node within `registry.cache_ttl_ms`. Unknown ids are not cached, so probing cannot grow it.
pub struct Registry {
    pool: PgPool,
    clients: Cache<ClientId, Arc<Client>>,
    audiences: Cache<AudienceId, Arc<Audience>>,
}

impl Registry {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            clients: Cache::new(REGISTRY_CACHE_ENTRIES, Some(ttl)),
            audiences: Cache::new(REGISTRY_CACHE_ENTRIES, Some(ttl)),
        }
    }

    /// Forgets every cached entry: the registry changed (see `service::admin::propagation`).
    pub fn forget_all(&self) {
        self.clients.clear();
        self.audiences.clear();
    }

    pub async fn client(&self, id: &ClientId) -> Result<Option<Arc<Client>>, RegistryError> {
        if let Some(client) = self.clients.get(id) {
            return Ok(Some(client));
        }
        let mut conn = self.pool.acquire().await?;
        let client = find(&mut conn, id).await?.map(Arc::new);
        if let Some(client) = &client {
            self.clients.insert(id.clone(), client.clone());
        }
        Ok(client)
    }

    pub async fn audience(&self, id: &AudienceId) -> Result<Option<Arc<Audience>>, RegistryError> {
        if let Some(audience) = self.audiences.get(id) {
            return Ok(Some(audience));
        }
        let mut conn = self.pool.acquire().await?;
        let audience = crate::storage::audiences::find(&mut conn, id)
            .await?
            .map(Arc::new);
        if let Some(audience) = &audience {
            self.audiences.insert(id.clone(), audience.clone());
        }
        Ok(audience)
    }
}

/// The channel on which every registry change is announced to every node, on commit.
pub const REGISTRY_CHANNEL: &str = "tessera_registry";

/// Tells every node (on commit) that the registry changed, so that caches are dropped.
pub async fn notify_registry_changed(
    conn: &mut PgConnection,
    what: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REGISTRY_CHANNEL)
        .bind(what)
        .execute(conn)
        .await?;
    Ok(())
}

/// A connection listening on [`REGISTRY_CHANNEL`]; it reconnects by itself after a drop.
pub async fn registry_listener(
    pool: &sqlx::PgPool,
) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(REGISTRY_CHANNEL).await?;
    Ok(listener)
}
