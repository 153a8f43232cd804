-- Search (projection version 2) finds users by handle and display name with trigrams: prefix
-- and typo tolerant. pg_trgm is a trusted extension (PostgreSQL 13 and later), so the owner of
-- the database may create it; it ships with PostgreSQL (Debian's postgresql-15 has it). Its
-- functions and operators go to schema public, which every service's search_path holds.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
