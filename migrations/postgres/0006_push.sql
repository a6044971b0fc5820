-- Push notifications (issue 13): see migrations/sqlite/0006_push.sql for the why.
CREATE TABLE push_targets (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL UNIQUE REFERENCES sessions(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    platform    TEXT NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush', 'gateway')),
    token       TEXT NOT NULL,
    app_id      TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT '{}',
    lang        TEXT,
    full_text   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    badge_sent  BIGINT,
    badge_at    BIGINT,
    UNIQUE (platform, token)
);
CREATE INDEX push_targets_user ON push_targets(user_id);

ALTER TABLE users ADD COLUMN push_breakthrough BOOLEAN NOT NULL DEFAULT TRUE;

CREATE TABLE push_queue (
    target_id       TEXT NOT NULL REFERENCES push_targets(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    iseq            BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (target_id, iseq)
);
CREATE INDEX push_queue_due ON push_queue(next_attempt_at);

-- Same rules as the SQLite trigger. The target probe comes first so users with no push
-- target pay one index probe and no JSON parsing.
CREATE FUNCTION push_enqueue() RETURNS trigger AS $$
DECLARE
    p JSONB;
    kind TEXT;
    conv TEXT;
    sender TEXT;
    why TEXT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM push_targets WHERE user_id = NEW.user_id) THEN
        RETURN NULL;
    END IF;
    p := NEW.payload::jsonb;
    kind := p->>'type';
    -- The reader's own read receipt: one pending badge-only push per target.
    IF kind = 'receipt' THEN
        IF p->>'kind' = 'read' AND p->>'user' = NEW.user_id THEN
            DELETE FROM push_queue WHERE user_id = NEW.user_id AND reason = 'badge' AND attempts = 0;
            INSERT INTO push_queue (target_id, user_id, iseq, reason, conversation_id, next_attempt_at, created_at)
            SELECT t.id, NEW.user_id, NEW.seq, 'badge', p->>'conv', NEW.created_at, NEW.created_at
            FROM push_targets t WHERE t.user_id = NEW.user_id;
        END IF;
        RETURN NULL;
    END IF;
    IF kind NOT IN ('message', 'invitation') THEN
        RETURN NULL;
    END IF;
    conv := p->>'conv';
    sender := COALESCE(p->>'sender', p->>'by');
    IF sender IS NULL OR sender = NEW.user_id OR COALESCE(p->>'kind', '') = 'system' THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM blocks b WHERE b.blocker_id = NEW.user_id AND b.blocked_id = sender) THEN
        RETURN NULL;
    END IF;
    IF kind = 'invitation' THEN
        why := 'invitation';
    ELSIF COALESCE(p->'mentions', '[]'::jsonb) ? NEW.user_id THEN
        why := 'mention';
    ELSIF EXISTS (SELECT 1 FROM messages r WHERE r.id = p->>'reply_to' AND r.sender_id = NEW.user_id) THEN
        why := 'reply';
    ELSE
        why := 'message';
    END IF;
    IF kind = 'message' AND EXISTS (
        SELECT 1 FROM members m WHERE m.conversation_id = conv AND m.user_id = NEW.user_id
            AND (m.muted OR m.archived))
    THEN
        IF why NOT IN ('mention', 'reply')
           OR NOT (SELECT u.push_breakthrough FROM users u WHERE u.id = NEW.user_id) THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO push_queue (target_id, user_id, iseq, reason, conversation_id, next_attempt_at, created_at)
    SELECT t.id, NEW.user_id, NEW.seq, why, conv, NEW.created_at, NEW.created_at
    FROM push_targets t WHERE t.user_id = NEW.user_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER push_enqueue AFTER INSERT ON inbox_events
    FOR EACH ROW EXECUTE FUNCTION push_enqueue();

CREATE FUNCTION push_targets_session_end() RETURNS trigger AS $$
BEGIN
    DELETE FROM push_targets WHERE session_id = NEW.id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER push_targets_session_end AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION push_targets_session_end();
