-- Several Tidings nodes (issue 12). SQLite is single-node: the membership
-- notifications of the PostgreSQL migration have no counterpart here.
--
-- Which session each MQTT client id last authenticated with, through the auth hook an
-- external broker calls (issue 12). The broker's later ACL questions carry only the
-- username and client id, not the password, so this row is how an ACL decision on any
-- Tidings node finds the connection's session: whether it is still live (a logout ends
-- its rights at the next decision) and, for a device credential, its grant (which
-- conversations, which direction). One row per client id, replaced at each CONNECT.
CREATE TABLE mqtt_clients (
    client_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    connected_at INTEGER NOT NULL
);
CREATE INDEX mqtt_clients_session ON mqtt_clients(session_id);
