-- A dead letter holds back every later event of the same key (the same aggregate) in its
-- partition: those are parked behind it, in order, instead of overtaking it. `retry` or `skip`
-- of the first one releases the ones behind it ('released'). The index finds, per batch, which
-- of its keys are held.
ALTER TABLE projection.dead_letters DROP CONSTRAINT dead_letters_resolution_check;
ALTER TABLE projection.dead_letters
    ADD CONSTRAINT dead_letters_resolution_check
    CHECK (resolution IN ('retried', 'skipped', 'released'));
CREATE INDEX dead_letters_open_keys ON projection.dead_letters (generation, topic, partition, key)
    WHERE resolved_at IS NULL;
