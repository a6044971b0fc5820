-- Same version number as SQLite's 0004, which moves full-text indexing off the write
-- path. PostgreSQL indexes `body_tsv` (a generated column with a GIN index) in the
-- same transaction; GIN's pending list already batches that work, so nothing changes.
SELECT 1;
