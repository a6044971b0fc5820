-- Lookups the REST plane makes: which messages carry an attachment (download
-- authorization), and conversations by recent activity (the conversation list).
CREATE INDEX messages_attachment ON messages(attachment_id);
CREATE INDEX conversations_activity ON conversations(last_activity_at);
