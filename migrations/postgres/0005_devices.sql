-- Device credentials (issue 11): see migrations/sqlite/0005_devices.sql for the why.
ALTER TABLE sessions ADD COLUMN name TEXT;
ALTER TABLE sessions ADD COLUMN secret_hash TEXT;
ALTER TABLE sessions ADD COLUMN conversations TEXT;
ALTER TABLE sessions ADD COLUMN can_send BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE sessions ADD COLUMN can_receive BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE sessions ADD COLUMN acks BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE sessions ADD COLUMN echo BOOLEAN NOT NULL DEFAULT TRUE;
CREATE UNIQUE INDEX sessions_secret ON sessions(secret_hash) WHERE secret_hash IS NOT NULL;

-- Short per-user conversation handles for the compact MQTT profile.
ALTER TABLE members ADD COLUMN handle BIGINT;
UPDATE members SET handle = ranked.n FROM (
    SELECT conversation_id, user_id,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY joined_at, conversation_id) AS n
    FROM members
) AS ranked
WHERE members.conversation_id = ranked.conversation_id AND members.user_id = ranked.user_id;
CREATE UNIQUE INDEX members_user_handle ON members(user_id, handle);

-- The INSERT computes MAX(handle) + 1 for the user; on PostgreSQL two transactions
-- adding the same user to two conversations at once could compute the same number, so
-- a per-user advisory lock (held to the end of the transaction) serializes them and
-- the number is computed again under it. Inserts go in user-id order, so the locks
-- are always taken in one order.
CREATE FUNCTION members_assign_handle() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('tidings.handle:' || NEW.user_id, 0));
    NEW.handle := (SELECT COALESCE(MAX(handle), 0) + 1 FROM members WHERE user_id = NEW.user_id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER members_handle BEFORE INSERT ON members
    FOR EACH ROW EXECUTE FUNCTION members_assign_handle();
