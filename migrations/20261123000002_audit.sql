-- The audit trail. Each node appends to its own hash chain (chain_id, seq);
-- hash = SHA-256(prev_hash || record), where record is the canonical JSON text.

CREATE TABLE audit_events (
    chain_id     UUID NOT NULL,
    seq          BIGINT NOT NULL CHECK (seq > 0),
    -- The canonical JSON text exactly as hashed; the columns below repeat some of its fields
    -- for queries, and verification checks that they agree with it.
    record       TEXT NOT NULL,
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    kind         TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    client_id    TEXT,
    partner      TEXT,
    audience     TEXT,
    consent_id   TEXT,
    txn          TEXT,
    jti          TEXT,
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX audit_events_time ON audit_events (recorded_at);
CREATE INDEX audit_events_client ON audit_events (client_id, recorded_at);
CREATE INDEX audit_events_jti ON audit_events (jti) WHERE jti IS NOT NULL;

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
