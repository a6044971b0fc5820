-- No query reads conversations in activity order across users: the conversation list
-- starts from the user's memberships (members_user_handle) and sorts those few rows.
-- The index only cost work: every stored message deleted its conversation's old key
-- and inserted the new one.
DROP INDEX IF EXISTS conversations_activity;
