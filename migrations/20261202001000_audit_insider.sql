-- What the application role alone cannot do to the audit trail: choose the retention, lift
-- the append-only rule, back-date a checkpoint, or make a chain disappear without trace.

-- Retention is the database owner's decision: the pruning function reads it from here, and
-- the application role may only read it.
CREATE TABLE audit_retention (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    minimum   INTERVAL NOT NULL CHECK (minimum >= interval '1 day')
);
INSERT INTO audit_retention (minimum) VALUES (interval '2557 days');

-- Every chain a node opens, signed by the audit key (`jws` signs {chain_id, node, opened_at}),
-- so verification knows which chains must exist and which node wrote them.
CREATE TABLE audit_chains (
    chain_id   UUID PRIMARY KEY,
    node       TEXT NOT NULL,
    kid        TEXT NOT NULL REFERENCES audit_keys (kid),
    jws        TEXT NOT NULL,
    opened_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every pruning, so that a chain whose records were all pruned is told apart from a chain
-- whose records went missing.
CREATE TABLE audit_prunes (
    chain_id    UUID NOT NULL,
    through_seq BIGINT NOT NULL CHECK (through_seq > 0),
    pruned_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, through_seq)
);

-- Chains pruned before this log existed start where they were pruned to.
INSERT INTO audit_prunes (chain_id, through_seq)
SELECT chain_id, min(seq) - 1 FROM audit_events GROUP BY chain_id HAVING min(seq) > 1;

-- The only role allowed to delete audit records. Nobody is a member: its privileges are used
-- solely by `audit_prune`, which it owns and which runs as it (SECURITY DEFINER).
DO $$
BEGIN
    CREATE ROLE tessera_audit_pruner NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;

-- The pruning exception is recognised by the role executing the delete, which a session
-- cannot assume without membership, instead of a setting that any session may change.
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events'
       AND current_user = 'tessera_audit_pruner' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- A checkpoint's age is measured from when it was stored, never from a time the writer
-- claims, so a back-dated checkpoint cannot open older records to pruning early.
CREATE FUNCTION audit_checkpoints_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.signed_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_checkpoints_stamp
    BEFORE INSERT ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_stamp();
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE FUNCTION audit_chains_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.opened_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_chains_stamp
    BEFORE INSERT ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION audit_chains_stamp();

CREATE TRIGGER audit_chains_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_chains_no_truncate
    BEFORE TRUNCATE ON audit_chains
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_prunes_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_prunes
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_prunes_no_truncate
    BEFORE TRUNCATE ON audit_prunes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

DROP FUNCTION audit_prune(UUID, BIGINT, INTERVAL);

-- Removes a chain's records up to a checkpoint that is older than the owner's retention and
-- vouches for the record it names, and logs the pruning.
CREATE FUNCTION audit_prune(chain UUID, through_seq BIGINT)
RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    removed BIGINT;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM audit_checkpoints c
          JOIN audit_events e ON e.chain_id = c.chain_id AND e.seq = c.seq
         WHERE c.chain_id = chain AND c.seq = through_seq AND e.hash = c.head_hash
           AND c.signed_at < now() - (SELECT minimum FROM audit_retention)
    ) THEN
        RAISE EXCEPTION 'no checkpoint at % older than the retention period', through_seq;
    END IF;
    DELETE FROM audit_events e WHERE e.chain_id = chain AND e.seq <= through_seq;
    GET DIAGNOSTICS removed = ROW_COUNT;
    INSERT INTO audit_prunes (chain_id, through_seq) VALUES (chain, through_seq);
    RETURN removed;
END;
$$;

GRANT SELECT, DELETE ON audit_events TO tessera_audit_pruner;
GRANT SELECT ON audit_checkpoints, audit_retention TO tessera_audit_pruner;
GRANT INSERT ON audit_prunes TO tessera_audit_pruner;
ALTER FUNCTION audit_prune(UUID, BIGINT) OWNER TO tessera_audit_pruner;
REVOKE ALL ON FUNCTION audit_prune(UUID, BIGINT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_prune(UUID, BIGINT) TO tessera_app;

GRANT SELECT ON audit_retention, audit_prunes TO tessera_app;
GRANT SELECT, INSERT ON audit_chains TO tessera_app;
