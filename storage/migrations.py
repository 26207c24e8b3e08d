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
    (
        2,
        [
            # Background jobs ("generations"). Times are epoch seconds from the host clock.
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                canvas_id TEXT NOT NULL,
                generator TEXT NOT NULL,
                prompt TEXT NOT NULL,
                params TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
                progress REAL NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                max_attempts INTEGER NOT NULL,
                error_type TEXT,
                error_message TEXT,
                result TEXT,
                idempotency_key TEXT,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                run_after REAL NOT NULL,
                lease_owner TEXT,
                lease_expires REAL,
                result_applied INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX jobs_claim ON jobs (status, run_after, id)",
            "CREATE INDEX jobs_canvas ON jobs (canvas_id, id)",
            "CREATE INDEX jobs_updated ON jobs (updated_at, id)",
            "CREATE UNIQUE INDEX jobs_idempotency ON jobs (canvas_id, idempotency_key) "
            "WHERE idempotency_key IS NOT NULL",
            "CREATE INDEX jobs_unapplied ON jobs (id) WHERE status = 'succeeded' AND result_applied = 0",
            """CREATE TABLE assets (
                id TEXT PRIMARY KEY,
                content_type TEXT NOT NULL,
                data BLOB NOT NULL,
                created_at REAL NOT NULL
            )""",
        ],
    ),
    (
        3,
        [
            # Result claims (claim_results): one server process at a time puts a job's result into the
            # canvas. jobs_unapplied (succeeded, not applied) already narrows the claim query to the
            # few results in flight; the expiry is checked on those rows.
            "ALTER TABLE jobs ADD COLUMN result_claimer TEXT",
            "ALTER TABLE jobs ADD COLUMN result_claim_expires REAL",
        ],
    ),
    (
        4,
        [
            # The webhook outbox (server/webhooks.py). An event is written in the same transaction as the
            # change it reports where there is one; each (event, endpoint) pair is one delivery, claimed
            # with a lease like a job. Times are epoch seconds from the host clock.
            """CREATE TABLE webhook_events (
                id TEXT PRIMARY KEY,
                type TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at REAL NOT NULL
            )""",
            """CREATE TABLE webhook_deliveries (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                endpoint TEXT NOT NULL,
                event_id TEXT NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
                status TEXT NOT NULL CHECK (status IN ('pending', 'delivering', 'delivered', 'dead')),
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at REAL NOT NULL,
                lease_owner TEXT,
                lease_expires REAL,
                last_status_code INTEGER,
                last_error TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                delivered_at REAL,
                UNIQUE (event_id, endpoint)
            )""",
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending'",
            "CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_expires) WHERE status = 'delivering'",
            "CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, id)",
            "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint, id)",
            "CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at) "
            "WHERE status IN ('delivered', 'dead')",
        ],
    ),
    (
        5,
        [
            # Admin lock (PUT /api/canvases/{id}/lock): set while the canvas is read-only for everyone.
            # Nullable, no default: no table rewrite. The row's delete removes the lock with the canvas.
            "ALTER TABLE canvases ADD COLUMN locked_at REAL",
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
    (
        4,
        [
            # Background jobs ("generations"). Times are DOUBLE PRECISION epoch seconds from the
            # host clock (exact round trips, one clock for every comparison); ids in byte order.
            """CREATE TABLE jobs (
                id TEXT COLLATE "C" PRIMARY KEY,
                canvas_id TEXT COLLATE "C" NOT NULL,
                generator TEXT NOT NULL,
                prompt TEXT NOT NULL,
                params JSONB NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
                progress DOUBLE PRECISION NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                max_attempts INTEGER NOT NULL,
                error_type TEXT,
                error_message TEXT,
                result JSONB,
                idempotency_key TEXT,
                cancel_requested BOOLEAN NOT NULL DEFAULT false,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                run_after DOUBLE PRECISION NOT NULL,
                lease_owner TEXT,
                lease_expires DOUBLE PRECISION,
                result_applied BOOLEAN NOT NULL DEFAULT false
            )""",
            "CREATE INDEX jobs_claim ON jobs (status, run_after, id)",
            "CREATE INDEX jobs_canvas ON jobs (canvas_id, id)",
            "CREATE INDEX jobs_updated ON jobs (updated_at, id)",
            "CREATE UNIQUE INDEX jobs_idempotency ON jobs (canvas_id, idempotency_key) "
            "WHERE idempotency_key IS NOT NULL",
            "CREATE INDEX jobs_unapplied ON jobs (id) WHERE status = 'succeeded' AND NOT result_applied",
            """CREATE TABLE assets (
                id TEXT PRIMARY KEY,
                content_type TEXT NOT NULL,
                data BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
        ],
    ),
    (
        5,
        [
            # Result claims (claim_results), as SQLite migration 3. Nullable columns without a default:
            # no table rewrite. jobs_unapplied still serves the claim query.
            "ALTER TABLE jobs ADD COLUMN result_claimer TEXT",
            "ALTER TABLE jobs ADD COLUMN result_claim_expires DOUBLE PRECISION",
        ],
    ),
    (
        6,
        [
            # The webhook outbox, as SQLite migration 4. The payload is kept as the JSON text that is
            # signed and sent (TEXT, not JSONB: JSONB would reorder its keys).
            """CREATE TABLE webhook_events (
                id TEXT COLLATE "C" PRIMARY KEY,
                type TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE webhook_deliveries (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                endpoint TEXT COLLATE "C" NOT NULL,
                event_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
                status TEXT NOT NULL CHECK (status IN ('pending', 'delivering', 'delivered', 'dead')),
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at DOUBLE PRECISION NOT NULL,
                lease_owner TEXT,
                lease_expires DOUBLE PRECISION,
                last_status_code INTEGER,
                last_error TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                delivered_at DOUBLE PRECISION,
                UNIQUE (event_id, endpoint)
            )""",
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending'",
            "CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_expires) WHERE status = 'delivering'",
            "CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, id)",
            "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint, id)",
            "CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at) "
            "WHERE status IN ('delivered', 'dead')",
        ],
    ),
    (
        7,
        [
            # Admin lock, as SQLite migration 5 (nullable, no default: no table rewrite).
            "ALTER TABLE canvases ADD COLUMN locked_at DOUBLE PRECISION",
        ],
    ),
]
