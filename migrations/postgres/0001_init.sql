-- Tidings schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_init.sql:
-- same tables, same columns, same version numbers.
-- Times are Unix milliseconds (BIGINT) in both dialects, so rows compare and
-- serialize the same way everywhere.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT,
    password_hash TEXT NOT NULL,
    -- last per-user inbox sequence number handed out (see inbox_events)
    inbox_seq     BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    id           TEXT NOT NULL,
    name         TEXT,
    codec        TEXT NOT NULL DEFAULT 'json',
    push_token   TEXT,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT,
    PRIMARY KEY (user_id, id)
);

-- A session is one login on one device: the family of refresh tokens that rotate from
-- it. Access JWTs name their session (sid), so revoking it ends both kinds of token.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device_id  TEXT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user ON sessions(user_id);

-- Only the SHA-256 of a refresh token is stored.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'room')),
    name             TEXT,
    topic            TEXT,
    -- "{smaller user id}:{larger user id}" for direct conversations: one per pair
    direct_key       TEXT UNIQUE,
    created_by       TEXT NOT NULL REFERENCES users(id),
    created_at       BIGINT NOT NULL,
    -- last per-conversation message sequence number handed out
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_activity_at BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    read_seq        BIGINT NOT NULL DEFAULT 0,
    delivered_seq   BIGINT NOT NULL DEFAULT 0,
    archived        BOOLEAN NOT NULL DEFAULT FALSE,
    muted           BOOLEAN NOT NULL DEFAULT FALSE,
    joined_at       BIGINT NOT NULL,
    left_at         BIGINT,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE attachments (
    id          TEXT PRIMARY KEY,
    uploader_id TEXT NOT NULL REFERENCES users(id),
    storage_key TEXT NOT NULL UNIQUE,
    mime        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    filename    TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    sender_id       TEXT NOT NULL REFERENCES users(id),
    client_msg_id   TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('text', 'image', 'file', 'voice', 'system')),
    body            TEXT NOT NULL,
    reply_to        TEXT REFERENCES messages(id),
    mentions        TEXT NOT NULL DEFAULT '[]', -- JSON array of user ids
    attachment_id   TEXT REFERENCES attachments(id),
    created_at      BIGINT NOT NULL,
    edited_at       BIGINT,
    deleted_at      BIGINT,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_msg_id)
);

CREATE TABLE reactions (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- Every durable event fanned out to a user, so GET /v1/sync can replay it exactly.
CREATE TABLE inbox_events (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    payload    TEXT NOT NULL, -- JSON of tidings_core::protocol::EventBody
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- Full-text search over message bodies. The 'simple' configuration does no stemming,
-- which suits chat in many languages; a deleted message has an empty body.
ALTER TABLE messages
    ADD COLUMN body_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_body_tsv ON messages USING GIN (body_tsv);
