-- Token exchange: audience kinds for policy, the lineage of exchanged tokens, consent records.

ALTER TABLE audiences
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'standard' CHECK (kind IN ('standard', 'settlement')),
    ADD COLUMN cross_region_allowed BOOLEAN NOT NULL DEFAULT false;

-- Every exchanged token and the token it was exchanged from; revoking a token revokes its
-- descendants, and validation refuses a token with a revoked ancestor.
CREATE TABLE token_lineage (
    jti         UUID PRIMARY KEY,
    parent_jti  UUID NOT NULL,
    client_id   TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX token_lineage_parent ON token_lineage (parent_jti);
CREATE INDEX token_lineage_expiry ON token_lineage (expires_at);

-- Consent records, versioned: a change is a new row with the next version; the highest
-- version is the record's current state, older ones stay for audit.
CREATE TABLE consents (
    id               UUID NOT NULL,
    version          INTEGER NOT NULL CHECK (version > 0),
    grantor          TEXT NOT NULL REFERENCES partners (id),
    grantee_partner  TEXT NOT NULL REFERENCES partners (id),
    grantee_client   TEXT REFERENCES clients (id),
    scopes           TEXT[] NOT NULL,
    audiences        TEXT[] NOT NULL,
    effective_from   TIMESTAMPTZ NOT NULL,
    effective_until  TIMESTAMPTZ NOT NULL CHECK (effective_until > effective_from),
    legal_basis      TEXT NOT NULL,
    constraints      JSONB NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    changed_by       TEXT NOT NULL,
    changed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    revocation_reason TEXT,
    PRIMARY KEY (id, version)
);
CREATE INDEX consents_grant ON consents (grantor, grantee_partner);

GRANT SELECT, INSERT, DELETE ON token_lineage TO tessera_app;
GRANT SELECT, INSERT ON consents TO tessera_app;
