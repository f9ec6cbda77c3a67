-- The audit trail. Each node appends to its own hash chain (chain_id, seq); `record` is the
-- canonical event, `hash` = SHA-256(prev_hash || canonical bytes of record). The queryable
-- columns are generated from the record, so they cannot drift from what the hash covers.

CREATE TABLE audit_events (
    chain_id     UUID NOT NULL,
    seq          BIGINT NOT NULL CHECK (seq > 0),
    record       JSONB NOT NULL,
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    kind         TEXT GENERATED ALWAYS AS (record ->> 'kind') STORED,
    outcome      TEXT GENERATED ALWAYS AS (record ->> 'outcome') STORED,
    client_id    TEXT GENERATED ALWAYS AS (record ->> 'client_id') STORED,
    partner      TEXT GENERATED ALWAYS AS (record ->> 'partner') STORED,
    audience     TEXT GENERATED ALWAYS AS (record ->> 'audience') STORED,
    consent_id   TEXT GENERATED ALWAYS AS (record ->> 'consent_id') STORED,
    txn          TEXT GENERATED ALWAYS AS (record ->> 'txn') STORED,
    jti          TEXT GENERATED ALWAYS AS (record ->> 'jti') STORED,
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
