-- Store each conversation's messages together, in seq order.
--
-- `messages` is a rowid table, and rowids were handed out in arrival order, so the
-- messages of busy conversations were interleaved: a history page (the 50 messages of
-- one conversation before a seq) found its rows through the (conversation_id, seq)
-- index and then read about 50 different table pages, one per row. At 10M messages
-- those pages are rarely in SQLite's cache (bench: p99 3.5-4.6 ms a page).
--
-- From now on the store writes each message with rowid = message_block * 2^32 + seq
-- (store/src/sqlite/fast_batch.rs), where message_block is a number of the
-- conversation's own, so one conversation's messages sit side by side in the table's
-- B-tree and a page of 50 is a few neighbouring table pages. message_block is a
-- column, not the conversation's rowid, because a rowid that is not an INTEGER PRIMARY
-- KEY may be renumbered by VACUUM, and a reused number would collide with rows already
-- stored under it.
--
-- Messages stored before this migration keep their rowids (all below 2^32, so they
-- never collide with the new ones): old history stays where it is, new history is
-- clustered. The search index refers to messages by rowid, which never changes
-- afterwards.
ALTER TABLE conversations ADD COLUMN message_block INTEGER;
UPDATE conversations SET message_block = rowid;
CREATE UNIQUE INDEX conversations_message_block ON conversations(message_block);

-- Every new conversation gets the next free block, whatever path created it.
CREATE TRIGGER conversations_assign_message_block AFTER INSERT ON conversations
WHEN new.message_block IS NULL
BEGIN
    UPDATE conversations
    SET message_block = (SELECT COALESCE(MAX(message_block), 0) + 1 FROM conversations)
    WHERE rowid = new.rowid;
END;
