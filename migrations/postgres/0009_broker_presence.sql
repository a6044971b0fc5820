-- The presence an external broker's connect/disconnect events last published for each
-- user (rest-api/src/routes/hooks/, issue 12). broker_connections says who is live
-- now; this says what watchers were last told, and every change is decided against
-- it under the user's presence lock (an advisory lock), so the events of two broker
-- nodes can arrive in any order without showing a connected user offline, or
-- publishing "online" twice. "online" goes out at once; "offline" only after the
-- grace (hooks.presence_offline_grace_ms), if the user then still has no live client.
-- `gone_at` is the database's clock (ms) of the latest event that left a user shown
-- online with no live client: the start of that grace, NULL while none runs. The
-- database's clock, so nodes with skewed clocks agree; a sweeper finds the graces a
-- stopped node never ended. No row: never shown online.
CREATE TABLE broker_presence (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    online BOOLEAN NOT NULL,
    gone_at BIGINT
);
CREATE INDEX broker_presence_pending ON broker_presence(gone_at)
    WHERE online AND gone_at IS NOT NULL;

-- Users live when this migration runs were shown online by the counting that came
-- before it: they are not announced again.
INSERT INTO broker_presence (user_id, online)
SELECT DISTINCT user_id, TRUE FROM broker_connections
WHERE connected_at > disconnected_at;
