-- Account administration (issue 10). A disabled account cannot log in, refresh or
-- connect; a deleted one keeps its row (messages still name it as their sender) but
-- loses its profile, credentials, devices and sessions.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
ALTER TABLE users ADD COLUMN deleted_at BIGINT;

-- Revocations made by another process (the admin CLI, another node) are found by
-- polling sessions by the time they ended.
CREATE INDEX sessions_revoked ON sessions(revoked_at) WHERE revoked_at IS NOT NULL;

-- Pixel dimensions of images, read from their headers at upload (NULL otherwise).
ALTER TABLE attachments ADD COLUMN width BIGINT;
ALTER TABLE attachments ADD COLUMN height BIGINT;

-- Privacy: when set, presence says online/offline but never when the user was last seen.
ALTER TABLE users ADD COLUMN hide_last_seen BOOLEAN NOT NULL DEFAULT FALSE;

-- Blocking: a blocked user cannot open a direct conversation with the blocker or send
-- into their direct conversation; the blocker stops seeing their typing and presence.
CREATE TABLE blocks (
    blocker_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blocked_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked ON blocks(blocked_id);

-- Who may add a user to groups and rooms: 'everyone', 'contacts' (people who share a
-- conversation with them) or 'nobody'; the others send an invitation instead.
ALTER TABLE users ADD COLUMN group_adds TEXT NOT NULL DEFAULT 'everyone'
    CHECK (group_adds IN ('everyone', 'contacts', 'nobody'));

CREATE TABLE invitations (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    invited_by      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at      BIGINT NOT NULL,
    UNIQUE (conversation_id, user_id)
);
CREATE INDEX invitations_user ON invitations(user_id);
