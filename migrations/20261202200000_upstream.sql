-- Upstream bank-token broker (issue 12): connections to banks, the audiences they back, and one
-- fenced, envelope-encrypted credential per audience.

CREATE TABLE upstream_connections (
    id                      TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    bank_name               TEXT NOT NULL,
    token_endpoint          TEXT NOT NULL CHECK (token_endpoint ~ '^https://'),
    api_base_url            TEXT NOT NULL CHECK (api_base_url ~ '^https://'),
    revocation_endpoint     TEXT CHECK (revocation_endpoint ~ '^https://'),
    introspection_endpoint  TEXT CHECK (introspection_endpoint ~ '^https://'),
    probe_url               TEXT CHECK (probe_url ~ '^https://'),
    -- Tessera's client id at the bank.
    client_id               TEXT NOT NULL CHECK (length(client_id) BETWEEN 1 AND 256),
    auth_method             TEXT NOT NULL CHECK (auth_method IN ('tls_client_auth')),
    -- Tessera's own certificate chain (public) and its private key, sealed like signing keys:
    -- AES-256-GCM under a data key wrapped by the configured key-encryption key.
    client_certificate_pem  TEXT NOT NULL,
    sealed_client_key       BYTEA NOT NULL,
    client_key_data_key     BYTEA NOT NULL,
    client_key_kek_id       TEXT NOT NULL,
    -- The anchors the bank's server certificate must chain to.
    server_ca_pem           TEXT NOT NULL,
    -- The bank keeps one live token per client: a new token kills the old one.
    single_live_token       BOOLEAN NOT NULL DEFAULT false,
    connect_timeout_ms      INTEGER NOT NULL DEFAULT 2000 CHECK (connect_timeout_ms BETWEEN 1 AND 10000),
    request_timeout_ms      INTEGER NOT NULL DEFAULT 5000 CHECK (request_timeout_ms BETWEEN 1 AND 10000),
    -- Share of a token's lifetime after which it is rotated: never later than 90 %.
    rotation_threshold_pct  SMALLINT NOT NULL DEFAULT 75 CHECK (rotation_threshold_pct BETWEEN 10 AND 90),
    delivery                TEXT NOT NULL DEFAULT 'inject' CHECK (delivery IN ('inject', 'handout')),
    status                  TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    -- Token, revocation and introspection calls per minute, counted here so that every node
    -- spends the same budget.
    requests_per_minute     INTEGER NOT NULL DEFAULT 60 CHECK (requests_per_minute BETWEEN 1 AND 10000),
    budget_window_start     TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    budget_used             INTEGER NOT NULL DEFAULT 0 CHECK (budget_used >= 0),
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A downstream audience backed by a bank: the connection it uses and the bank scopes it gets.
CREATE TABLE upstream_audiences (
    audience_id    TEXT PRIMARY KEY REFERENCES audiences (id),
    connection_id  TEXT NOT NULL REFERENCES upstream_connections (id),
    bank_scopes    TEXT[] NOT NULL
);
CREATE INDEX upstream_audiences_connection ON upstream_audiences (connection_id);

-- One credential per audience. `generation` is the fencing number: every claim bumps it, and
-- only the holder of the current generation can store a token. `token_generation` is the
-- generation the stored token was fetched under, which its sealing authenticates.
CREATE TABLE upstream_credentials (
    audience_id           TEXT PRIMARY KEY REFERENCES upstream_audiences (audience_id),
    generation            BIGINT NOT NULL DEFAULT 0 CHECK (generation >= 0),
    state                 TEXT NOT NULL DEFAULT 'initialized'
                              CHECK (state IN ('initialized', 'active', 'expiring', 'rotating', 'revoked')),
    token_generation      BIGINT,
    issued_at             TIMESTAMPTZ,
    refresh_at            TIMESTAMPTZ,
    expires_at            TIMESTAMPTZ,
    sealed_token          BYTEA,
    token_data_key        BYTEA,
    sealed_refresh_token  BYTEA,
    refresh_data_key      BYTEA,
    kek_id                TEXT,
    lease_holder          TEXT,
    -- When the current lease was claimed: a token fetched under it counts its life from here.
    claimed_at            TIMESTAMPTZ,
    lease_expires_at      TIMESTAMPTZ,
    next_try              TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    attempts              INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- A bank's 429 `Retry-After`, honoured by every node.
    retry_after           TIMESTAMPTZ,
    last_error            TEXT,
    rotated_at            TIMESTAMPTZ,
    CHECK (num_nonnulls(sealed_token, token_data_key, kek_id, token_generation, issued_at,
                        refresh_at, expires_at) IN (0, 7)),
    CHECK ((sealed_refresh_token IS NULL) = (refresh_data_key IS NULL)),
    CHECK ((lease_holder IS NULL) = (lease_expires_at IS NULL))
);

-- The application spends the request budget; everything else about a connection is the operator's.
GRANT SELECT, UPDATE (budget_window_start, budget_used) ON upstream_connections TO tessera_app;
GRANT SELECT ON upstream_audiences TO tessera_app;
GRANT SELECT, UPDATE ON upstream_credentials TO tessera_app;
