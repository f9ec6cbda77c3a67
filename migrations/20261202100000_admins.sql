-- Admins (issue 11): people and automation with their own certificate identity and roles,
-- never OAuth clients; governed changes of the registry (four-eyes proposals); versions for
-- optimistic concurrency on every resource the admin API edits.

CREATE TABLE admins (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    -- The certificate's subject in RFC 4514 form, as Tessera prints it; the certificate must
    -- also chain to the operator's admin trust anchor (`admin.client_ca`).
    subject_dn  TEXT NOT NULL UNIQUE,
    -- Every subject alternative name of the registered certificate (`dns:`, `uri:`, `email:`,
    -- `ip:`), kept so that no OAuth client can be registered under one of them.
    san         TEXT[] NOT NULL DEFAULT '{}',
    roles       TEXT[] NOT NULL CHECK (cardinality(roles) > 0
                    AND roles <@ ARRAY['viewer', 'editor', 'approver', 'auditor']),
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version > 0),
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A certificate identity is an admin or an OAuth client, never both: whichever is registered
-- second is refused, whatever path registers it (API, seed, hand-written SQL).
CREATE FUNCTION admin_client_identity_conflict(
    dn TEXT, dns TEXT, uri TEXT, email TEXT, ip INET
) RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM admins a
         WHERE a.subject_dn = dn
            OR ('dns:' || lower(dns)) = ANY (a.san)
            OR ('uri:' || uri) = ANY (a.san)
            OR ('email:' || email) = ANY (a.san)
            OR ('ip:' || host(ip)) = ANY (a.san)
    )
$$;

CREATE FUNCTION clients_not_admins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.auth_method = 'tls_client_auth' AND admin_client_identity_conflict(
        NEW.tls_subject_dn, NEW.tls_san_dns, NEW.tls_san_uri, NEW.tls_san_email, NEW.tls_san_ip
    ) THEN
        RAISE EXCEPTION 'client %: its certificate identity is an admin''s', NEW.id
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'clients_not_admins';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER clients_not_admins
    BEFORE INSERT OR UPDATE ON clients
    FOR EACH ROW EXECUTE FUNCTION clients_not_admins();

CREATE FUNCTION admins_not_clients() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM clients c
         WHERE c.auth_method = 'tls_client_auth'
           AND (c.tls_subject_dn = NEW.subject_dn
                OR ('dns:' || lower(c.tls_san_dns)) = ANY (NEW.san)
                OR ('uri:' || c.tls_san_uri) = ANY (NEW.san)
                OR ('email:' || c.tls_san_email) = ANY (NEW.san)
                OR ('ip:' || host(c.tls_san_ip)) = ANY (NEW.san))
    ) THEN
        RAISE EXCEPTION 'admin %: its certificate identity is an OAuth client''s', NEW.id
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'admins_not_clients';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER admins_not_clients
    BEFORE INSERT OR UPDATE ON admins
    FOR EACH ROW EXECUTE FUNCTION admins_not_clients();

-- Optimistic concurrency: the admin API's ETag.
ALTER TABLE partners ADD COLUMN version INTEGER NOT NULL DEFAULT 1 CHECK (version > 0);

-- A change that widens reach waits here until an approver other than its author decides.
CREATE TABLE proposals (
    id          UUID PRIMARY KEY,
    -- What to change, as the admin API's own request: the kind of change, its target and body.
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    body        JSONB NOT NULL,
    -- The version of the target the proposal was made against (none for a creation).
    base_version INTEGER,
    -- Before and after, as the approver reviews them.
    diff        JSONB NOT NULL,
    author      TEXT NOT NULL REFERENCES admins (id),
    status      TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'approved', 'rejected')),
    decided_by  TEXT REFERENCES admins (id),
    decided_at  TIMESTAMPTZ,
    reason      TEXT,
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version > 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'pending') = (decided_by IS NULL)),
    CHECK (decided_by IS NULL OR decided_by <> author)
);
CREATE INDEX proposals_pending ON proposals (created_at) WHERE status = 'pending';

GRANT SELECT, INSERT, UPDATE ON admins, proposals TO tessera_app;

ALTER TABLE clients ADD COLUMN version INTEGER NOT NULL DEFAULT 1 CHECK (version > 0);
ALTER TABLE audiences ADD COLUMN version INTEGER NOT NULL DEFAULT 1 CHECK (version > 0);

-- "Why was I denied": the audit trail is looked up by the request id a response carried.
CREATE INDEX audit_events_request_id ON audit_events ((record::jsonb ->> 'request_id'))
    WHERE (record::jsonb ->> 'request_id') IS NOT NULL;
