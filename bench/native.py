"""Could a native hop meet the targets a Python one cannot? One run, four targets in turns.

    python -m bench.native [--rounds N]

Targets: the engine socket (direct), `bench/cfloor.c` (a zero-parsing hop in C, compiled
here with the system's cc), `bench/floor.py` (the same hop in Python, uvloop) and the real
`eci-agent run`. Same measurements and clients as `python -m bench` (small requests kept-alive
and fresh, 200 concurrent clients, streams), printed as ratios to direct. The C hop parses
nothing, so it is a lower bound for any native proxy core on this machine: a target it misses
is out of reach for any hop here, whatever language. Not a test, writes no file.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import measure as m
from bench.run import Floor

ROOT = Path(__file__).resolve().parent.parent
TURNS = ("direct", "cfloor", "floor", "proxy")


def _order(i: int) -> tuple[str, ...]:
    return TURNS if i % 2 == 0 else TURNS[::-1]


class CFloor:
    def __init__(self, workdir: Path, listen: str, engine: str) -> None:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("bench.native: needs a C compiler (cc)")
        binary = workdir / "cfloor"
        subprocess.run([cc, "-O2", "-o", str(binary), str(ROOT / "bench" / "cfloor.c")], check=True)
        self.listen = listen
        self.proc = subprocess.Popen([str(binary), listen, engine], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not m.socket_ok(listen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("cfloor did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)


def _line(name: str, values: dict[str, float], unit: str, higher_is_better: bool) -> str:
    direct = values["direct"]
    cells = [f"{name:34s} direct {direct:9,.0f} {unit}"]
    for t in TURNS[1:]:
        ratio = values[t] / direct if direct else 0.0
        cells.append(f"{t} {ratio:5.2f}x")
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    from tests.e2e.agent_process import AgentProcess, settings_with
    from tests.env import Stack

    parser = argparse.ArgumentParser(prog="python -m bench.native")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    with Stack() as stack:
        engine = stack.engine_socket
        workdir = Path(tempfile.mkdtemp(prefix="eci-bench-native-", dir="/tmp"))
        agent = AgentProcess(workdir, engine)
        hops: list[CFloor | Floor] = []
        worker = ""
        try:
            agent.start(settings_with([stack.images["dockercli"]]))
            hops.append(CFloor(workdir, str(workdir / "cfloor.sock"), engine))
            hops.append(Floor(str(workdir / "floor.sock"), engine))
            targets = {
                "direct": engine,
                "cfloor": hops[0].listen,
                "floor": hops[1].listen,
                "proxy": agent.listen,
            }
            print("ratios to direct: latency p50 (lower is better), rates (higher is better)")
            for path in ("/_ping", "/containers/json"):
                for fresh in (False, True):
                    res = m.small_requests(targets, _order, path, fresh, args.rounds, 1500, 1.5)
                    p50 = {t: res.p(t, 50) for t in targets}
                    kind = "fresh" if fresh else "kept-alive"
                    print(_line(f"{path} {kind} p50", p50, "us", False), flush=True)
            for path in ("/_ping", "/containers/json"):
                load = m.concurrent(targets, _order, path, 200, 5.0, 2)
                rates = {t: load.rate(t) for t in targets}
                errors = sum(r.errors for runs in load.runs.values() for r in runs)
                print(_line(f"200 clients {path} ({errors} err.)", rates, "/s", True), flush=True)
            worker = m.start_worker(engine, stack.images["busybox"], "eci-bench-native")
            streams = m.streams(targets, _order, worker, 3, 256, 128)
            for name, res in streams.items():
                rates = {t: m.median(res.mib_per_s[t]) for t in targets}
                print(_line(f"stream {name} MiB/s", rates, "MiB/s", True), flush=True)
        finally:
            if worker:
                m.remove_container(engine, worker)
            for hop in hops:
                hop.stop()
            agent.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
