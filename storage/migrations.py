"""Versioned schema migrations, one ordered list of SQL scripts per backend.

Append new entries; never edit an applied one. Each entry is (version, [statements]).
"""

from __future__ import annotations

SQLITE: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE canvases (
                id TEXT PRIMARY KEY,
                snapshot BLOB,
                version INTEGER NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE canvas_updates (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                canvas_id TEXT NOT NULL REFERENCES canvases(id) ON DELETE CASCADE,
                data BLOB NOT NULL
            )""",
            "CREATE INDEX canvas_updates_canvas_seq ON canvas_updates (canvas_id, seq)",
            """CREATE TABLE canvas_versions (
                canvas_id TEXT NOT NULL REFERENCES canvases(id) ON DELETE CASCADE,
                number INTEGER NOT NULL,
                created_at REAL NOT NULL,
                size INTEGER NOT NULL,
                snapshot BLOB NOT NULL,
                PRIMARY KEY (canvas_id, number)
            )""",
        ],
    ),
]

POSTGRES: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE canvases (
                id TEXT PRIMARY KEY,
                snapshot BYTEA,
                version INTEGER NOT NULL DEFAULT 0,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE canvas_updates (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                canvas_id TEXT NOT NULL REFERENCES canvases(id) ON DELETE CASCADE,
                data BYTEA NOT NULL
            )""",
            "CREATE INDEX canvas_updates_canvas_seq ON canvas_updates (canvas_id, seq)",
            """CREATE TABLE canvas_versions (
                canvas_id TEXT NOT NULL REFERENCES canvases(id) ON DELETE CASCADE,
                number INTEGER NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                size INTEGER NOT NULL,
                snapshot BYTEA NOT NULL,
                PRIMARY KEY (canvas_id, number)
            )""",
        ],
    ),
    (
        2,
        [
            # append_updates in one statement (one round trip). Per-canvas advisory locks, taken in key
            # order, serialise appenders of a canvas with each other and with compact(): seqs come from an
            # identity column, so without them seq N+1 could commit before seq N, a compaction could see
            # N+1 but not N, and its ``seq <= through_seq`` delete would drop N unmerged.
            """CREATE FUNCTION canvashub_append(ids text[], datas bytea[]) RETURNS SETOF bigint
            LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM pg_advisory_xact_lock(keys.k)
                    FROM (SELECT DISTINCT hashtext(x) AS k FROM unnest(ids) AS x ORDER BY 1) AS keys;
                INSERT INTO canvases (id) SELECT DISTINCT x FROM unnest(ids) AS x ORDER BY 1
                    ON CONFLICT (id) DO UPDATE SET updated_at = now();
                RETURN QUERY
                    INSERT INTO canvas_updates (canvas_id, data)
                    SELECT u.cid, u.payload FROM unnest(ids, datas) WITH ORDINALITY AS u(cid, payload, ord)
                    ORDER BY u.ord
                    RETURNING canvas_updates.seq;
            END
            $fn$""",
        ],
    ),
    (
        3,
        [
            # Byte order for canvas ids whatever the database's default collation, so the
            # cursor-paginated listing orders ids the same way as SQLite does.
            'ALTER TABLE canvases ALTER COLUMN id TYPE TEXT COLLATE "C"',
            'ALTER TABLE canvas_updates ALTER COLUMN canvas_id TYPE TEXT COLLATE "C"',
            'ALTER TABLE canvas_versions ALTER COLUMN canvas_id TYPE TEXT COLLATE "C"',
        ],
    ),
]
