"""How long a canvas with a long update log takes to load, to compact, and to load once compacted.

    /work/main/.venv/bin/python bench/storage_load.py [--stores sqlite,postgres] [--updates 100000]
        [--elements 2000] [--batch 1000] [--database-url postgresql://postgres@127.0.0.1:5432/test]

Builds one canvas history with pycrdt (``--sessions`` editing sessions, each a fresh ``Doc``, i.e. a
new Yjs client id, that starts from the state the previous one left; every transaction is one update,
captured with ``doc.observe``): first ``--elements`` element maps ``{type, x, y, w, h}`` are created
under ``elements``, then every further update is a drag (x and y of one element in one transaction,
~88%), a resize (w, h; ~8%), a colour/label change of one field (~3%), or a delete (~1%, the next
update creates a new element, so ``--elements`` stay live). The same history goes to
every store:

1. append: ``store.append_updates`` in batches of ``--batch`` rows (as the group-commit writer does);
2. ``load_before``: ``store.load`` + ``replay`` (what ``Hub._load_room`` does) with the full log,
   median of ``--loads-before`` runs;
3. ``compact``: one ``compact_canvas(...)`` (reload, strict replay, ``get_update``, one compare-and-swap
   transaction that deletes the log rows and records a version);
4. ``load_after``: ``store.load`` + ``replay`` from the snapshot, median of ``--loads-after`` runs.

SQLite runs on a file in a temporary directory; PostgreSQL in a throwaway schema (created first,
passed as ``?search_path=`` in the DSN, dropped afterwards). Prints exactly one JSON line on stdout;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pycrdt import Doc, Map  # noqa: E402

from canvashub.server.compaction import compact_canvas, replay  # noqa: E402
from canvashub.storage.postgres import PostgresStore  # noqa: E402
from canvashub.storage.sqlite import SQLiteStore  # noqa: E402

CANVAS = "bench-storage-load"
DEFAULT_DSN = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def log(*a: object) -> None:
    print("[storage_load]", *a, file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# ---------------------------------------------------------------- the history


def build_history(n_updates: int, n_elements: int, sessions: int, seed: int) -> tuple[list[bytes], dict]:
    """``n_updates`` Yjs updates (one per transaction) of a canvas edited over ``sessions`` sessions."""
    rng = random.Random(seed)
    updates: list[bytes] = []
    live: list[str] = []
    next_id = 0
    state = b""
    per_session = -(-n_updates // sessions)
    kinds = {"create": 0, "move": 0, "resize": 0, "style": 0, "delete": 0}
    while len(updates) < n_updates:
        doc = Doc()  # a new session: new client id, starting from everything stored so far
        if state:
            doc.apply_update(state)
        doc.observe(lambda event: updates.append(event.update))
        elements = doc.get("elements", type=Map)
        stop = min(n_updates, len(updates) + per_session)
        while len(updates) < stop:
            if len(live) < n_elements:  # the initial elements, then a new one after each delete
                eid = f"el-{next_id:06d}"
                next_id += 1
                elements[eid] = Map(
                    {
                        "type": rng.choice(("rect", "ellipse", "text", "arrow")),
                        "x": rng.randrange(4000),
                        "y": rng.randrange(4000),
                        "w": rng.randrange(20, 400),
                        "h": rng.randrange(20, 400),
                    }
                )
                live.append(eid)
                kinds["create"] += 1
                continue
            r = rng.random()
            if r < 0.01 and len(live) > 1:
                eid = live.pop(rng.randrange(len(live)))
                del elements[eid]
                kinds["delete"] += 1
                continue
            el = elements[rng.choice(live)]
            if r < 0.89:
                with doc.transaction():
                    el["x"] = rng.randrange(4000)
                    el["y"] = rng.randrange(4000)
                kinds["move"] += 1
            elif r < 0.97:
                with doc.transaction():
                    el["w"] = rng.randrange(20, 400)
                    el["h"] = rng.randrange(20, 400)
                kinds["resize"] += 1
            else:
                el[rng.choice(("fill", "label"))] = f"#{rng.randrange(1 << 24):06x}"
                kinds["style"] += 1
        state = doc.get_update()
    del updates[n_updates:]
    info = {
        "updates": len(updates),
        "update_bytes_total": sum(map(len, updates)),
        "update_bytes_avg": round(sum(map(len, updates)) / len(updates), 1),
        "sessions": sessions,
        "live_elements": len(live),
        "kinds": kinds,
        "full_state_bytes": len(state),
    }
    return updates, info


# ---------------------------------------------------------------- one store


async def timed_load(store, expected: dict | None = None) -> tuple[float, float, int, int, bool | None]:
    """(store.load s, replay s, log rows, snapshot bytes, content matches ``expected`` if given)."""
    t0 = time.perf_counter()
    loaded = await store.load(CANVAS)
    t1 = time.perf_counter()
    doc = replay(loaded, CANVAS, strict=False)
    t2 = time.perf_counter()
    same = None if expected is None else doc.get("elements", type=Map).to_py() == expected
    return t1 - t0, t2 - t1, len(loaded.updates), len(loaded.snapshot or b""), same


def load_stats(samples: list[tuple]) -> dict:
    return {
        "n": len(samples),
        "total_ms": ms(statistics.median(s[0] + s[1] for s in samples)),
        "store_load_ms": ms(statistics.median(s[0] for s in samples)),
        "replay_ms": ms(statistics.median(s[1] for s in samples)),
        "total_ms_all": [ms(s[0] + s[1]) for s in samples],
    }


async def bench_store(name: str, store, updates: list[bytes], expected: dict, args: argparse.Namespace) -> dict:
    await store.open()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(updates), args.batch):
            await store.append_updates([(CANVAS, u) for u in updates[i : i + args.batch]])
        append_s = time.perf_counter() - t0
        log(f"{name}: appended {len(updates)} rows in {append_s:.1f} s")

        before = [await timed_load(store, expected if i == 0 else None) for i in range(args.loads_before)]
        rows_before, same_before = before[0][2], before[0][4]
        log(f"{name}: load before compaction {load_stats(before)['total_ms']} ms (median of {len(before)})")

        t0 = time.perf_counter()
        result = await compact_canvas(store, CANVAS, keep_versions=20, timeout=600)
        compact_s = time.perf_counter() - t0
        log(f"{name}: compact_canvas {ms(compact_s)} ms -> {result}")

        after = [await timed_load(store, expected if i == 0 else None) for i in range(args.loads_after)]
        rows_after, snapshot_bytes, same_after = after[0][2], after[0][3], after[0][4]
        log(f"{name}: load after compaction {load_stats(after)['total_ms']} ms (median of {len(after)})")
        return {
            "store": name,
            "append_s": round(append_s, 2),
            "append_rows_per_s": round(len(updates) / append_s),
            "log_rows_before": rows_before,
            "load_before": load_stats(before),
            "compact_ms": ms(compact_s),
            "compaction": None
            if result is None
            else {"version": result.version, "rows": result.rows, "bytes": result.bytes, "attempts": result.attempts},
            "log_rows_after": rows_after,
            "snapshot_bytes": snapshot_bytes,
            "load_after": load_stats(after),
            "load_speedup": round(
                statistics.median(s[0] + s[1] for s in before) / statistics.median(s[0] + s[1] for s in after), 1
            ),
            "content_ok": same_before and same_after,
        }
    finally:
        await store.close()


def files_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


async def run_sqlite(updates, expected, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="storage-load-") as d:
        r = await bench_store("sqlite", SQLiteStore(os.path.join(d, "canvashub.sqlite3")), updates, expected, args)
        r["file_bytes_after"] = await asyncio.to_thread(files_bytes, Path(d))  # db + WAL, after compaction
        return r


async def run_postgres(updates, expected, args) -> dict:
    import asyncpg

    schema = f"bench_storage_{os.getpid()}"
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if urlsplit(args.database_url).query else "?"
        store = PostgresStore(f"{args.database_url}{sep}search_path={schema}")
        r = await bench_store("postgres", store, updates, expected, args)
        r["relation_bytes_after"] = await admin.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
            schema,
        )
        return r
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def main_async(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    updates, info = build_history(args.updates, args.elements, args.sessions, args.seed)
    info["build_s"] = round(time.perf_counter() - t0, 2)
    log(f"history: {info}")
    check = Doc()
    for u in updates:
        check.apply_update(u)
    expected = check.get("elements", type=Map).to_py()
    stores = []
    for name in [s for s in args.stores.split(",") if s]:
        stores.append(await {"sqlite": run_sqlite, "postgres": run_postgres}[name](updates, expected, args))
    return {
        "bench": "storage_load",
        "canvas": info,
        "batch": args.batch,
        "stores": stores,
        "total_s": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", default="sqlite,postgres", help="comma-separated, from: sqlite,postgres")
    ap.add_argument("--updates", type=int, default=100_000, help="updates in the canvas history")
    ap.add_argument("--elements", type=int, default=2000, help="live elements in the canvas")
    ap.add_argument("--sessions", type=int, default=50, help="editing sessions (Yjs client ids) over the history")
    ap.add_argument("--batch", type=int, default=1000, help="rows per append_updates call")
    ap.add_argument("--loads-before", type=int, default=3, help="loads before compaction (median)")
    ap.add_argument("--loads-after", type=int, default=5, help="loads after compaction (median)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--database-url",
        default=DEFAULT_DSN,
        help="PostgreSQL DSN (default $BENCH_DATABASE_URL or %(default)s); a throwaway schema is used",
    )
    args = ap.parse_args()
    bad = [s for s in args.stores.split(",") if s and s not in ("sqlite", "postgres")]
    if bad:
        ap.error(f"unknown store: {', '.join(bad)}")
    result = asyncio.run(main_async(args))
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
