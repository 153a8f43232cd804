-- Handles are unique where the command API reserves them (command.handles), not in the read
-- models: two UserRegistered events for one handle (history written while a registration whose
-- outcome was unknown could free its handle) both become users instead of parking the second
-- user's events as dead letters. A lookup by handle names the earliest registration (joined_at,
-- then user_id); see projector/src/projection.rs. Every existing generation changes alike.
DO $$
DECLARE
    generation_schema text;
BEGIN
    FOR generation_schema IN
        SELECT table_schema FROM information_schema.tables
        WHERE table_name = 'users' AND table_schema ~ '^read_g[0-9]+$'
    LOOP
        EXECUTE format('ALTER TABLE %I.users DROP CONSTRAINT IF EXISTS users_handle_key',
                       generation_schema);
        EXECUTE format('CREATE INDEX IF NOT EXISTS users_handle ON %I.users (handle, joined_at, user_id)',
                       generation_schema);
    END LOOP;
END
$$;
