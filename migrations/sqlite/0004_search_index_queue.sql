-- Full-text indexing leaves the write path. FTS5 indexing each message inside the
-- batch that stores it cost a quarter of the writer's time (perf, issue 9); instead a
-- new message's rowid is queued here (an append to a small table) and the store's
-- indexer moves queued messages into messages_fts in large transactions, a few times a
-- second and before every search, so search still sees every stored message.
CREATE TABLE fts_pending (message_rowid INTEGER PRIMARY KEY);

DROP TRIGGER messages_fts_insert;
DROP TRIGGER messages_fts_delete;
DROP TRIGGER messages_fts_update;

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO fts_pending(message_rowid) VALUES (new.rowid);
END;

-- A queued message is not in messages_fts yet: dropping it from the queue is enough.
-- An indexed one must be removed with exactly the text it was indexed with.
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, body)
        SELECT 'delete', old.rowid, old.body
        WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE message_rowid = old.rowid);
    DELETE FROM fts_pending WHERE message_rowid = old.rowid;
END;

-- A queued message will be indexed with whatever its body is then.
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
WHEN NOT EXISTS (SELECT 1 FROM fts_pending WHERE message_rowid = old.rowid) BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
    INSERT INTO messages_fts(rowid, body) VALUES (new.rowid, new.body);
END;
