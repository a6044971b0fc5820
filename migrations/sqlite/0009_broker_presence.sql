-- Cross-node presence behind an external broker (the published state, PostgreSQL
-- migration 0009) is PostgreSQL's: a SQLite database has one Tidings node, whose
-- in-memory presence tracker is exact. This migration keeps the version numbers of both
-- directories the same.
SELECT 1;
