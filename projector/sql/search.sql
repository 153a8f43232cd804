-- Projection version 2: search, added to the tables of read_models.sql in schema {schema}.

-- Posts by full text: a live post's body as English lexemes (stemmed, stop words left out), as
-- PostgreSQL's text search makes them; a deletion removes the row.
CREATE TABLE {schema}.post_search (
    post_id      uuid PRIMARY KEY,
    published_at timestamptz NOT NULL,
    document     tsvector NOT NULL
);
CREATE INDEX post_search_document ON {schema}.post_search USING gin (document);

-- Users by handle and display name, matched by trigrams (migration 0008's pg_trgm): a prefix of
-- either, or either with a typo or two. Display names are matched lowercased.
CREATE TABLE {schema}.user_search (
    user_id      uuid PRIMARY KEY,
    handle       text NOT NULL,
    display_name text NOT NULL
);
CREATE INDEX user_search_handle ON {schema}.user_search USING gin (handle public.gin_trgm_ops);
CREATE INDEX user_search_display_name ON {schema}.user_search
    USING gin (lower(display_name) public.gin_trgm_ops);
