//! Removal of rows that guard nothing any more: replay records, revocations and lineage are
//! kept only while the tokens and assertions they guard could still be presented (an
//! exchanged token never outlives its parent).

use sqlx::PgPool;

/// A table whose rows carry an `expires_at` after which they may go.
#[derive(Debug, Clone, Copy)]
pub enum Expiring {
    AssertionJtis,
    RevokedTokens,
    TokenLineage,
}

impl Expiring {
    pub const ALL: [Self; 3] = [Self::AssertionJtis, Self::RevokedTokens, Self::TokenLineage];

    pub fn table(self) -> &'static str {
        match self {
            Self::AssertionJtis => "assertion_jtis",
            Self::RevokedTokens => "revoked_tokens",
            Self::TokenLineage => "token_lineage",
        }
    }
}

/// Deletes the table's expired rows.
pub async fn delete_expired(pool: &PgPool, table: Expiring) -> Result<(), sqlx::Error> {
    let statement = match table {
        Expiring::AssertionJtis => "DELETE FROM assertion_jtis WHERE expires_at < now()",
        Expiring::RevokedTokens => "DELETE FROM revoked_tokens WHERE expires_at < now()",
        Expiring::TokenLineage => "DELETE FROM token_lineage WHERE expires_at < now()",
    };
    sqlx::query(statement).execute(pool).await?;
    Ok(())
}
