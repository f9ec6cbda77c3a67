//! Every node hears of every registry change within moments: a change's transaction sends a
//! notification on commit (PostgreSQL NOTIFY), and each node's listener drops what it cached
//! and re-reads client trust. Caches still expire on their own, so a node that missed a
//! notification (its listening connection dropped) is stale for at most their lifetime; it
//! also forgets everything whenever it reconnects.

use std::time::Duration;

use sqlx::PgPool;

/// Listens until stopped; `changed` runs after every notification and every reconnection.
pub async fn listen(pool: PgPool, changed: impl Fn() + Send + 'static) {
    {
        loop {
            let mut listener = match crate::storage::registry::registry_listener(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "not listening for registry changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Whatever changed while nobody listened.
            changed();
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        tracing::debug!(what = notification.payload(), "registry changed");
                        changed();
                    }
                    // The connection dropped; the listener reconnects on the next call, and
                    // notifications sent meanwhile are lost.
                    Ok(None) => changed(),
                    Err(error) => {
                        tracing::warn!(%error, "listening for registry changes failed");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
