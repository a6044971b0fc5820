-- Shared rate limits and cross-node presence (issue 12) are PostgreSQL's: a SQLite
-- database has one Tidings node, whose in-memory limiter and presence tracker are
-- exact. This migration keeps the version numbers of both directories the same.
SELECT 1;
