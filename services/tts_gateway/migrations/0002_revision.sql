-- Schema version 2: every write of a row takes a fresh revision, so a replica that reconnects after losing the
-- database compares (name, revision) pairs and fetches the audio of only the voices that changed while it was away,
-- instead of re-reading every clip.
CREATE SEQUENCE saved_voices_revision_seq;
ALTER TABLE saved_voices
    ADD COLUMN revision bigint NOT NULL DEFAULT nextval('saved_voices_revision_seq'),
    ADD COLUMN update_time timestamptz NOT NULL DEFAULT now();
