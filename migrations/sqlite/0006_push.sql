-- Push notifications (issue 13). Keep in step with ../postgres/0006_push.sql.
--
-- A push target is one session's way to be woken when it has no live connection
-- (an APNs / FCM token, a Web Push subscription, or a push-gateway pushkey). It belongs
-- to the session, not the device or the user, so that logging out, revoking the session
-- or deleting the account ends it (synapse#8925: a logged-out session kept its pusher).
-- UNIQUE(platform, token): a token registered again, by anyone, replaces the old row, so
-- the next user of a phone never gets the previous user's pushes and one token never
-- sits in two rows (the duplicate pushes of RocketChat#19445, pushkin#33).
CREATE TABLE push_targets (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL UNIQUE REFERENCES sessions(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    platform    TEXT NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush', 'gateway')),
    token       TEXT NOT NULL,
    app_id      TEXT NOT NULL,
    -- Provider-specific JSON object (a Web Push subscription's keys, say).
    data        TEXT NOT NULL DEFAULT '{}',
    lang        TEXT,
    -- The device asked for message text in its pushes; otherwise ids only.
    full_text   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  INTEGER NOT NULL,
    -- The badge the device was last pushed, and when the last badge-only push went:
    -- a badge-only push goes only when the count changed, and not too often.
    badge_sent  INTEGER,
    badge_at    INTEGER,
    UNIQUE (platform, token)
);
CREATE INDEX push_targets_user ON push_targets(user_id);

-- Whether mentions and replies still push from a muted or archived conversation.
ALTER TABLE users ADD COLUMN push_breakthrough BOOLEAN NOT NULL DEFAULT TRUE;

-- The durable push queue: one row per (target, inbox event), so a device gets at most
-- one push per event whatever retries and restarts happen. Rows are written by the
-- trigger below in the transaction that stores the inbox event (no write path can
-- forget them, and a crash cannot keep one without the other); the push worker claims
-- due rows by pushing `next_attempt_at` a lease ahead, and deletes a row once the
-- provider has it. Whether the device is connected is decided when the row is sent:
-- a connected device already has the event over MQTT and its row is dropped.
CREATE TABLE push_queue (
    target_id       TEXT NOT NULL REFERENCES push_targets(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    iseq            INTEGER NOT NULL,
    -- 'message', 'mention', 'reply', 'invitation', or 'badge' (a badge-only push)
    reason          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (target_id, iseq)
);
CREATE INDEX push_queue_due ON push_queue(next_attempt_at);

-- Who gets pushed, decided where the event is stored. Nothing for one's own messages,
-- system notices, or anything from someone the recipient blocked; a muted or archived
-- conversation pushes only mentions and replies to the recipient, and only when the
-- recipient lets them break through. The WHEN clause keeps the cost for users with no
-- push target at one index probe per inbox event.
CREATE TRIGGER push_enqueue AFTER INSERT ON inbox_events
WHEN EXISTS (SELECT 1 FROM push_targets WHERE user_id = NEW.user_id)
     AND json_extract(NEW.payload, '$.type') IN ('message', 'invitation')
BEGIN
    INSERT INTO push_queue (target_id, user_id, iseq, reason, conversation_id, next_attempt_at, created_at)
    SELECT t.id, NEW.user_id, NEW.seq, e.reason, e.conv, NEW.created_at, NEW.created_at
    FROM push_targets t,
         (SELECT CASE
                    WHEN p.type = 'invitation' THEN 'invitation'
                    WHEN EXISTS (SELECT 1 FROM json_each(p.mentions) WHERE value = NEW.user_id) THEN 'mention'
                    WHEN EXISTS (SELECT 1 FROM messages r WHERE r.id = p.reply_to AND r.sender_id = NEW.user_id) THEN 'reply'
                    ELSE 'message'
                 END AS reason,
                 p.conv, p.sender, p.type, p.kind
          FROM (SELECT json_extract(NEW.payload, '$.type') AS type,
                       json_extract(NEW.payload, '$.conv') AS conv,
                       COALESCE(json_extract(NEW.payload, '$.sender'), json_extract(NEW.payload, '$.by')) AS sender,
                       json_extract(NEW.payload, '$.kind') AS kind,
                       json_extract(NEW.payload, '$.reply_to') AS reply_to,
                       COALESCE(json_extract(NEW.payload, '$.mentions'), '[]') AS mentions) AS p
         ) AS e
    WHERE t.user_id = NEW.user_id
      AND e.sender IS NOT NULL AND e.sender <> NEW.user_id
      AND (e.kind IS NULL OR e.kind <> 'system')
      AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.blocker_id = NEW.user_id AND b.blocked_id = e.sender)
      AND (e.type = 'invitation'
           OR NOT EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = e.conv AND m.user_id = NEW.user_id
                          AND (m.muted OR m.archived))
           OR (e.reason IN ('mention', 'reply')
               AND (SELECT u.push_breakthrough FROM users u WHERE u.id = NEW.user_id)));
END;

-- Reading on one device changes the badge the others show: the reader's own `read`
-- receipt queues a badge-only push for each of their targets. Only the newest one per
-- target waits (older ones not yet tried are replaced), so reading ten conversations
-- makes one push; the worker then sends it only if the count changed, and no more
-- often than push.badge_min_interval_secs per target.
CREATE TRIGGER push_badge AFTER INSERT ON inbox_events
WHEN EXISTS (SELECT 1 FROM push_targets WHERE user_id = NEW.user_id)
     AND json_extract(NEW.payload, '$.type') = 'receipt'
     AND json_extract(NEW.payload, '$.kind') = 'read'
     AND json_extract(NEW.payload, '$.user') = NEW.user_id
BEGIN
    DELETE FROM push_queue WHERE user_id = NEW.user_id AND reason = 'badge' AND attempts = 0;
    INSERT INTO push_queue (target_id, user_id, iseq, reason, conversation_id, next_attempt_at, created_at)
    SELECT t.id, NEW.user_id, NEW.seq, 'badge', json_extract(NEW.payload, '$.conv'), NEW.created_at, NEW.created_at
    FROM push_targets t WHERE t.user_id = NEW.user_id;
END;

-- A revoked session (logout, logout-all, the admin CLI, account deletion) loses its
-- push target in the same statement, whichever code path or process revoked it.
CREATE TRIGGER push_targets_session_end AFTER UPDATE OF revoked_at ON sessions
WHEN NEW.revoked_at IS NOT NULL
BEGIN
    DELETE FROM push_targets WHERE session_id = NEW.id;
END;

-- Provider credentials every node must share. APNs counts provider-token refreshes per
-- team across all senders (more often than every 20 minutes is 429
-- TooManyProviderTokenUpdates), so nodes take the stored token while it is fresh and
-- only replace one that is older than the refresh interval.
CREATE TABLE push_provider_tokens (
    name       TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
