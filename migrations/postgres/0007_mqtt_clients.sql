-- The session behind each MQTT client id (issue 12): see
-- migrations/sqlite/0007_mqtt_clients.sql for the why.
CREATE TABLE mqtt_clients (
    client_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    connected_at BIGINT NOT NULL
);
CREATE INDEX mqtt_clients_session ON mqtt_clients(session_id);
