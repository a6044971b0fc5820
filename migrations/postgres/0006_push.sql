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

-- Same rules as the SQLite triggers, but once per INSERT statement over its transition
-- table rather than once per row: a write batch stores every inbox event of a batch in
-- one statement, and a PL/pgSQL call per recipient would cost a 1,000-member room a
-- thousand calls per message. Events of users with no push target are dropped by the
-- first join, before any JSON is parsed.
CREATE FUNCTION push_enqueue() RETURNS trigger AS $$
BEGIN
    -- Most batches carry nobody with a push target: one probe per event, then out.
    IF NOT EXISTS (SELECT 1 FROM new_events e
                   WHERE EXISTS (SELECT 1 FROM push_targets t WHERE t.user_id = e.user_id)) THEN
        RETURN NULL;
    END IF;
    -- One statement: the events of users with a target, each distinct payload parsed
    -- once (one message's recipients share its text; a jsonb cast per recipient was
    -- most of this trigger's cost for a large group), then the badge-only rows and the
    -- message and invitation rows.
    WITH ev AS MATERIALIZED (
        SELECT e.user_id, e.seq, e.created_at, e.payload
        FROM new_events e
        WHERE EXISTS (SELECT 1 FROM push_targets t WHERE t.user_id = e.user_id)
    ), parsed AS MATERIALIZED (
        SELECT d.payload, d.payload::jsonb AS p FROM (SELECT DISTINCT payload FROM ev) d
    ), pe AS MATERIALIZED (
        SELECT ev.user_id, ev.seq, ev.created_at, parsed.p
        FROM ev JOIN parsed ON parsed.payload = ev.payload
    ),
    -- The reader's own read receipt: one pending badge-only push per target (rows not
    -- yet tried are replaced).
    badge AS (
        SELECT e.user_id, e.seq, e.created_at, e.p->>'conv' AS conv
        FROM pe e
        WHERE e.p->>'type' = 'receipt' AND e.p->>'kind' = 'read' AND e.p->>'user' = e.user_id
    ), replaced AS (
        DELETE FROM push_queue q USING (SELECT DISTINCT user_id FROM badge) b
        WHERE q.user_id = b.user_id AND q.reason = 'badge' AND q.attempts = 0
    ), badges AS (
        INSERT INTO push_queue (target_id, user_id, iseq, reason, conversation_id, next_attempt_at, created_at)
        SELECT t.id, b.user_id, b.seq, 'badge', b.conv, b.created_at, b.created_at
        FROM badge b JOIN push_targets t ON t.user_id = b.user_id
    )
    INSERT INTO push_queue (target_id, user_id, iseq, reason, conversation_id, next_attempt_at, created_at)
    SELECT t.id, x.user_id, x.seq, x.why, x.conv, x.created_at, x.created_at
    FROM (
        SELECT e.user_id, e.seq, e.created_at,
               e.p->>'type' AS kind,
               e.p->>'conv' AS conv,
               COALESCE(e.p->>'sender', e.p->>'by') AS sender,
               COALESCE(e.p->>'kind', '') AS message_kind,
               CASE
                   WHEN e.p->>'type' = 'invitation' THEN 'invitation'
                   WHEN COALESCE(e.p->'mentions', '[]'::jsonb) ? e.user_id THEN 'mention'
                   WHEN EXISTS (SELECT 1 FROM messages r
                                WHERE r.id = e.p->>'reply_to' AND r.sender_id = e.user_id) THEN 'reply'
                   ELSE 'message'
               END AS why
        FROM pe e
        WHERE e.p->>'type' IN ('message', 'invitation')
    ) x
    JOIN push_targets t ON t.user_id = x.user_id
    WHERE x.sender IS NOT NULL AND x.sender <> x.user_id
      AND x.message_kind <> 'system'
      AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.blocker_id = x.user_id AND b.blocked_id = x.sender)
      AND (x.kind = 'invitation'
           OR NOT EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = x.conv AND m.user_id = x.user_id
                          AND (m.muted OR m.archived))
           OR (x.why IN ('mention', 'reply')
               AND (SELECT u.push_breakthrough FROM users u WHERE u.id = x.user_id)));
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER push_enqueue AFTER INSERT ON inbox_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION push_enqueue();

CREATE FUNCTION push_targets_session_end() RETURNS trigger AS $$
BEGIN
    DELETE FROM push_targets WHERE session_id = NEW.id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER push_targets_session_end AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION push_targets_session_end();

-- Provider credentials every node must share. APNs counts provider-token refreshes per
-- team across all senders (more often than every 20 minutes is 429
-- TooManyProviderTokenUpdates), so nodes take the stored token while it is fresh and
-- only replace one that is older than the refresh interval.
CREATE TABLE push_provider_tokens (
    name       TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
