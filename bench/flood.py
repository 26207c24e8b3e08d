"""Connection flood: an honest room's update latency alone, then while hostile sockets come and go.

    .venv/bin/python bench/flood.py [--sockets 2000] [--concurrency 20] [--rate 0] [--repeat 3]
        [--clients 3] [--interval 0.005] [--baseline 5] [--hostile-canvases 1]
        [--tree LABEL=DIR ...] [--variant LABEL=NAME=VALUE[,NAME=VALUE] ...] [--env NAME=VALUE ...]

Three processes share the machine's cores:

- the server: ``python -m canvashub.server serve`` (what ``canvashub serve`` runs), for each ``--tree``
  with that checkout's own .venv (default: this checkout), and for each ``--variant`` this checkout
  with extra settings; with its defaults: embedded SQLite in a temporary directory, durable
  storage, log level ``info``, every limit at its default (``--env`` adds settings). Its log goes
  to a file whose growth per window is reported;
- this process: the honest room (``--clients`` websockets clients taking turns to send a real
  pycrdt update every ``--interval``; latency = send until every other client received it,
  tests/healthy_room.py) and an honest joiner that opens a fresh socket to the same canvas every
  ``--join-interval`` s and waits for the server's sync step 1 (this is what would be refused if
  a per-IP limit locked honest users out: all sockets come from 127.0.0.1);
- the hostile load generator (this script with ``--hostile-port``): ``--sockets`` raw sockets,
  ``--concurrency`` at a time, against ``--hostile-canvases`` other canvases. Each one upgrades,
  waits for the server's sync step 1, sends one malformed frame (a varint over 10 bytes, an
  unknown message type, a length past the end, random bytes, a text frame, a header claiming a
  frame over the cap, or just a close frame) and reads until the server closes it
  (tests/raw_ws.py).

Per repeat and tree: a fresh server; warm-up; a baseline window of ``--baseline`` s; then the
flood window, from the hostile process's first socket to its last. Trees run interleaved per
repeat, so "before" and "after" share the machine's state. Prints one JSON line; progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from run import CLK_TCK, free_port, log, machine_busy_ticks, read_tree, spawn, stop, wait_accepting  # noqa: E402

from tests import raw_ws  # noqa: E402

HONEST_CANVAS = "honest"
WARMUP_UPDATES = 100
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
# ---------------------------------------------------------------- the hostile load generator


async def hostile_main(args: argparse.Namespace) -> None:
    """``--hostile-port``: open ``--sockets`` hostile sockets, print one JSON line with the outcomes."""
    rng = random.Random(args.seed)
    kinds = list(raw_ws.FLOOD_KINDS)
    upgrades = [raw_ws.upgrade_request(args.hostile_port, f"flood-{c}") for c in range(args.hostile_canvases)]
    plan = [(kinds[i % len(kinds)], upgrades[i % len(upgrades)]) for i in range(args.sockets)]
    wires = [raw_ws.flood_wire(kind, rng, args.max_frame_bytes) for kind, _ in plan]
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    indices = iter(range(args.sockets))

    loop = asyncio.get_running_loop()
    started = loop.time()

    async def worker() -> None:
        for i in indices:
            kind, upgrade = plan[i]
            if args.rate:  # open loop: socket i starts at i / rate, or as soon as a slot frees up
                await asyncio.sleep(started + i / args.rate - loop.time())  # pacing, not waiting on a condition
            outcome = await raw_ws.attack("127.0.0.1", args.hostile_port, upgrade, wires[i])
            outcomes[kind][str(outcome)] += 1

    print("start", flush=True)  # the flood window opens now
    cpu0, t0 = cpu_seconds_self(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    seconds = time.monotonic() - t0
    print(
        json.dumps(
            {
                "seconds": round(seconds, 3),
                "cpu_pct": round(100 * (cpu_seconds_self() - cpu0) / seconds, 1),
                "outcomes": {k: dict(v) for k, v in outcomes.items()},
            }
        ),
        flush=True,
    )


def cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- the honest side


class Joiner:
    """Opens a fresh socket to the honest canvas every ``interval`` s; counts refusals."""

    def __init__(self, address, interval: float) -> None:
        self.address = address
        self.interval = interval
        self.latencies: list[float] = []
        self.refused: collections.Counter = collections.Counter()  # HTTP status of a refused upgrade
        self.failed: collections.Counter = collections.Counter()  # other failures, by exception type

    async def run(self, stop_event: asyncio.Event) -> None:
        import websockets

        while not stop_event.is_set():
            started = time.perf_counter()
            try:
                ws = await self.address.connect(HONEST_CANVAS, open_timeout=10)
                try:
                    first = await asyncio.wait_for(ws.recv(), 10)
                    if first[:2] != b"\x00\x00":
                        self.failed["unexpected first frame"] += 1
                    else:
                        self.latencies.append(time.perf_counter() - started)
                finally:
                    await ws.close()
            except websockets.InvalidStatus as exc:
                self.refused[str(exc.response.status_code)] += 1
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                self.failed[type(exc).__name__] += 1
            try:
                await asyncio.wait_for(stop_event.wait(), self.interval)
            except TimeoutError:
                pass

    def summary(self) -> dict:
        from tests.healthy_room import percentile

        ms = [v * 1e3 for v in self.latencies]
        return {
            "ok": len(ms),
            "refused": dict(self.refused),
            "failed": dict(self.failed),
            "p50_ms": round(percentile(ms, 0.5), 2) if ms else None,
            "p99_ms": round(percentile(ms, 0.99), 2) if ms else None,
        }


class Window:
    """CPU and log growth between two instants: the server tree, this process, the whole machine."""

    def __init__(self, server_pid: int, log_path: Path) -> None:
        self.server_pid = server_pid
        self.log_path = log_path
        self.start = self._read()

    def _read(self) -> dict:
        with open(self.log_path, "rb") as f:
            lines = f.read().count(b"\n")
        return {
            "t": time.monotonic(),
            "server": read_tree(self.server_pid)[0],
            "self": cpu_seconds_self(),
            "machine": machine_busy_ticks(),
            "log_bytes": self.log_path.stat().st_size,
            "log_lines": lines,
        }

    def close(self) -> dict:
        end = self._read()
        s = self.start
        seconds = end["t"] - s["t"]
        server = 100 * (end["server"] - s["server"]) / CLK_TCK / seconds
        honest = 100 * (end["self"] - s["self"]) / seconds
        machine = 100 * (end["machine"] - s["machine"]) / CLK_TCK / seconds
        return {
            "seconds": round(seconds, 2),
            "server_cpu_pct": round(server, 1),
            "honest_cpu_pct": round(honest, 1),
            "machine_cpu_pct": round(machine, 1),
            "log_lines": end["log_lines"] - s["log_lines"],
            "log_bytes": end["log_bytes"] - s["log_bytes"],
        }


def latency_summary(samples: list[float]) -> dict:
    from tests.healthy_room import percentile

    ms = [v * 1e3 for v in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


async def measure(args: argparse.Namespace, port: int, server_pid: int, log_path: Path) -> dict:
    from tests.healthy_room import HealthyRoom
    from tests.support import ServerAddress

    address = ServerAddress()
    address.port = port
    room = HealthyRoom(address, HONEST_CANVAS, clients=args.clients, interval=args.interval)
    await room.open()
    await room.run([], count=WARMUP_UPDATES)
    result: dict = {}

    # -- baseline: the honest room and the joiner alone ---------------------------------------
    samples: list[float] = []
    joiner = Joiner(address, args.join_interval)
    stop_event = asyncio.Event()
    window = Window(server_pid, log_path)
    tasks = [asyncio.create_task(room.run(samples, stop=stop_event)), asyncio.create_task(joiner.run(stop_event))]
    await asyncio.sleep(args.baseline)  # a fixed-length measurement window
    stop_event.set()
    await asyncio.gather(*tasks)
    result["baseline"] = {**latency_summary(samples), **window.close(), "joins": joiner.summary()}

    # -- the flood: the same, while the hostile process runs ----------------------------------
    samples = []
    joiner = Joiner(address, args.join_interval)
    stop_event = asyncio.Event()
    hostile = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--hostile-port",
        str(port),
        "--sockets",
        str(args.sockets),
        "--concurrency",
        str(args.concurrency),
        "--hostile-canvases",
        str(args.hostile_canvases),
        "--seed",
        str(args.seed),
        "--max-frame-bytes",
        str(args.max_frame_bytes),
        "--rate",
        str(args.rate),
        stdout=subprocess.PIPE,
        cwd=str(ROOT),
    )
    if args.honest_nice:  # the hostile process inherited this process's priority: back to the default
        os.setpriority(os.PRIO_PROCESS, hostile.pid, 0)
    assert hostile.stdout is not None
    first = await asyncio.wait_for(hostile.stdout.readline(), 60)
    assert first.strip() == b"start", first
    window = Window(server_pid, log_path)
    tasks = [asyncio.create_task(room.run(samples, stop=stop_event)), asyncio.create_task(joiner.run(stop_event))]
    out = await asyncio.wait_for(hostile.stdout.read(), 600)
    flood_window = window.close()
    stop_event.set()
    await asyncio.gather(*tasks)
    await hostile.wait()
    report = json.loads(out.decode().strip().splitlines()[-1])
    outcomes = report["outcomes"]
    codes: collections.Counter = collections.Counter()
    wrong: collections.Counter = collections.Counter()
    for kind, by_outcome in outcomes.items():
        for outcome, n in by_outcome.items():
            codes[outcome] += n
            allowed = {str(c) for c in raw_ws.FLOOD_KINDS[kind]}
            if outcome not in allowed:
                wrong[f"{kind}:{outcome}"] += n
    result["flood"] = {
        **latency_summary(samples),
        **flood_window,
        "joins": joiner.summary(),
        "hostile": {
            "completed": sum(codes.values()),
            "sockets_per_s": round(sum(codes.values()) / report["seconds"], 1),
            "cpu_pct": report["cpu_pct"],
            "close_codes": dict(sorted(codes.items())),
            "unexpected": dict(wrong),
        },
    }
    result["p99_ratio"] = round(result["flood"]["p99_ms"] / result["baseline"]["p99_ms"], 2)
    await room.close()
    return result


def run_tree(
    args: argparse.Namespace,
    label: str,
    tree: Path,
    repeat: int,
    workdir: Path,
    variant_env: dict[str, str] | None = None,
) -> dict:
    port = free_port()
    data_dir = workdir / f"data-{label}-{repeat}"
    log_path = workdir / f"server-{label}-{repeat}.log"
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "CANVASHUB_DATA_DIR": str(data_dir),
        **dict(args.env),
        **(variant_env or {}),
    }
    env.pop("PYTHONPATH", None)
    # canvashub is installed editable into each checkout's own .venv (make): that venv's Python runs that
    # checkout's code; this checkout's interpreter runs this one.
    python = tree / ".venv" / "bin" / "python"
    with open(log_path, "wb") as server_log:
        proc = spawn(
            [
                str(python) if python.exists() else sys.executable,
                "-m",
                "canvashub.server",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(tree),
            preexec_fn=(lambda: os.sched_setaffinity(0, args.server_cpus)) if args.server_cpus else None,
        )
    try:
        if not wait_accepting(port, proc):
            return {"tree": label, "repeat": repeat, "error": f"server did not start; see {log_path}"}
        result = asyncio.run(measure(args, port, proc.pid, log_path))
        if proc.poll() is not None:
            result["error"] = f"server exited with {proc.returncode}"
        events: collections.Counter = collections.Counter()
        with open(log_path, "rb") as f:
            for line in f:
                try:
                    events[json.loads(line).get("event", "?")] += 1
                except ValueError:
                    events["(not json)"] += 1
        return {"tree": label, "repeat": repeat, **result, "server_log_events": dict(events.most_common(12))}
    finally:
        stop(proc)


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def summarize(runs: list[dict]) -> dict:
    by_tree: dict[str, list[dict]] = collections.defaultdict(list)
    for run in runs:
        if "error" not in run:
            by_tree[run["tree"]].append(run)
    out = {}
    for tree, rows in by_tree.items():
        out[tree] = {
            "baseline_p99_ms": spread([r["baseline"]["p99_ms"] for r in rows]),
            "flood_p99_ms": spread([r["flood"]["p99_ms"] for r in rows]),
            "p99_ratio": spread([r["p99_ratio"] for r in rows]),
            "baseline_p50_ms": spread([r["baseline"]["p50_ms"] for r in rows]),
            "flood_p50_ms": spread([r["flood"]["p50_ms"] for r in rows]),
            "server_cpu_pct_flood": spread([r["flood"]["server_cpu_pct"] for r in rows]),
            "hostile_sockets_per_s": spread([r["flood"]["hostile"]["sockets_per_s"] for r in rows]),
            "honest_joins_refused": sum(
                sum(r[w]["joins"]["refused"].values()) for r in rows for w in ("baseline", "flood")
            ),
            "honest_joins_failed": sum(
                sum(r[w]["joins"]["failed"].values()) for r in rows for w in ("baseline", "flood")
            ),
            "hostile_unexpected": sum(sum(r["flood"]["hostile"]["unexpected"].values()) for r in rows),
            "target_2x_met": statistics.median([r["p99_ratio"] for r in rows]) < 2,
        }
    return out


def cpu_list(text: str) -> set[int]:
    return {int(c) for c in text.split(",") if c.strip()}


def place_processes(args: argparse.Namespace) -> dict:
    """Pin this process (and so the hostile one) and raise its priority, as asked; say where everything runs."""
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    if args.honest_nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.honest_nice)
        except PermissionError:
            args.honest_nice = 0
    where = lambda cpus: f"CPUs {sorted(cpus)}" if cpus else "any CPU"  # noqa: E731
    return {
        "server": f"child process `python -m server serve` (SQLite, defaults unless --env), {where(args.server_cpus)}",
        "honest": f"this process: the honest room and the joiner (websockets clients, one loop), "
        f"{where(args.client_cpus)}, nice {args.honest_nice}",
        "hostile": f"child process of this one (raw sockets, tests/raw_ws.py), {where(args.client_cpus)}, nice 0",
        "machine_cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=2000, help="hostile sockets per flood")
    parser.add_argument("--concurrency", type=int, default=20, help="hostile sockets open at once")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="hostile sockets started per second, at most --concurrency open (0: a new one as soon "
        "as one ends, as fast as the server lets them: the offered load then grows when the "
        "server gets cheaper)",
    )
    parser.add_argument("--hostile-canvases", type=int, default=1, help="canvases the hostile sockets spread over")
    parser.add_argument("--clients", type=int, default=3, help="honest clients in the measured room")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between two honest updates")
    parser.add_argument("--join-interval", type=float, default=0.1, help="seconds between two honest joins")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of the baseline window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a canvashub checkout to run the server from (repeatable; default: this one)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=NAME=VALUE[,NAME=VALUE]",
        help="also run this checkout with these settings, interleaved with the trees",
    )
    two = (os.cpu_count() or 1) >= 2
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        default={0} if two else set(),
        metavar="LIST",
        help="CPUs the server is pinned to (default 0; empty: not pinned)",
    )
    parser.add_argument(
        "--client-cpus",
        type=cpu_list,
        default={1} if two else set(),
        metavar="LIST",
        help="CPUs the honest and hostile processes are pinned to (default 1; empty: not pinned)",
    )
    parser.add_argument(
        "--honest-nice", type=int, default=-5, help="priority of the honest process (below 0 needs root; 0: unchanged)"
    )
    parser.add_argument("--hostile-port", type=int, help=argparse.SUPPRESS)  # internal: be the hostile process
    parser.add_argument("--max-frame-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.env = [tuple(item.split("=", 1)) for item in args.env]
    if args.max_frame_bytes is None:
        args.max_frame_bytes = int(dict(args.env).get("CANVASHUB_MAX_FRAME_BYTES", DEFAULT_MAX_FRAME_BYTES))
    if args.hostile_port is not None:
        asyncio.run(hostile_main(args))
        return
    trees = [tuple(item.split("=", 1)) for item in args.tree] or ([] if args.variant else [("current", str(ROOT))])
    # --variant LABEL=NAME=VALUE[,NAME=VALUE]: this checkout with extra settings, interleaved like trees.
    variants: list[tuple[str, str, dict[str, str]]] = [(label, tree, {}) for label, tree in trees]
    for item in args.variant:
        label, _, settings = item.partition("=")
        variants.append((label, str(ROOT), dict(pair.split("=", 1) for pair in settings.split(",") if pair)))
    placement = place_processes(args)
    runs = []
    with tempfile.TemporaryDirectory(prefix="flood-") as workdir:
        for repeat in range(args.repeat):
            for label, tree, variant_env in variants:
                log(f"flood: {label} repeat {repeat}")
                run = run_tree(args, label, Path(tree).resolve(), repeat, Path(workdir), variant_env)
                log(
                    json.dumps({k: run.get(k) for k in ("tree", "p99_ratio", "error")}),
                    {
                        w: {k: run[w][k] for k in ("p50_ms", "p99_ms", "server_cpu_pct")}
                        for w in ("baseline", "flood")
                        if w in run
                    },
                )
                runs.append(run)
    print(
        json.dumps(
            {
                "bench": "flood",
                "sockets": args.sockets,
                "concurrency": args.concurrency,
                "rate": args.rate,
                "hostile_canvases": args.hostile_canvases,
                "honest_clients": args.clients,
                "honest_interval_s": args.interval,
                "join_interval_s": args.join_interval,
                "server_env": dict(args.env),
                "processes": placement,
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "trees": {label: {"dir": tree, "env": env} for label, tree, env in variants},
                "runs": runs,
                "summary": summarize(runs),
            }
        )
    )


if __name__ == "__main__":
    main()
