"""eci-agent against the engine's own socket, in one run, as ratios.

    .venv/bin/python -m bench            # full run (~2-3 min), writes docs/BENCHMARKS.md
    .venv/bin/python -m bench --quick    # shorter, prints only (add --write to write the doc)

Starts its own private dockerd + registry + fixture images (tests/env) and the real
`eci-agent run` (tests/e2e/agent_process.py), then measures every case against both sockets,
taking turns (direct, proxy, then proxy, direct, ...), and stops and removes everything.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure as m
from bench.report import Report, render_markdown, render_text

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"


@dataclass(frozen=True)
class Plan:
    rounds: int  # rounds per case; each round runs every target, order alternating
    small_count: int  # requests per target per round (small requests)
    small_budget: float  # seconds per target per round, at most
    create_per_round: int
    create_budget: float
    stream_rounds: int
    cp_mib: int
    exec_mib: int
    clients: int
    load_seconds: float
    load_rounds: int


FULL = Plan(
    rounds=4,
    small_count=1500,
    small_budget=1.5,
    create_per_round=25,
    create_budget=3.0,
    stream_rounds=5,
    cp_mib=256,
    exec_mib=128,
    clients=200,
    load_seconds=5.0,
    load_rounds=2,
)
QUICK = Plan(
    rounds=2,
    small_count=500,
    small_budget=0.75,
    create_per_round=6,
    create_budget=1.5,
    stream_rounds=1,
    cp_mib=256,
    exec_mib=128,
    clients=200,
    load_seconds=2.0,
    load_rounds=1,
)


class RssSampler(threading.Thread):
    """Samples VmRSS of the agent every 50 ms; keeps the maximum seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.max_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            try:
                self.max_kib = max(self.max_kib, m.proc_status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(1)


def _order(i: int) -> tuple[str, ...]:
    turns = ("direct", "proxy", "floor", "kernel")
    return turns if i % 2 == 0 else turns[::-1]


class Floor:
    """A reference hop as a subprocess: `bench/floor.py` (parses nothing) by default, or
    `bench/kfloor.py` (one request per connection, its bytes moved by the kernel)."""

    def __init__(self, listen: str, engine: str, module: str = "bench.floor") -> None:
        self.listen = listen
        self.module = module
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, listen, engine],
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not m.socket_ok(listen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{module} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _machine(engine_socket: str, docker_cli: str) -> dict[str, str]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    cli = subprocess.run(
        [docker_cli, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    versions = {}
    for mod in ("httptools", "uvloop"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001 - informational only
            versions[mod] = "absent"
    return {
        "agent code": _git_state(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu or platform.processor() or "?",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dockerd": m.engine_version(engine_socket),
        "docker CLI": cli,
        "httptools": versions["httptools"],
        "uvloop": versions["uvloop"],
    }


def _git_state() -> str:
    """The commit measured, and whether agent/ had uncommitted changes then."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "agent")
    return f"commit {commit}" + (" + uncommitted changes in agent/" if dirty else "")


def run(plan: Plan, quick: bool, floor: bool = True) -> Report:
    from tests.e2e.agent_process import AgentProcess, settings_with
    from tests.env import Stack

    t_start = time.monotonic()
    report = Report(quick=quick, plan=plan.__dict__, date=datetime.now(UTC))
    _log("starting the private engine, registry and fixture images (tests/env)")
    with Stack() as stack:
        dockercli = stack.images["dockercli"]
        busybox = stack.images["busybox"]
        engine = stack.engine_socket
        workdir = Path(tempfile.mkdtemp(prefix="eci-bench-", dir="/tmp"))
        agent = AgentProcess(workdir, engine)
        worker = ""
        sampler: RssSampler | None = None
        ref: Floor | None = None
        kref: Floor | None = None
        try:
            agent.start(settings_with([dockercli]))
            assert agent.proc is not None
            pid = agent.proc.pid
            report.rss_start_kib = m.proc_status_kib(pid, "VmRSS")
            sampler = RssSampler(pid)
            sampler.start()
            cpu = m.CpuMeter(pid)
            cpu0 = m.proc_cpu_seconds(pid)
            report.machine = _machine(engine, stack.docker_cli or "docker")
            # compiled with mypyc or pure Python (agent/native.py), as the agent logged it
            report.machine["agent proxy code"] = next(
                (
                    ln.split("proxy code: ", 1)[1]
                    for ln in agent.log().splitlines()
                    if "proxy code: " in ln
                ),
                "?",
            )
            targets = {"direct": engine, "proxy": agent.listen}
            # The small requests, streams and load also go through the reference floor.
            measured = dict(targets)
            if floor:
                ref = Floor(str(workdir / "floor.sock"), engine)
                measured["floor"] = ref.listen
            # The streams also go through the kernel floor (one request per connection).
            streamed = dict(measured)
            if floor:
                kref = Floor(str(workdir / "kfloor.sock"), engine, "bench.kfloor")
                streamed["kernel"] = kref.listen
            foreign = m.ForeignLoad([str(stack.tmpdir), str(workdir)], stack.cgroup_parent)

            def checkpoint(label: str) -> None:
                foreign.mark(label)
                report.speed_after[label] = m.speed_probe()

            _log("setup: a worker container and a derived image")
            worker = m.start_worker(engine, busybox, "eci-bench-worker")
            derived = "eci-bench/derived:1"
            ctx = workdir / "derived"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(f"FROM {dockercli}\nLABEL eci.bench=derived\n")
            stack.docker("build", "-q", "-t", derived, str(ctx))
            checkpoint("setup")
            ticks0 = m.cpu_times()

            for path in ("/_ping", "/containers/json"):
                for fresh in (False, True):
                    kind = "fresh" if fresh else "kept-alive"
                    _log(f"small requests: {path} {kind}")
                    report.small[(path, fresh)] = m.small_requests(
                        measured,
                        _order,
                        path,
                        fresh,
                        plan.rounds,
                        plan.small_count,
                        plan.small_budget,
                        cpu,
                    )

            checkpoint("small requests")
            _log("create + remove with an allowed socket mount")
            with cpu.measure("create"):
                report.create = m.create_remove(
                    targets,
                    _order,
                    m.create_body(dockercli, engine),
                    plan.rounds,
                    plan.create_per_round,
                    plan.create_budget,
                )
            _log("create + remove of a derived image (allowDerivedImages)")
            agent.set_settings(settings_with([dockercli], allowDerivedImages=True))
            with cpu.measure("derived"):
                report.derived = m.create_remove(
                    targets,
                    _order,
                    m.create_body(derived, engine),
                    plan.rounds,
                    plan.create_per_round,
                    plan.create_budget,
                )

            checkpoint("create + remove")
            _log(f"streams: {plan.cp_mib} MiB archive each way, {plan.exec_mib} MiB exec")
            with cpu.measure("streams"):
                report.streams = m.streams(
                    streamed, _order, worker, plan.stream_rounds, plan.cp_mib, plan.exec_mib
                )
            env = stack.docker_env()
            _log(f"streams: the docker CLI copying a {plan.cp_mib} MiB file each way")
            with cpu.measure("streams"):
                report.streams.update(
                    m.cli_cp_streams(
                        stack.docker_cli or "docker",
                        env,
                        streamed,
                        _order,
                        worker,
                        plan.stream_rounds,
                        plan.cp_mib,
                        workdir,
                    )
                )
            for name, sock in targets.items():
                report.interactive[name] = m.interactive_exec(
                    stack.docker_cli or "docker", sock, env, worker
                )

            checkpoint("streams")
            for path in ("/_ping", "/containers/json"):
                _log(f"{plan.clients} concurrent clients: {path}")
                report.load[path] = m.concurrent(
                    measured,
                    _order,
                    path,
                    plan.clients,
                    plan.load_seconds,
                    plan.load_rounds,
                    cpu,
                )

            checkpoint("concurrent clients")
            _log("docker ps while the digest service refreshes new image lists")
            tags = 100

            def image_list(i: int) -> None:
                names = [f"{stack.registry}/bench/refresh-{i}-{k}:1" for k in range(tags)]
                # and a registry that refuses connections (the back-off path)
                names += [f"127.0.0.1:9/bench/gone-{i}-{k}:1" for k in range(tags // 10)]
                agent.set_settings(settings_with([dockercli, *names]), timeout=30)

            with cpu.measure("refresh"):
                report.refresh = m.refresh_stall(
                    agent.listen, image_list, tags, plan.small_budget * 2
                )
            agent.set_settings(settings_with([dockercli]))
            checkpoint("refresh")
            report.foreign = {
                k: (v, foreign.share(k)) for k, v in foreign.by_label.items() if k != "setup"
            }
            ticks1 = m.cpu_times()
            if ticks1[0] > ticks0[0]:
                report.steal = (ticks1[1] - ticks0[1]) / (ticks1[0] - ticks0[0])
            report.agent_cpu_s = m.proc_cpu_seconds(pid) - cpu0
            report.agent_cpu_by_phase = dict(cpu.by_label)
            report.rss_end_kib = m.proc_status_kib(pid, "VmRSS")
            report.hwm_kib = m.proc_status_kib(pid, "VmHWM")
            sampler.stop()
            report.rss_max_kib = max(sampler.max_kib, report.rss_end_kib)
            report.agent_alive = agent.proc.poll() is None
        finally:
            # Each step on its own, so one failing does not leave the others undone.
            if sampler is not None:
                with contextlib.suppress(Exception):
                    sampler.stop()
            for hop in (ref, kref):
                if hop is not None:
                    with contextlib.suppress(Exception):
                        hop.stop()
            if worker:
                m.remove_container(engine, worker)
            try:
                report.agent_exit = agent.stop()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.monotonic() - t_start
    return report


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, shorter load phases")
    p.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md (--quick)")
    p.add_argument("--no-write", action="store_true", help="do not write docs/BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=DOC, help=f"default: {DOC}")
    p.add_argument(
        "--no-floor", action="store_true", help="skip the reference floor (bench/floor.py)"
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (it starts a private dockerd)", file=sys.stderr)
        return 2
    # Our handlers (installed first) make SIGTERM/SIGHUP unwind through the finally blocks,
    # so the agent, the containers and the stack are always cleaned up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    plan = QUICK if args.quick else FULL
    report = run(plan, args.quick, floor=not args.no_floor)
    print(render_text(report))
    write = (args.write or not args.quick) and not args.no_write
    if write:
        previous = args.output.read_text() if args.output.exists() else None
        args.output.write_text(render_markdown(report, previous))
        _log(f"wrote {args.output}")
    _log(f"done in {report.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
