"""Run the benchmark shapes against canvashub and the reference servers, one server at a time.

    /work/main/.venv/bin/python bench/run.py [--servers canvashub,canvashub-hocuspocus,relay,pycrdt-websocket,node,hocuspocus]
        [--shapes s1,s2,s3,s4,s5,idle] [--duration 15] [--repeat 1] [--out results.jsonl]
        [--stores sqlite,postgres] [--database-url DSN] [--events]

Installs the references into bench/.cache/ (gitignored) on first use: pycrdt-websocket into a
throwaway venv, @y/websocket-server and @hocuspocus/server into throwaway npm dirs, and the load
generator's pinned packages (npm ci in bench/loadgen). For every (shape, server) it starts the server on a free
loopback port, runs bench/loadgen/loadgen.mjs, samples the server's process tree from /proc
every 100 ms, stops the server and prints one JSON line; a final JSON line holds the target's
(canvashub's) ratios to each reference. Logs go to stderr. See bench/README.md.

canvashub runs once per ``--stores`` entry: ``canvashub`` on its embedded SQLite store (in the run's
throwaway working directory) and ``canvashub-postgres`` on PostgreSQL (``--database-url``, in a
throwaway schema per run, created before the server starts and dropped after it stops).
``--events`` makes the load generator opt canvashub's sockets into save events and report the
durable-ack latency (edit -> the ``saved`` event covering it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
LOADGEN = BENCH / "loadgen"
HOST = "127.0.0.1"

PYCRDT_WS_REQS = ["pycrdt-websocket==0.16.5", "uvicorn[standard]==0.54.0"]
NODE_SERVER_PKGS = ["@y/websocket-server@0.1.1", "yjs@13.6.33"]  # 0.1.1: last for yjs 13 clients
HOCUSPOCUS_PKGS = ["@hocuspocus/server@4.7.0", "yjs@13.6.33"]  # the provider (4.7.0) is in bench/loadgen
DEFAULT_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
STORES = ("sqlite", "postgres")
NO_PACING = {"CANVASHUB_UPGRADE_RATE_PER_IP": "0"}

# id -> loadgen arguments. Rates are per client per second.
SHAPES: dict[str, dict] = {
    "s1": {"desc": "1 room x 2 clients x 50 upd/s", "rooms": 1, "clients": 2, "rate": 50},
    "s2": {"desc": "10 rooms x 10 clients x 5 upd/s", "rooms": 10, "clients": 10, "rate": 5},
    "s3": {"desc": "100 rooms x 5 clients x 1 upd/s", "rooms": 100, "clients": 5, "rate": 1},
    "s4": {"desc": "1 room x 100 clients x 1 upd/s (fan-out)", "rooms": 1, "clients": 100, "rate": 1},
    "s5": {
        "desc": "1 room x 20 clients x 10 upd/s + 10 awareness/s",
        "rooms": 1,
        "clients": 20,
        "rate": 10,
        "awareness": 10,
    },
    "idle": {"desc": "2000 idle connections, rooms of 10", "idle": 2000, "clients": 10},
}
# The saturation sweep (issue 14): 50 rooms x 2 clients, offered updates/s from 500 to 16,000.
SWEEP_OFFERED = (500, 1000, 2000, 4000, 8000, 16000)
SWEEP_P99_MS = 50.0  # the sweep's figure: delivered updates/s at the highest level whose p99 stays under this
for _offered in SWEEP_OFFERED:
    SHAPES[f"sat{_offered}"] = {
        "desc": f"saturation: 50 rooms x 2 clients, {_offered} upd/s offered",
        "rooms": 50,
        "clients": 2,
        "rate": _offered / 100,
    }

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_live: set[subprocess.Popen] = set()  # process groups to kill on any exit


def log(*a: object) -> None:
    print("[bench]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- servers and installation


@dataclass
class Server:
    name: str
    room_url: str  # with {port} and {room}
    command: list[str] | None  # None: not available (see missing)
    missing: str = ""
    env: dict[str, str] = field(default_factory=dict)
    prepare: object = None  # callable installing what the server needs
    # per run: tag -> (extra env, cleanup called after the server stopped); e.g. a throwaway schema
    per_run: object = None
    events: bool = False  # sends canvashub save events (loadgen --events applies)
    store: str | None = None  # canvashub's storage backend, reported in its result lines
    client: str = "y-websocket"  # the load generator's provider (--client): y-websocket or hocuspocus

    def argv(self, port: int) -> list[str]:
        assert self.command is not None
        return [a.replace("{port}", str(port)) for a in self.command]


def run_quiet(argv: list[str], cwd: Path | None = None) -> None:
    """Run an install step; show its output only when it fails."""
    log("$", " ".join(argv))
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:])
        raise SystemExit(f"install step failed ({p.returncode}): {' '.join(argv)}")


def stamped(dir_: Path, stamp: str) -> bool:
    f = dir_ / ".bench-stamp"
    return f.exists() and f.read_text() == stamp


def prepare_pycrdt_websocket() -> None:
    venv = CACHE / "pycrdt-websocket-venv"
    if stamped(venv, " ".join(PYCRDT_WS_REQS)):
        return
    shutil.rmtree(venv, ignore_errors=True)
    run_quiet([sys.executable, "-m", "venv", str(venv)])
    run_quiet([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PYCRDT_WS_REQS])
    (venv / ".bench-stamp").write_text(" ".join(PYCRDT_WS_REQS))


def prepare_npm_dir(d: Path, pkgs: list[str]) -> None:
    """Install pinned npm packages into a throwaway dir (reused while the stamp matches)."""
    if stamped(d, " ".join(pkgs)):
        return
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "package.json").write_text('{"private": true}\n')
    run_quiet(["npm", "install", "--no-audit", "--no-fund", "--save-exact", *pkgs], cwd=d)
    (d / ".bench-stamp").write_text(" ".join(pkgs))


def prepare_node_server() -> None:
    # y-leveldb (an optional dependency) is imported even without persistence: keep optionals
    prepare_npm_dir(CACHE / "node-websocket-server", NODE_SERVER_PKGS)


def prepare_hocuspocus() -> None:
    d = CACHE / "hocuspocus-server"
    prepare_npm_dir(d, HOCUSPOCUS_PKGS)
    # next to its node_modules, so `import '@hocuspocus/server'` resolves (ESM ignores NODE_PATH)
    shutil.copyfile(BENCH / "servers" / "hocuspocus_server.mjs", d / "hocuspocus_server.mjs")


def prepare_loadgen() -> None:
    lock = (LOADGEN / "package-lock.json").read_text()
    if stamped(LOADGEN / "node_modules", lock):
        return
    run_quiet(["npm", "ci", "--no-audit", "--no-fund"], cwd=LOADGEN)
    (LOADGEN / "node_modules" / ".bench-stamp").write_text(lock)


def _with_query(dsn: str, param: str) -> str:
    return dsn + ("&" if "?" in dsn else "?") + param


def _pg(dsn: str, *statements: str) -> None:
    """Run a few statements on PostgreSQL (asyncpg: a dependency of canvashub, in its venv)."""
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def postgres_schema(database_url: str):
    """Per run: a fresh schema, passed to canvashub as ``?search_path=`` (asyncpg sends unknown DSN
    parameters as server settings, so every pooled connection uses it); dropped after the run."""

    def per_run(tag: str) -> tuple[dict[str, str], object]:
        schema = "bench_" + "".join(ch if ch.isalnum() else "_" for ch in tag.lower())[:50]
        _pg(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE", f"CREATE SCHEMA {schema}")

        def cleanup() -> None:
            try:
                _pg(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            except Exception as exc:  # noqa: BLE001 - report, keep going
                log(f"warning: could not drop schema {schema}: {exc!r}")

        return {"DATABASE_URL": _with_query(database_url, f"search_path={schema}")}, cleanup

    return per_run


def check_postgres(database_url: str) -> None:
    try:
        _pg(database_url, "SELECT 1")
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"PostgreSQL at --database-url is not usable: {type(exc).__name__}: {exc}") from None


def servers(canvashub_args: str = "", database_url: str = DEFAULT_DATABASE_URL) -> dict[str, Server]:
    exe = Path(sys.executable).parent / "canvashub"
    canvashub = exe if exe.exists() else ROOT / ".venv" / "bin" / "canvashub"
    extra = shlex.split(canvashub_args)
    node_bin = CACHE / "node-websocket-server" / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
    hub_cmd = [str(canvashub), "serve", "--host", HOST, "--port", "{port}", *extra] if canvashub.exists() else None
    hub_missing = f"{canvashub} not found (the canvashub CLI is not installed yet)"
    return {
        "canvashub": Server(
            "canvashub",
            "ws://127.0.0.1:{port}/ws/{room}",
            hub_cmd,
            missing=hub_missing,
            # SQLite under the run's throwaway working directory, whatever the caller's environment says
            # Pacing of new sockets per address is a flood defence; every load generator socket comes
            # from 127.0.0.1, so it is off here (docs/security.md, "Connection floods").
            env={"DATABASE_URL": "", "CANVASHUB_DATA_DIR": ".canvashub-data", **NO_PACING},
            events=True,
            store="sqlite",
        ),
        "canvashub-postgres": Server(
            "canvashub-postgres",
            "ws://127.0.0.1:{port}/ws/{room}",
            hub_cmd,
            missing=hub_missing,
            prepare=lambda: check_postgres(database_url),
            env=dict(NO_PACING),
            per_run=postgres_schema(database_url),
            events=True,
            store="postgres",
        ),
        # canvashub's Hocuspocus endpoint (docs/protocol.md), driven by @hocuspocus/provider like the
        # `hocuspocus` server below: the same rooms and storage as `canvashub`, another protocol
        "canvashub-hocuspocus": Server(
            "canvashub-hocuspocus",
            "ws://127.0.0.1:{port}/hocuspocus/{room}",  # the provider's URL is /hocuspocus, the room its document
            hub_cmd,
            missing=hub_missing,
            env={"DATABASE_URL": "", "CANVASHUB_DATA_DIR": ".canvashub-data", **NO_PACING},
            store="sqlite",
            client="hocuspocus",
        ),
        "relay": Server(
            "relay",
            "ws://127.0.0.1:{port}/{room}",
            [sys.executable, str(BENCH / "relay.py"), "--host", HOST, "--port", "{port}"],
        ),
        "pycrdt-websocket": Server(
            "pycrdt-websocket",
            "ws://127.0.0.1:{port}/{room}",
            [
                str(CACHE / "pycrdt-websocket-venv" / "bin" / "python"),
                str(BENCH / "servers" / "pycrdt_websocket_server.py"),
                "--host",
                HOST,
                "--port",
                "{port}",
            ],
            prepare=prepare_pycrdt_websocket,
        ),
        "node": Server(
            "node",
            "ws://127.0.0.1:{port}/{room}",
            # run server.js directly (not via npx) so the PID we sample is the server itself
            [shutil.which("node") or "node", str(node_bin)],
            env={"HOST": HOST, "PORT": "{port}"},
            prepare=prepare_node_server,
        ),
        "hocuspocus": Server(
            "hocuspocus",
            # the provider connects to the server URL and sends the room as the document name
            "ws://127.0.0.1:{port}/{room}",
            [
                shutil.which("node") or "node",
                str(CACHE / "hocuspocus-server" / "hocuspocus_server.mjs"),
                "--host",
                HOST,
                "--port",
                "{port}",
            ],
            prepare=prepare_hocuspocus,
            client="hocuspocus",
        ),
    }


# ---------------------------------------------------------------- process handling


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    # own session = own process group, so stop() reaches any children the server forks
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    _live.add(p)
    return p


def stop(p: subprocess.Popen) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the process group, each with a bounded wait."""
    for sig, wait in ((signal.SIGINT, 8), (signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        if p.poll() is not None:
            break
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # stray children of an exited leader
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _live.discard(p)


def stop_all() -> None:
    for p in list(_live):
        stop(p)


def wait_accepting(port: int, proc: subprocess.Popen, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)  # poll interval: waiting for the port, bounded by the deadline
    return False


# ---------------------------------------------------------------- /proc sampling


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:  # bounded by the number of live processes
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def read_tree(pid: int) -> tuple[int, int]:
    """(cpu ticks, rss KB) of a process and its live descendants, plus reaped children's CPU."""
    ticks = rss = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError):
            continue  # exited between listing and reading
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks, rss


def machine_busy_ticks() -> int:
    """CPU ticks all cores spent busy since boot (the first line of /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


class Sampler(threading.Thread):
    """Samples the server tree every 100 ms; records peak RSS."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.halt = threading.Event()

    def snap(self) -> tuple[float, int, int]:
        ticks, rss = read_tree(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        return time.monotonic(), ticks, rss

    def mark(self, loadgen_pid: int) -> dict:
        """Everything read at a window edge: server, load generator and whole machine."""
        t, ticks, rss = self.snap()
        return {
            "t": t,
            "server": ticks,
            "rss": rss,
            "loadgen": read_tree(loadgen_pid)[0],
            "machine": machine_busy_ticks(),
        }

    def run(self) -> None:
        while not self.halt.wait(0.1):
            self.snap()


@dataclass
class Marked:
    returncode: int | None  # None: killed after the time limit
    stdout: str
    marks: dict[str, dict]  # phase name -> Sampler.mark() read the moment it was printed
    tail: list[str]  # the last lines of its stderr


def run_marked(argv: list[str], sampler: Sampler, limit: float, verbose: bool = False) -> Marked:
    """Run a Node client script (cwd bench/loadgen) to its end, bounded by ``limit`` seconds. Every
    ``@phase NAME`` line it prints on stderr reads /proc at that moment (exact CPU window edges);
    the sampler is stopped when the script ends."""
    gen = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=LOADGEN)
    marks: dict[str, dict] = {}
    tail: deque[str] = deque(maxlen=40)

    def read_stderr() -> None:
        for line in gen.stderr:
            if line.startswith("@phase "):
                marks[line.split()[1]] = sampler.mark(gen.pid)
            else:
                tail.append(line.rstrip())
                if verbose:
                    sys.stderr.write(line)

    stdout: list[str] = []
    readers = [
        threading.Thread(target=read_stderr, daemon=True),
        threading.Thread(target=lambda: stdout.append(gen.stdout.read()), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        gen.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(gen)
        return Marked(None, "", marks, list(tail))
    finally:
        stop(gen)
        sampler.halt.set()
        if sampler.is_alive():
            sampler.join()
    for t in readers:
        t.join(5)
    return Marked(gen.returncode, "".join(stdout), marks, list(tail))


# ---------------------------------------------------------------- one run


def loadgen_argv(server: Server, port: int, shape: dict, args: argparse.Namespace, tag: str) -> list[str]:
    argv = [
        shutil.which("node") or "node",
        str(LOADGEN / "loadgen.mjs"),
        "--room-url",
        server.room_url.replace("{port}", str(port)),
        "--room-prefix",
        tag,
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--clients",
        str(shape["clients"]),
        "--client",
        server.client,
    ]
    if "idle" in shape:
        argv += ["--idle", str(args.idle_connections or shape["idle"]), "--settle", str(args.warmup)]
    else:
        argv += [
            "--rooms",
            str(shape["rooms"]),
            "--rate",
            str(shape["rate"]),
            "--awareness-rate",
            str(shape.get("awareness", 0)),
        ]
        if args.events and server.events:
            argv.append("--events")
    return argv


def shape_desc(shape_id: str, args: argparse.Namespace) -> str:
    desc = SHAPES[shape_id]["desc"]
    return desc.replace("2000", str(args.idle_connections)) if shape_id == "idle" and args.idle_connections else desc


def run_one(server: Server, shape_id: str, args: argparse.Namespace, rep: int) -> dict:
    shape = SHAPES[shape_id]
    base = {"server": server.name, "shape": shape_id, "desc": shape_desc(shape_id, args), "repeat": rep}
    if server.store:
        base["store"] = server.store
    port = free_port()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{server.name}-{shape_id}-{rep}.log"
    tag = f"{shape_id}-{server.name.replace('-', '')}-{rep}-{os.getpid()}"
    env = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in server.env.items()}}
    cleanup = None
    if server.per_run:
        try:
            extra_env, cleanup = server.per_run(tag)
        except Exception as exc:  # noqa: BLE001 - e.g. the database went away
            return {**base, "error": f"per-run setup failed: {type(exc).__name__}: {exc}"}
        env.update(extra_env)
    # a throwaway working directory: nothing a server writes by default outlives its run
    workdir = tempfile.TemporaryDirectory(prefix="run-", dir=CACHE)
    try:
        with open(log_path, "wb") as srv_log:
            proc = spawn(server.argv(port), stdout=srv_log, stderr=subprocess.STDOUT, env=env, cwd=workdir.name)
    except BaseException:
        workdir.cleanup()
        if cleanup:
            cleanup()
        raise
    try:
        if not wait_accepting(port, proc):
            return {**base, "error": f"server did not accept on port {port}; see {log_path}"}
        sampler = Sampler(proc.pid)
        time.sleep(0.5)  # let start-up allocation settle before the baseline
        _, _, rss_base = sampler.snap()
        sampler.start()
        limit = 2 * 60 + args.warmup + args.duration + 5 + 3 + 30  # 2 connect stages, window, drain, close
        run = run_marked(loadgen_argv(server, port, shape, args, tag), sampler, limit, args.verbose)
        marks, tail = run.marks, run.tail
        if run.returncode is None:
            return {**base, "error": f"load generator exceeded {limit:.0f} s", "loadgen_log": tail[-10:]}
        if run.returncode != 0 or not run.stdout.strip():
            return {**base, "error": f"load generator exited {run.returncode}", "loadgen_log": tail[-10:]}
        if "measure_start" not in marks or "measure_end" not in marks:
            return {**base, "error": "load generator printed no measurement window", "loadgen_log": tail[-10:]}
        result = {**base, **json.loads(run.stdout.strip().splitlines()[-1])}
        m0, m1 = marks["measure_start"], marks["measure_end"]
        rss_end = m1["rss"]

        def cpu_pct(key: str) -> float:
            return round((m1[key] - m0[key]) / CLK_TCK / (m1["t"] - m0["t"]) * 100, 1)

        result["server_cpu_pct"] = cpu_pct("server")
        # everything else the machine did in the window (other jobs skew a run: rerun it)
        # (clamped: the three counters are read microseconds apart, so ~0 can come out as -2)
        result["other_cpu_pct"] = max(0.0, round(cpu_pct("machine") - result["server_cpu_pct"] - cpu_pct("loadgen"), 1))
        result["server_rss_base_kb"] = rss_base
        result["server_rss_peak_kb"] = sampler.peak_rss
        if result["mode"] == "idle":
            # after every client synced plus the settle time; and again after the idle window,
            # which includes one round of the clients' 15 s awareness renewals
            n = max(1, result["connected"])
            result["server_rss_idle_kb"] = m0["rss"]
            result["kb_per_conn"] = round((m0["rss"] - rss_base) / n, 1)
            result["kb_per_conn_end"] = round((rss_end - rss_base) / n, 1)
        if proc.poll() is not None:
            result["error"] = f"server exited with {proc.returncode} during the run; see {log_path}"
        return result
    finally:
        stop(proc)
        workdir.cleanup()
        if cleanup:
            cleanup()


# ---------------------------------------------------------------- summary


def med(rows: list[dict], key) -> float | None:
    vals = [v for v in (key(r) for r in rows) if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def summarize(results: list[dict], target: str) -> dict:
    def metrics(rows: list[dict]) -> dict:
        return {
            "cpu": med(rows, lambda r: r.get("server_cpu_pct")),
            "p50": med(rows, lambda r: (r.get("latency_ms") or {}).get("p50")),
            "p99": med(rows, lambda r: (r.get("latency_ms") or {}).get("p99")),
            "kb_per_conn": med(rows, lambda r: r.get("kb_per_conn")),
            "errors": med(rows, lambda r: (r.get("errors") or {}).get("total")),
            **(
                {
                    "ack_p50": med(rows, lambda r: r.get("ack_p50_ms")),
                    "ack_p99": med(rows, lambda r: r.get("ack_p99_ms")),
                    "unacked": med(rows, lambda r: r.get("unacked")),
                }
                if any("acks" in r for r in rows)
                else {}
            ),
        }

    medians: dict[str, dict] = {}
    for r in results:
        if "error" not in r:
            medians.setdefault(r["shape"], {}).setdefault(r["server"], []).append(r)
    medians = {s: {srv: metrics(rows) for srv, rows in by.items()} for s, by in medians.items()}
    ratios: dict[str, dict] = {}
    for shape, by in medians.items():
        if target not in by:
            continue
        for ref, m in by.items():
            if ref == target:
                continue
            keys = ("cpu", "kb_per_conn") if shape == "idle" else ("cpu", "p99")
            ratios.setdefault(shape, {})[ref] = {
                k: float(f"{by[target][k] / m[k]:.3g}") if by[target][k] is not None and m[k] else None for k in keys
            }
            if m["errors"] or by[target]["errors"]:
                # a side that was not keeping up: its CPU figure is a ceiling, not a cost
                ratios[shape][ref]["errors"] = {target: by[target]["errors"], ref: m["errors"]}
    out = {"summary": True, "target": target, "medians": medians, "ratios": ratios}
    if not ratios:
        out["note"] = f"no ratios: {target} produced no results in this run"
    return out


def print_table(summary: dict) -> None:
    """The summary as a small table on stderr, for people."""
    acks = any("ack_p99" in m for by in summary["medians"].values() for m in by.values())
    ack_head = f" {'ack p50':>8} {'ack p99':>8} {'unacked':>7}" if acks else ""
    log(
        f"{'shape':6} {'server':18} {'cpu%':>6} {'p50 ms':>8} {'p99 ms':>8} {'KB/conn':>8} {'errors':>6}{ack_head}"
        f"   ratio of {summary['target']}"
    )
    fmt = lambda v, w: f"{v:>{w}.1f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"  # noqa: E731
    for shape, by in summary["medians"].items():
        for srv, m in by.items():
            r = summary["ratios"].get(shape, {}).get(srv)
            rs = "  ".join(f"{k} x{'-' if v is None else v}" for k, v in r.items() if k != "errors") if r else ""
            rs += "  (errors!)" if r and "errors" in r else ""
            ack = f" {fmt(m.get('ack_p50'), 8)} {fmt(m.get('ack_p99'), 8)} {fmt(m.get('unacked'), 7)}" if acks else ""
            log(
                f"{shape:6} {srv:18} {fmt(m['cpu'], 6)} {fmt(m['p50'], 8)} {fmt(m['p99'], 8)} "
                f"{fmt(m['kb_per_conn'], 8)} {fmt(m['errors'], 6)}{ack}   {rs}"
            )


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--servers",
        default=",".join(s for s in servers() if s not in ("canvashub-postgres", "canvashub-hocuspocus")),
        help="comma-separated (default: %(default)s; also canvashub-postgres and canvashub-hocuspocus: "
        "canvashub's /hocuspocus endpoint driven by @hocuspocus/provider); canvashub runs once per --stores entry",
    )
    ap.add_argument(
        "--stores",
        default="sqlite",
        help="canvashub's storage backends, comma-separated from: sqlite,postgres; sqlite runs as "
        "'canvashub', postgres as 'canvashub-postgres' (default: %(default)s)",
    )
    ap.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL DSN for --stores postgres; every run gets a throwaway schema in it "
        "(default: $BENCH_DATABASE_URL or %(default)s)",
    )
    ap.add_argument(
        "--events",
        action="store_true",
        help="canvashub clients opt in to save events; report durable-ack latency (ack_*_ms, acks, unacked)",
    )
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, from: %(default)s")
    ap.add_argument("--duration", type=float, default=15, help="measurement window per run, s")
    ap.add_argument("--warmup", type=float, default=3, help="load before the window (idle: settle), s")
    ap.add_argument("--repeat", type=int, default=1, help="run every (shape, server) this many times")
    ap.add_argument("--idle-connections", type=int, default=0, help="override the idle shape's 2000")
    ap.add_argument(
        "--target",
        default=None,
        help="server whose ratios the summary reports (default: canvashub, or canvashub-postgres "
        "if only postgres is in --stores)",
    )
    ap.add_argument("--threads", type=int, default=2, help="load generator worker threads")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    ap.add_argument("--canvashub-args", default="", help="extra arguments for `canvashub serve`")
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run canvashub from another checkout (its own .venv, on its embedded SQLite) as server LABEL, "
        "e.g. an older commit, in the same run (add LABEL to --servers)",
    )
    ap.add_argument("--verbose", action="store_true", help="echo the load generator's log")
    ap.add_argument(
        "--summarize",
        type=Path,
        metavar="JSONL",
        help="run nothing: print the summary of result lines saved with --out (several runs may be concatenated)",
    )
    args = ap.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    if not stores or any(s not in STORES for s in stores):
        ap.error(f"--stores: comma-separated from {','.join(STORES)}")
    if args.target is None:
        args.target = "canvashub" if "sqlite" in stores else "canvashub-postgres"
    if args.summarize:
        rows = [json.loads(line) for line in args.summarize.read_text().splitlines() if line.strip()]
        summary = summarize([r for r in rows if not r.get("summary")], args.target)
        print(json.dumps(summary, separators=(",", ":")))
        print_table(summary)
        return 0
    all_servers = servers(args.canvashub_args, args.database_url)
    for item in args.compare:
        label, _, tree = item.partition("=")
        base = all_servers["canvashub"]
        exe = Path(tree).resolve() / ".venv" / "bin" / "canvashub"
        cmd = [str(exe), *base.command[1:]] if base.command else None
        all_servers[label] = Server(
            label, base.room_url, cmd, missing=f"{exe} not found", env=dict(base.env), events=True, store="sqlite"
        )
    names = []
    for n in (s for s in args.servers.split(",") if s):
        # canvashub once per store: sqlite -> canvashub, postgres -> canvashub-postgres
        per_store = {"sqlite": "canvashub", "postgres": "canvashub-postgres"}
        variants = [per_store[st] for st in stores] if n == "canvashub" else [n]
        names += [v for v in variants if v not in names]
    shapes = [s for s in args.shapes.split(",") if s]
    bad = [n for n in names if n not in all_servers] + [s for s in shapes if s not in SHAPES]
    if bad:
        ap.error(f"unknown server or shape: {', '.join(bad)}")

    # SIGINT -> KeyboardInterrupt even if started with SIGINT ignored (e.g. `cmd &` in a script),
    # SIGTERM/SIGHUP -> SystemExit: either way the finally below stops every child
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (args.idle_connections or 2000) + 512
    if soft < need and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, 65536)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need and "idle" in shapes:
        log(f"warning: open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} < {need}")

    chosen: list[Server] = []
    for n in names:
        s = all_servers[n]
        if s.command is None:
            log(f"skipping {n}: {s.missing}")
        else:
            chosen.append(s)
    results: list[dict] = []
    out_f = open(args.out, "a") if args.out else None

    def emit(obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":"))
        print(line, flush=True)
        if out_f:
            out_f.write(line + "\n")
            out_f.flush()

    try:
        CACHE.mkdir(exist_ok=True)
        prepare_loadgen()
        for s in chosen:
            if s.prepare:
                s.prepare()
        t_start = time.monotonic()
        # repeat -> shape -> server, so slow drift on the machine hits every server alike
        for rep in range(args.repeat):
            for shape_id in shapes:
                for s in chosen:
                    log(f"{shape_id} ({shape_desc(shape_id, args)}) on {s.name}, repeat {rep + 1}/{args.repeat}")
                    r = run_one(s, shape_id, args, rep)
                    if "error" in r:
                        log(f"  error: {r['error']}")
                    results.append(r)
                    emit(r)
        log(f"done in {time.monotonic() - t_start:.0f} s")
        summary = summarize(results, args.target)
        emit(summary)
        print_table(summary)
    finally:
        stop_all()
        if out_f:
            out_f.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        log("interrupted")
        sys.exit(130)
