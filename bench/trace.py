"""Replay a real keystroke trace against canvashub and the Node reference server with LevelDB.

    .venv/bin/python bench/trace.py [--servers canvashub,node-leveldb] [--trace PATH] [--window 0]
        [--timeout 600] [--reload-timeout 120] [--settle 2] [--canvashub-args='...'] [--out FILE]

Per server, in a throwaway working directory under bench/.cache/ (so the store survives the
restart): start it on a free loopback port, run ``bench/loadgen/trace.mjs replay`` (one writer
applies every transaction of the trace to a Y.Text, its stock y-websocket provider sends one update
per transaction, a follower must end with the trace's ``endContent``; ``--window N`` bounds the
transactions in flight, 0 = unlimited), wait ``--settle`` seconds, stop the server (SIGINT first, as
run.py does), start it again on the same store and run ``trace.mjs reload`` (a fresh client must
receive the whole text within ``--reload-timeout``). The server's process tree is sampled from
/proc (CPU at the exact edges of the replay, peak RSS). Prints ONE JSON line: every server's
figures and canvashub's ratio to the reference. See bench/README.md ("Editing trace").

The trace is public data from github.com/josephg/editing-traces and is never committed: put
``sequential_traces/automerge-paper.json.gz`` at bench/.cache/automerge-paper.json.gz (gitignored)
or pass ``--trace``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run
from run import CACHE, CLK_TCK, LOADGEN, Sampler, free_port, log, run_marked, spawn, stop, wait_accepting

DEFAULT_TRACE = CACHE / "automerge-paper.json.gz"
REFERENCE = "node-leveldb"


def trace_servers(canvashub_args: str) -> dict[str, run.Server]:
    """canvashub on its embedded SQLite store, and @y/websocket-server persisting to LevelDB."""
    every = run.servers(canvashub_args)
    node = every["node"]
    # YPERSISTENCE is the directory y-leveldb writes (src/utils.js); relative to the working directory
    leveldb = dataclasses.replace(node, name=REFERENCE, env={**node.env, "YPERSISTENCE": "leveldb"})
    return {"canvashub": every["canvashub"], REFERENCE: leveldb}


def client_phase(server: run.Server, mode: str, workdir: str, room: str, args: argparse.Namespace) -> dict:
    """Start the server, run trace.mjs MODE against it, stop the server; the client's figures plus the
    server's CPU seconds, peak RSS and start-up time."""
    port = free_port()
    log_path = CACHE / "logs" / f"trace-{server.name}-{mode}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in server.env.items()}}
    started = time.monotonic()
    with open(log_path, "wb") as srv_log:
        proc = spawn(server.argv(port), stdout=srv_log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    out: dict = {}
    try:
        if not wait_accepting(port, proc, timeout=120):
            return {"error": f"{mode}: server did not accept on port {port}; see {log_path}"}
        out["accepting_s"] = round(time.monotonic() - started, 3)
        sampler = Sampler(proc.pid)
        sampler.start()
        timeout = args.timeout if mode == "replay" else args.reload_timeout
        argv = [
            shutil.which("node") or "node",
            str(LOADGEN / "trace.mjs"),
            mode,
            "--room-url",
            server.room_url.replace("{port}", str(port)),
            "--room",
            room,
            "--trace",
            str(args.trace),
            "--timeout",
            str(timeout),
            "--window",
            str(args.window),
        ]
        done = run_marked(argv, sampler, timeout + 60, args.verbose)
        if done.returncode != 0 or not done.stdout.strip():
            return {"error": f"{mode}: trace.mjs exited {done.returncode}", "log": done.tail[-10:]}
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
        if mode == "replay" and {"replay_start", "replay_end"} <= done.marks.keys():
            m0, m1 = done.marks["replay_start"], done.marks["replay_end"]
            out["server_cpu_s"] = round((m1["server"] - m0["server"]) / CLK_TCK, 2)
            out["server_cpu_pct"] = round((m1["server"] - m0["server"]) / CLK_TCK / (m1["t"] - m0["t"]) * 100, 1)
        else:  # reload: everything since the server started (loading the store is the work)
            out["server_cpu_s"] = round(sampler.snap()[1] / CLK_TCK, 2)
        out["server_rss_peak_kb"] = sampler.peak_rss
        if mode == "replay":
            time.sleep(args.settle)  # what a store still writes after the last frame may land
        if proc.poll() is not None:
            out["error"] = f"{mode}: server exited with {proc.returncode}; see {log_path}"
        return out
    finally:
        t = time.monotonic()
        stop(proc)
        out["stop_s"] = round(time.monotonic() - t, 3)


def run_server(server: run.Server, args: argparse.Namespace) -> dict:
    room = f"trace-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="trace-", dir=CACHE) as workdir:
        replay = client_phase(server, "replay", workdir, room, args)
        if "error" in replay:
            return {"replay": replay, "pass": False}
        reload = client_phase(server, "reload", workdir, room, args)
    ok = bool(replay.get("replay_ok") and replay.get("follower_text_ok") and reload.get("reload_ok"))
    return {"replay": replay, "reload": reload, "pass": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="canvashub," + REFERENCE, help="comma-separated, from: %(default)s")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="editing trace (.json.gz), default: %(default)s")
    ap.add_argument("--window", type=int, default=0, help="max transactions in flight (0: unlimited)")
    ap.add_argument("--timeout", type=float, default=600, help="replay limit, s")
    ap.add_argument("--reload-timeout", type=float, default=120, help="reload limit after the restart, s")
    ap.add_argument("--settle", type=float, default=2, help="wait between the replay's end and the restart, s")
    ap.add_argument("--canvashub-args", default="", help="extra arguments for `canvashub serve`")
    ap.add_argument("--out", type=Path, help="also append the JSON line to this file")
    ap.add_argument("--verbose", action="store_true", help="echo trace.mjs's log")
    args = ap.parse_args()
    if not args.trace.exists():
        ap.error(f"no trace at {args.trace}: see bench/README.md (Editing trace) for how to get it")
    available = trace_servers(args.canvashub_args)
    names = [n for n in args.servers.split(",") if n]
    bad = [n for n in names if n not in available]
    if bad:
        ap.error(f"unknown server: {', '.join(bad)}")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    with gzip.open(args.trace) as f:
        meta = json.load(f)
    line: dict = {
        "bench": "trace",
        "trace": args.trace.name,
        "transactions": len(meta["txns"]),
        "end_chars": len(meta["endContent"]),
        "window": args.window,
        "servers": {},
    }
    del meta
    try:
        CACHE.mkdir(exist_ok=True)
        run.prepare_loadgen()
        for name in names:
            server = available[name]
            if server.command is None:
                line["servers"][name] = {"error": server.missing, "pass": False}
                continue
            if server.prepare:
                server.prepare()
            log(f"trace on {name}, window {args.window or 'unlimited'}")
            line["servers"][name] = run_server(server, args)
            log(json.dumps(line["servers"][name]))
    finally:
        run.stop_all()
    hub, ref = line["servers"].get("canvashub", {}), line["servers"].get(REFERENCE, {})
    rates = [(s.get("replay") or {}).get("txn_per_s") for s in (hub, ref)]
    line["ratio_txn_per_s"] = round(rates[0] / rates[1], 3) if all(rates) else None
    text = json.dumps(line, separators=(",", ":"))
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        run.stop_all()
        log("interrupted")
        sys.exit(130)
