-- Device credentials (issue 11): a long-lived secret a device or bot uses as its MQTT
-- password (and REST bearer) with no login and no refresh. Each one is a session row,
-- so everything that ends sessions (logout-all, the admin CLI, account disable, the
-- revocation poll that carries revocations between processes) ends it too.
-- Only the SHA-256 of the secret is stored; the secret is shown once, at creation.
ALTER TABLE sessions ADD COLUMN name TEXT;
ALTER TABLE sessions ADD COLUMN secret_hash TEXT;
-- JSON array of conversation ids the credential is limited to; NULL = all of the user's.
ALTER TABLE sessions ADD COLUMN conversations TEXT;
ALTER TABLE sessions ADD COLUMN can_send BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE sessions ADD COLUMN can_receive BOOLEAN NOT NULL DEFAULT TRUE;
-- The device's choice to skip `ack` events (the PUBACK already says "stored") and the
-- echo of its user's own messages: bytes a constrained link need not carry.
ALTER TABLE sessions ADD COLUMN acks BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE sessions ADD COLUMN echo BOOLEAN NOT NULL DEFAULT TRUE;
CREATE UNIQUE INDEX sessions_secret ON sessions(secret_hash) WHERE secret_hash IS NOT NULL;

-- A short per-user handle for each conversation (1, 2, 3, ... in the order the user
-- joined), so the compact MQTT profile names a conversation in one or two bytes
-- instead of 16. Kept when the user leaves, so a handle never changes meaning.
ALTER TABLE members ADD COLUMN handle INTEGER;
UPDATE members SET handle = (
    SELECT COUNT(*) FROM members m2
    WHERE m2.user_id = members.user_id
      AND (m2.joined_at < members.joined_at
           OR (m2.joined_at = members.joined_at AND m2.conversation_id <= members.conversation_id))
);
CREATE UNIQUE INDEX members_user_handle ON members(user_id, handle);
