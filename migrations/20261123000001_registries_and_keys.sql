-- Partners, resource servers (audiences), clients, signing keys, revocations and assertion replay.

CREATE TABLE partners (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    name        TEXT NOT NULL,
    region      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE audiences (
    id                        TEXT PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9+.-]*:[^\s]+$'),
    name                      TEXT NOT NULL,
    scopes                    TEXT[] NOT NULL,
    max_lifetime_s            INTEGER NOT NULL CHECK (max_lifetime_s > 0),
    require_certificate_bound BOOLEAN NOT NULL DEFAULT true,
    region                    TEXT NOT NULL,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE clients (
    id                  TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    partner_id          TEXT NOT NULL REFERENCES partners (id),
    name                TEXT NOT NULL,
    auth_method         TEXT NOT NULL CHECK (auth_method IN
                            ('tls_client_auth', 'self_signed_tls_client_auth', 'private_key_jwt')),
    -- tls_client_auth: exactly one registered identity (RFC 8705 §2.1.2).
    tls_subject_dn      TEXT,
    tls_san_dns         TEXT,
    tls_san_uri         TEXT,
    tls_san_ip          INET,
    tls_san_email       TEXT,
    -- self_signed_tls_client_auth and private_key_jwt: the client's public keys.
    jwks                JSONB,
    grant_types         TEXT[] NOT NULL DEFAULT '{client_credentials}',
    max_lifetime_s      INTEGER NOT NULL CHECK (max_lifetime_s > 0),
    -- The audience this client serves as a resource server (introspection scope), if any.
    resource_audience   TEXT REFERENCES audiences (id),
    is_admin            BOOLEAN NOT NULL DEFAULT false,
    status              TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at        TIMESTAMPTZ,
    CHECK (
        (auth_method = 'tls_client_auth'
            AND num_nonnulls(tls_subject_dn, tls_san_dns, tls_san_uri, tls_san_ip, tls_san_email) = 1
            AND jwks IS NULL)
        OR (auth_method <> 'tls_client_auth'
            AND num_nonnulls(tls_subject_dn, tls_san_dns, tls_san_uri, tls_san_ip, tls_san_email) = 0
            AND jsonb_typeof(jwks -> 'keys') = 'array')
    )
);

CREATE TABLE client_audiences (
    client_id   TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    audience_id TEXT NOT NULL REFERENCES audiences (id),
    scopes      TEXT[] NOT NULL,
    PRIMARY KEY (client_id, audience_id)
);

-- Private halves are envelope-encrypted: AES-256-GCM under a per-key data key, which is itself
-- wrapped by the key-encryption key named by kek_id (held in configuration, never here).
CREATE TABLE signing_keys (
    kid                TEXT PRIMARY KEY,
    algorithm          TEXT NOT NULL CHECK (algorithm IN ('ES256', 'EdDSA', 'PS256')),
    public_jwk         JSONB NOT NULL,
    sealed_private_key BYTEA NOT NULL,
    wrapped_data_key   BYTEA NOT NULL,
    kek_id             TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    activated_at       TIMESTAMPTZ,
    retired_at         TIMESTAMPTZ,
    -- A retired key stays in the JWKS until every token it signed has expired.
    publish_until      TIMESTAMPTZ
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys ((true)) WHERE state = 'next';

-- Tokens are stateless JWTs; only revocations are stored, until the token would have expired.
CREATE TABLE revoked_tokens (
    jti         UUID PRIMARY KEY,
    client_id   TEXT NOT NULL,
    revoked_by  TEXT NOT NULL,
    revoked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);

-- Single-use client assertions (RFC 7523 §3): a row lives until exp plus leeway.
CREATE TABLE client_assertion_jtis (
    client_id   TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_assertion_jtis_expiry ON client_assertion_jtis (expires_at);
