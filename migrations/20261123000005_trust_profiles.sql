-- Partner trust profiles, versioned: every change is a new version; the active version is a
-- pointer; old versions stay readable for audit.

CREATE TABLE trust_profiles (
    partner_id               TEXT NOT NULL REFERENCES partners (id),
    version                  INTEGER NOT NULL CHECK (version > 0),
    issuers                  TEXT[] NOT NULL CHECK (cardinality(issuers) > 0),
    jwks                     JSONB,
    jwks_uri                 TEXT CHECK (jwks_uri LIKE 'https://%'),
    -- Asymmetric algorithms only: never `none`, never HMAC.
    algorithms               TEXT[] NOT NULL CHECK (cardinality(algorithms) > 0
                                 AND algorithms <@ ARRAY['ES256', 'ES384', 'EdDSA', 'PS256', 'PS384', 'RS256']),
    max_assertion_lifetime_s INTEGER NOT NULL CHECK (max_assertion_lifetime_s > 0),
    -- Claims every assertion must carry, with these exact values.
    required_claims          JSONB NOT NULL DEFAULT '{}',
    single_use               BOOLEAN NOT NULL DEFAULT true,
    -- PEM CA certificates the partner's client certificates chain to (feeds mTLS trust).
    client_ca_pem            TEXT,
    audiences                TEXT[] NOT NULL,
    scopes                   TEXT[] NOT NULL,
    region                   TEXT NOT NULL,
    status                   TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_by               TEXT NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, version),
    CHECK (num_nonnulls(jwks, jwks_uri) = 1)
);

CREATE TABLE trust_profile_heads (
    partner_id     TEXT PRIMARY KEY REFERENCES partners (id),
    active_version INTEGER NOT NULL,
    FOREIGN KEY (partner_id, active_version) REFERENCES trust_profiles (partner_id, version)
);

-- Single-use partner assertions, kept until exp plus leeway.
CREATE TABLE partner_assertion_jtis (
    issuer      TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (issuer, jti)
);

GRANT SELECT, INSERT, UPDATE ON trust_profiles, trust_profile_heads TO tessera_app;
GRANT SELECT, INSERT, DELETE ON partner_assertion_jtis TO tessera_app;
