-- Trust boundaries between partners (issue 9).

-- A tls_client_auth client names the trust anchor its certificate must chain to: the
-- operator's client CA (`server`) or its own partner's trust-profile CA (`partner`). Existing
-- clients keep the operator's CA only, so no partner's CA gains reach over them.
ALTER TABLE clients
    ADD COLUMN tls_anchor TEXT CHECK (tls_anchor IN ('server', 'partner'));
UPDATE clients SET tls_anchor = 'server' WHERE auth_method = 'tls_client_auth';
ALTER TABLE clients
    ADD CONSTRAINT clients_tls_anchor_only_for_tls
        CHECK ((auth_method = 'tls_client_auth') = (tls_anchor IS NOT NULL));

-- One certificate identity per anchor: otherwise one certificate would authenticate several
-- clients, and which one it is would depend on the client_id the caller picks.
CREATE UNIQUE INDEX clients_one_identity_per_anchor ON clients (
    (CASE tls_anchor WHEN 'partner' THEN partner_id ELSE '' END),
    (COALESCE('dn:' || tls_subject_dn, 'dns:' || lower(tls_san_dns), 'uri:' || tls_san_uri,
              'ip:' || host(tls_san_ip), 'email:' || tls_san_email))
) WHERE auth_method = 'tls_client_auth';

-- A pinned self-signed certificate belongs to exactly one client: each such client registers
-- exactly one key, and no two clients the same certificate. (NOT VALID: existing rows are
-- left for the operator to review; every new or changed row is checked.)
ALTER TABLE clients
    ADD CONSTRAINT clients_self_signed_one_certificate
        CHECK (auth_method <> 'self_signed_tls_client_auth'
               OR (jsonb_array_length(jwks -> 'keys') = 1
                   AND jsonb_array_length(jwks -> 'keys' -> 0 -> 'x5c') = 1)) NOT VALID;
CREATE UNIQUE INDEX clients_one_pinned_certificate ON clients ((jwks -> 'keys' -> 0 -> 'x5c' ->> 0))
    WHERE auth_method = 'self_signed_tls_client_auth';

-- A trust profile may require the JOSE `typ` of its partner's JWTs (RFC 8725 §3.11).
ALTER TABLE trust_profiles ADD COLUMN required_typ TEXT;

-- The actor token an exchanged token was issued with is an ancestor too: revoking the actor
-- token revokes what was issued with it.
ALTER TABLE token_lineage
    ALTER COLUMN parent_jti DROP NOT NULL,
    ADD COLUMN actor_jti UUID,
    ADD CONSTRAINT token_lineage_has_an_ancestor CHECK (num_nonnulls(parent_jti, actor_jti) > 0);
CREATE INDEX token_lineage_actor ON token_lineage (actor_jti) WHERE actor_jti IS NOT NULL;

-- One replay store for every single-use assertion (RFC 7523 §3, RFC 8693 partner JWTs).
CREATE TABLE assertion_jtis (
    kind        TEXT NOT NULL CHECK (kind IN ('client_assertion', 'partner_assertion')),
    issuer      TEXT NOT NULL,
    jti         TEXT NOT NULL CHECK (length(jti) BETWEEN 1 AND 256),
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, issuer, jti)
);
CREATE INDEX assertion_jtis_expiry ON assertion_jtis (expires_at);
INSERT INTO assertion_jtis (kind, issuer, jti, expires_at)
    SELECT 'client_assertion', client_id, jti, expires_at FROM client_assertion_jtis
     WHERE length(jti) BETWEEN 1 AND 256;
INSERT INTO assertion_jtis (kind, issuer, jti, expires_at)
    SELECT 'partner_assertion', issuer, jti, expires_at FROM partner_assertion_jtis
     WHERE length(jti) BETWEEN 1 AND 256;
DROP TABLE client_assertion_jtis, partner_assertion_jtis;
GRANT SELECT, INSERT, DELETE ON assertion_jtis TO tessera_app;

-- One issuer vouches for one partner, enforced by a key rather than a read before the insert:
-- otherwise two concurrent publications could both claim an issuer.
CREATE TABLE trust_issuers (
    issuer      TEXT PRIMARY KEY,
    partner_id  TEXT NOT NULL REFERENCES partners (id)
);
INSERT INTO trust_issuers (issuer, partner_id)
    SELECT DISTINCT ON (issuer) issuer, p.partner_id
      FROM trust_profiles p, unnest(p.issuers) AS issuer
     ORDER BY issuer, p.created_at
    ON CONFLICT DO NOTHING;
GRANT SELECT, INSERT ON trust_issuers TO tessera_app;
