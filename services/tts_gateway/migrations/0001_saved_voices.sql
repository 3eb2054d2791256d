-- Schema version 1: one row per saved voice, metadata and reference audio together.
-- The audio is the same mono float32 WAV the directory store writes, kept inline as bytea: one row, one transaction,
-- so a voice is either wholly there or not at all, a delete removes everything, and no large object can be orphaned.
-- The contract's 8 MiB reference limit bounds it (large objects would only pay off far beyond that).
CREATE TABLE saved_voices (
    name           text PRIMARY KEY CHECK (char_length(name) BETWEEN 1 AND 128),
    base_voice     text NOT NULL CHECK (char_length(base_voice) BETWEEN 1 AND 256),
    reference_text text NOT NULL DEFAULT '',
    description    text NOT NULL DEFAULT '',
    sample_rate_hz integer NOT NULL CHECK (sample_rate_hz > 0),
    create_time    double precision NOT NULL,
    audio          bytea NOT NULL CHECK (octet_length(audio) <= 8388608),
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0)
);
