-- Several Tidings nodes share what used to live in each node's memory (issue 12).

-- Token buckets every node charges (store/src/ratelimit.rs): one row per limit and key
-- (`send:{user}`, `auth:{address}`, ...). PostgreSQL because it is the one thing every
-- node already shares; a broker's own limits are per connection and per broker node.
-- `taken` is how many tokens the last charge granted (the upsert's RETURNING reads
-- it); `updated_at` is the database's clock, so nodes with skewed clocks agree. A row
-- untouched for longer than its refill time is a full bucket, so the sweeper deletes
-- it without changing any decision.
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    taken INTEGER NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX rate_buckets_updated ON rate_buckets(updated_at);

-- Client connections an external broker reported through its event hooks
-- (rest-api/src/routes/hooks/). A client is live while its latest connect is later
-- than its latest disconnect: brokers post events concurrently, so they may arrive out
-- of order, and each column only moves forward. A user is online while any of their
-- clients is live, on whichever broker node; the Tidings node whose event makes the
-- first one live publishes "online", the one that ends the last publishes "offline"
-- (an advisory lock per user orders them). The user comes from the client id's row in
-- mqtt_clients (written by the auth hook), not from the event, because some brokers'
-- disconnect events carry no username. One row per client id, like mqtt_clients.
CREATE TABLE broker_connections (
    client_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    connected_at BIGINT NOT NULL DEFAULT 0,
    disconnected_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX broker_connections_live ON broker_connections(user_id)
    WHERE connected_at > disconnected_at;
