-- Keystone state, schema 2: the last bytes Keystone wrote to each file on each server, as a
-- SHA-256 of the bytes after placeholders were filled (never the bytes themselves), so the health
-- probe can tell a file that was changed by hand on the server.
CREATE TABLE written_files (
    server        TEXT NOT NULL,
    path          TEXT NOT NULL,
    sha256        TEXT NOT NULL,     -- hex
    mode          INTEGER NOT NULL,
    written_at    TEXT NOT NULL,     -- RFC 3339, UTC
    PRIMARY KEY (server, path)
);
