-- Several Tidings nodes on one database (issue 12).

-- The session behind each MQTT client id, for the external broker's ACL hook: see
-- migrations/sqlite/0007_multi_node.sql for the why.
CREATE TABLE mqtt_clients (
    client_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    connected_at BIGINT NOT NULL
);
CREATE INDEX mqtt_clients_session ON mqtt_clients(session_id);

-- Every change the in-memory membership index (and the revocations it announces) must
-- hear of is sent on channel `tidings_index` by a trigger, so it is part of the
-- writing transaction (NOTIFY is delivered at commit, never for a rollback) whatever
-- wrote it: a node's API, its worker, or the admin CLI. Every node LISTENs and applies
-- them (store/src/postgres.rs). `n` names the writing node (its connections set
-- `tidings.node`; NULL for anyone else), so a node skips what it applied itself.
-- Payloads are a few ids, far below NOTIFY's 8000-byte limit.
CREATE FUNCTION tidings_notify_index(change jsonb) RETURNS void AS $$
BEGIN
    PERFORM pg_notify('tidings_index',
        (change || jsonb_build_object('n', NULLIF(current_setting('tidings.node', true), '')))::text);
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION tidings_members_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.left_at IS NULL THEN
            PERFORM tidings_notify_index(jsonb_build_object('t', 'del', 'c', OLD.conversation_id, 'u', OLD.user_id));
        END IF;
        RETURN OLD;
    END IF;
    IF NEW.left_at IS NULL AND (TG_OP = 'INSERT' OR OLD.left_at IS NOT NULL) THEN
        PERFORM tidings_notify_index(jsonb_build_object('t', 'add', 'c', NEW.conversation_id, 'u', NEW.user_id, 'h', NEW.handle));
    ELSIF TG_OP = 'UPDATE' AND NEW.left_at IS NOT NULL AND OLD.left_at IS NULL THEN
        PERFORM tidings_notify_index(jsonb_build_object('t', 'del', 'c', NEW.conversation_id, 'u', NEW.user_id));
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER members_notify AFTER INSERT OR UPDATE OF left_at OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION tidings_members_changed();

CREATE FUNCTION tidings_conversation_created() RETURNS trigger AS $$
BEGIN
    PERFORM tidings_notify_index(jsonb_build_object('t', 'kind', 'c', NEW.id, 'k', NEW.kind));
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER conversations_notify AFTER INSERT ON conversations
    FOR EACH ROW WHEN (NEW.kind <> 'group') EXECUTE FUNCTION tidings_conversation_created();

CREATE FUNCTION tidings_blocks_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tidings_notify_index(jsonb_build_object('t', 'block', 'by', NEW.blocker_id, 'u', NEW.blocked_id));
        RETURN NEW;
    END IF;
    PERFORM tidings_notify_index(jsonb_build_object('t', 'unblock', 'by', OLD.blocker_id, 'u', OLD.blocked_id));
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER blocks_notify AFTER INSERT OR DELETE ON blocks
    FOR EACH ROW EXECUTE FUNCTION tidings_blocks_changed();

-- Device credentials are session rows, so this covers their revocation too.
CREATE FUNCTION tidings_session_revoked() RETURNS trigger AS $$
BEGIN
    PERFORM tidings_notify_index(jsonb_build_object('t', 'end', 's', NEW.id));
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER sessions_notify AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION tidings_session_revoked();
