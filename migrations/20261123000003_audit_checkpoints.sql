-- Signed checkpoints over the audit chains, the key that signs them, retention, and the role
-- the server should run as.

-- The audit signing key (Ed25519), sealed like token signing keys. Its public half is
-- published so that exported segments verify offline.
CREATE TABLE audit_keys (
    kid                TEXT PRIMARY KEY,
    public_jwk         JSONB NOT NULL,
    sealed_private_key BYTEA NOT NULL,
    wrapped_data_key   BYTEA NOT NULL,
    kek_id             TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- `jws` signs {chain_id, seq, head, signed_at}: the chain's hash at seq.
CREATE TABLE audit_checkpoints (
    chain_id   UUID NOT NULL,
    seq        BIGINT NOT NULL CHECK (seq > 0),
    head_hash  BYTEA NOT NULL,
    kid        TEXT NOT NULL REFERENCES audit_keys (kid),
    jws        TEXT NOT NULL,
    signed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, seq)
);

CREATE TRIGGER audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Pruning is the one deletion allowed, and only through this function: it removes a chain's
-- records up to a signed checkpoint that is older than the retention period, so what remains
-- still verifies from that checkpoint.
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events'
       AND current_setting('tessera.audit_pruning', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE FUNCTION audit_prune(chain UUID, through_seq BIGINT, retention INTERVAL)
RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    removed BIGINT;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM audit_checkpoints c
         WHERE c.chain_id = chain AND c.seq = through_seq AND c.signed_at < now() - retention
    ) THEN
        RAISE EXCEPTION 'no checkpoint at % older than the retention period', through_seq;
    END IF;
    PERFORM set_config('tessera.audit_pruning', 'on', true);
    DELETE FROM audit_events e WHERE e.chain_id = chain AND e.seq <= through_seq;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('tessera.audit_pruning', 'off', true);
    RETURN removed;
END;
$$;

-- The role the server connects as (directly, or as a member): it may append and read the
-- trail, never change or remove it, and cannot touch the triggers, which belong to the
-- migration owner.
DO $$
BEGIN
    CREATE ROLE tessera_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;
GRANT SELECT, INSERT ON audit_events, audit_checkpoints TO tessera_app;
GRANT SELECT ON audit_keys TO tessera_app;
REVOKE ALL ON FUNCTION audit_prune(UUID, BIGINT, INTERVAL) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_prune(UUID, BIGINT, INTERVAL) TO tessera_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON partners, audiences, clients, client_audiences,
    signing_keys, revoked_tokens, client_assertion_jtis TO tessera_app;
GRANT INSERT ON audit_keys TO tessera_app;

-- Governance: when each client last authenticated, and when the certificate it last
-- presented expires (written in batches by each node, off the hot path).
ALTER TABLE clients ADD COLUMN certificate_not_after TIMESTAMPTZ;
