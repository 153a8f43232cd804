-- Dead letters are resolved by an operator (`projector dead-letters retry|skip`), not deleted:
-- the row stays as a record of what happened to the event.
ALTER TABLE projection.dead_letters
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN resolution text CHECK (resolution IN ('retried', 'skipped'));
