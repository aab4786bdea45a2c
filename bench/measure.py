"""The measurements: each runs the same client code against both targets, taking turns.

A "target" is a unix socket path: the engine's own socket ("direct"), the agent's listen
socket ("proxy"), or the reference floor's (`bench/floor.py`, "floor": a hop that parses
nothing). Every function here takes `targets` (name -> socket) and an `order(i)` that says in
which order the targets go in round `i` (A B C, then C B A, ...), so slow drift of the
machine falls on all targets alike; names in `order(i)` that are not in `targets` are skipped.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import (
    Conn,
    HTTPError,
    LoadResult,
    concurrent_load,
    latency_fresh,
    latency_keepalive,
    once,
    request_bytes,
)

Targets = Mapping[str, str]
Order = Callable[[int], tuple[str, ...]]
MiB = 1024 * 1024


def _turns(order: Order, i: int, targets: Targets) -> list[str]:
    return [t for t in order(i) if t in targets]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# ------------------------------------------------------------------- process accounting


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@dataclass
class CpuMeter:
    """CPU seconds a process spends inside `with meter.measure(label):` blocks."""

    pid: int
    by_label: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, label: str) -> Iterator[None]:
        c0 = proc_cpu_seconds(self.pid)
        try:
            yield
        finally:
            self.by_label[label] = self.by_label.get(label, 0.0) + proc_cpu_seconds(self.pid) - c0


# ---------------------------------------------------------------------- small requests


@dataclass
class LatencyResult:
    samples_us: dict[str, list[float]]  # target -> per-request latency (µs), all rounds
    agent_cpu_us_per_req: float | None = None

    def p(self, target: str, q: float) -> float:
        return percentile(self.samples_us[target], q)


def small_requests(
    targets: Targets,
    order: Order,
    path: str,
    fresh: bool,
    rounds: int,
    count: int,
    budget: float,
    agent_cpu: CpuMeter | None = None,
) -> LatencyResult:
    raw = request_bytes("GET", path)
    fn = latency_fresh if fresh else latency_keepalive
    samples: dict[str, list[float]] = {t: [] for t in targets}
    proxy_requests = 0
    label = f"small {path} {'fresh' if fresh else 'kept-alive'}"
    for sock in targets.values():  # warm every path (pool, caches)
        fn(sock, raw, 50, 1.0)
    for i in range(rounds):
        for t in _turns(order, i, targets):
            if t == "proxy" and agent_cpu is not None:
                with agent_cpu.measure(label):
                    got = fn(targets[t], raw, count, budget)
                proxy_requests += len(got)
            else:
                got = fn(targets[t], raw, count, budget)
            samples[t] += [ns / 1000 for ns in got]
    per_req = None
    if agent_cpu is not None and proxy_requests:
        per_req = agent_cpu.by_label[label] / proxy_requests * 1e6
    return LatencyResult(samples, per_req)


# ------------------------------------------------------------------ create and remove


def _json(resp_body: bytes) -> dict[str, object]:
    doc = json.loads(resp_body)
    assert isinstance(doc, dict)
    return doc


def create_body(image: str, engine_socket: str) -> bytes:
    return json.dumps(
        {
            "Image": image,
            "Cmd": ["true"],
            "HostConfig": {
                "Binds": [f"{engine_socket}:/var/run/docker.sock"],
                "NetworkMode": "none",
            },
        }
    ).encode()


def create_remove_once(target: str, body: bytes) -> tuple[float, float]:
    """(create ms, remove ms) for one container, each request on a fresh connection."""
    raw = request_bytes(
        "POST", "/containers/create", body, headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    r = once(target, raw)
    t1 = time.perf_counter()
    if r.status != 201:
        raise HTTPError(f"create -> {r.status}: {r.body[:300]!r}")
    cid = _json(r.body)["Id"]
    t2 = time.perf_counter()
    r = once(target, request_bytes("DELETE", f"/containers/{cid}?force=1&v=1"))
    t3 = time.perf_counter()
    if r.status != 204:
        raise HTTPError(f"remove -> {r.status}: {r.body[:300]!r}")
    return (t1 - t0) * 1000, (t3 - t2) * 1000


@dataclass
class CreateResult:
    create_ms: dict[str, list[float]]
    total_ms: dict[str, list[float]]


def create_remove(
    targets: Targets, order: Order, body: bytes, rounds: int, per_round: int, budget: float
) -> CreateResult:
    create_remove_once(targets["direct"], body)  # warm-up: the agent caches the digest
    create_remove_once(targets["proxy"], body)
    create: dict[str, list[float]] = {t: [] for t in targets}
    total: dict[str, list[float]] = {t: [] for t in targets}
    # One create each, in turns (the order flips every time): a create takes ~10-25 ms, and
    # the VM's speed drifts over seconds, so blocks of creates per target would measure drift.
    deadline = time.monotonic() + budget * rounds * len(targets)
    for i in range(rounds * per_round):
        for t in _turns(order, i, targets):
            c, r = create_remove_once(targets[t], body)
            create[t].append(c)
            total[t].append(c + r)
        if time.monotonic() > deadline:
            break
    return CreateResult(create, total)


# ----------------------------------------------------------------------------- streams


#: What the copied file holds: random bytes, as most real files look to a byte scanner (line
#: feeds and CRs at random places; a file of zeros has none, which flatters any scan for them).
PAYLOAD = random.Random(0x5EED).randbytes(MiB)


def tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def put_archive(target: str, container: str, size: int) -> float:
    """PUT a tar holding one `size`-byte file into /tmp of `container`; returns seconds."""
    head = tar_header("eci-bench-blob", size)
    pad = (-size) % 512
    trailer = b"\0" * (pad + 1024)
    length = len(head) + size + len(trailer)
    raw = request_bytes(
        "PUT",
        f"/containers/{container}/archive?path=/tmp",
        headers={"Content-Type": "application/x-tar", "Content-Length": str(length)},
    )
    payload = memoryview(PAYLOAD)
    t0 = time.perf_counter()
    with Conn(target, timeout=120) as c:
        c.sock.sendall(raw + head)
        left = size
        while left:
            n = min(left, MiB)
            c.sock.sendall(payload[:n])
            left -= n
        c.sock.sendall(trailer)
        r = c.read_response()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise HTTPError(f"PUT archive -> {r.status}: {r.body[:300]!r}")
    return dt


def put_archive_chunked(target: str, container: str, size: int, chunk: int = 32 * 1024) -> float:
    """The same PUT as `put_archive`, sent as the docker CLI sends it: chunked, in chunks of
    32 KiB (Go's `io.Copy` buffer through its chunked writer); returns seconds."""
    head = tar_header("eci-bench-blob", size)
    pad = (-size) % 512
    raw = request_bytes(
        "PUT",
        f"/containers/{container}/archive?path=/tmp",
        headers={"Content-Type": "application/x-tar", "Transfer-Encoding": "chunked"},
    )
    block = PAYLOAD[:chunk]
    framed = b"%x\r\n" % chunk + block + b"\r\n"
    per_send = max(1, MiB // chunk)
    t0 = time.perf_counter()
    with Conn(target, timeout=120) as c:
        c.sock.sendall(raw + b"%x\r\n" % len(head) + head + b"\r\n")
        left = size
        while left >= chunk * per_send:
            c.sock.sendall(framed * per_send)
            left -= chunk * per_send
        while left:
            n = min(left, chunk)
            c.sock.sendall(b"%x\r\n" % n + block[:n] + b"\r\n")
            left -= n
        trailer = b"\0" * (pad + 1024)
        c.sock.sendall(b"%x\r\n" % len(trailer) + trailer + b"\r\n0\r\n\r\n")
        r = c.read_response()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise HTTPError(f"PUT archive (chunked) -> {r.status}: {r.body[:300]!r}")
    return dt


def get_archive(target: str, container: str, expect: int) -> float:
    """GET /tmp/eci-bench-blob of `container` as a tar stream; returns seconds."""
    raw = request_bytes("GET", f"/containers/{container}/archive?path=/tmp/eci-bench-blob")
    t0 = time.perf_counter()
    with Conn(target, timeout=120) as c:
        r = c.request(raw, keep_body=False)
    dt = time.perf_counter() - t0
    if r.status != 200 or r.body_len < expect:
        raise HTTPError(f"GET archive -> {r.status}, {r.body_len} bytes: {r.head[:300]!r}")
    return dt


def exec_stream(target: str, container: str, mib: int) -> tuple[float, int]:
    """`dd if=/dev/zero bs=1M count=mib` in `container`, stdout attached over Upgrade: tcp.

    Returns (seconds from exec start to end of stream, bytes received).
    """
    body = json.dumps(
        {
            "AttachStdout": True,
            "AttachStderr": True,
            "Cmd": ["dd", "if=/dev/zero", "bs=1048576", f"count={mib}"],
        }
    ).encode()
    r = once(
        target,
        request_bytes(
            "POST",
            f"/containers/{container}/exec",
            body,
            headers={"Content-Type": "application/json"},
        ),
    )
    if r.status != 201:
        raise HTTPError(f"exec create -> {r.status}: {r.body[:300]!r}")
    exec_id = _json(r.body)["Id"]
    start = request_bytes(
        "POST",
        f"/exec/{exec_id}/start",
        b'{"Detach":false,"Tty":false}',
        headers={
            "Content-Type": "application/json",
            "Connection": "Upgrade",
            "Upgrade": "tcp",
        },
    )
    t0 = time.perf_counter()
    with Conn(target, timeout=120) as c:
        r = c.request(start, head_only=True)
        if r.status not in (101, 200):
            raise HTTPError(f"exec start -> {r.status}: {r.head[:300]!r}")
        got = c.drain_to_eof()
    dt = time.perf_counter() - t0
    if got < mib * MiB:
        raise HTTPError(f"exec stream ended after {got} bytes, expected {mib * MiB}")
    return dt, got


@dataclass
class StreamResult:
    mib_per_s: dict[str, list[float]]

    def median(self, target: str) -> float:
        return median(self.mib_per_s[target])


def streams(
    targets: Targets, order: Order, container: str, rounds: int, cp_mib: int, exec_mib: int
) -> dict[str, StreamResult]:
    size = cp_mib * MiB
    out = {
        "cp_in": StreamResult({t: [] for t in targets}),  # chunked, as the docker CLI sends it
        "cp_in_length": StreamResult({t: [] for t in targets}),  # with a Content-Length
        "cp_out": StreamResult({t: [] for t in targets}),
        "exec": StreamResult({t: [] for t in targets}),
    }
    # Warm-up (one small copy each way through both, and a short exec stream).
    for t in targets.values():
        put_archive(t, container, MiB)
        put_archive_chunked(t, container, MiB)
        get_archive(t, container, MiB)
        exec_stream(t, container, 4)
    for i in range(rounds):
        for t in _turns(order, i, targets):
            took = put_archive_chunked(targets[t], container, size)
            out["cp_in"].mib_per_s[t].append(cp_mib / took)
        for t in _turns(order, i + 1, targets):
            took = put_archive(targets[t], container, size)
            out["cp_in_length"].mib_per_s[t].append(cp_mib / took)
        for t in _turns(order, i + 1, targets):
            out["cp_out"].mib_per_s[t].append(cp_mib / get_archive(targets[t], container, size))
        for t in _turns(order, i, targets):
            dt, _ = exec_stream(targets[t], container, exec_mib)
            out["exec"].mib_per_s[t].append(exec_mib / dt)
    return out


def cli_cp(docker_cli: str, env: Mapping[str, str], sock: str, src: str, dst: str) -> float:
    """One real `docker cp src dst` through `sock`; returns seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [docker_cli, "-H", "unix://" + sock, "cp", src, dst],
        capture_output=True,
        text=True,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise HTTPError(f"docker cp {src} {dst} -> exit {proc.returncode}: {proc.stderr[:300]}")
    return took


def cli_cp_streams(
    docker_cli: str,
    env: Mapping[str, str],
    targets: Targets,
    order: Order,
    container: str,
    rounds: int,
    mib: int,
    workdir: Path,
) -> dict[str, StreamResult]:
    """The real docker CLI copying a `mib` MiB file (random bytes) each way: what a user
    sees, the CLI's own tar work included (so the hop weighs less than in `streams`)."""
    src = workdir / "eci-bench-cli-blob"
    with open(src, "wb") as f:
        for _ in range(mib):
            f.write(PAYLOAD)
    inside = f"{container}:/tmp/eci-bench-cli-blob"
    out = {key: StreamResult({t: [] for t in targets}) for key in ("cli_in", "cli_out")}
    try:
        for sock in targets.values():  # warm-up: the page cache and both code paths
            cli_cp(docker_cli, env, sock, str(src), inside)
        for i in range(rounds):
            for t in _turns(order, i, targets):
                took = cli_cp(docker_cli, env, targets[t], str(src), inside)
                out["cli_in"].mib_per_s[t].append(mib / took)
            for t in _turns(order, i + 1, targets):
                dst = workdir / f"eci-bench-cli-out-{t}"
                took = cli_cp(docker_cli, env, targets[t], inside, str(dst))
                out["cli_out"].mib_per_s[t].append(mib / took)
                if dst.stat().st_size != mib * MiB:
                    raise HTTPError(f"docker cp out wrote {dst.stat().st_size} bytes")
                dst.unlink()
    finally:
        src.unlink(missing_ok=True)
    return out


def interactive_exec(
    docker_cli: str, host_socket: str, env: Mapping[str, str], container: str
) -> tuple[bool, str]:
    """`docker exec -i <container> cat` with a few lines in: do they come back unchanged?"""
    text = "".join(f"eci-bench interactive line {i}\n" for i in range(50))
    try:
        proc = subprocess.run(
            [docker_cli, "-H", "unix://" + host_socket, "exec", "-i", container, "cat"],
            input=text,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {proc.stderr.strip()[:200]}"
    if proc.stdout != text:
        return False, f"echo mismatch: got {len(proc.stdout)} of {len(text)} chars"
    return True, "echoed"


# ---------------------------------------------------------------- concurrent clients


@dataclass
class LoadSummary:
    runs: dict[str, list[LoadResult]]
    agent_cpu_us_per_req: float | None = None

    def rate(self, target: str) -> float:
        return median([r.rate for r in self.runs[target]])

    def client_busy(self, target: str) -> float:
        """The client's CPU use during the load, as a fraction of one core."""
        return median([r.client_cpu / r.seconds for r in self.runs[target] if r.seconds])

    def errors(self, target: str) -> int:
        return sum(r.errors for r in self.runs[target])

    def refused(self, target: str) -> tuple[int, int]:
        """(clients refused at least once, refused connect attempts) over all rounds."""
        runs = self.runs[target]
        return sum(r.refused_clients for r in runs), sum(r.connect_errors for r in runs)

    def samples(self, target: str) -> list[str]:
        seen = [s for r in self.runs[target] for s in r.error_samples]
        return list(dict.fromkeys(seen))[:3]


def concurrent(
    targets: Targets,
    order: Order,
    path: str,
    clients: int,
    seconds: float,
    rounds: int,
    agent_cpu: CpuMeter | None = None,
) -> LoadSummary:
    raw = request_bytes("GET", path)
    runs: dict[str, list[LoadResult]] = {t: [] for t in targets}
    label = f"load {path}"
    proxy_requests = 0
    for i in range(rounds):
        for t in _turns(order, i, targets):
            if t == "proxy" and agent_cpu is not None:
                with agent_cpu.measure(label):
                    res = concurrent_load(targets[t], raw, clients, seconds)
                proxy_requests += res.requests
            else:
                res = concurrent_load(targets[t], raw, clients, seconds)
            runs[t].append(res)
            time.sleep(0.2)  # let closed connections go before the other target's turn
    per_req = None
    if agent_cpu is not None and proxy_requests:
        per_req = agent_cpu.by_label[label] / proxy_requests * 1e6
    return LoadSummary(runs, per_req)


# ---------------------------------------------------------------------------- helpers


def engine_version(engine_socket: str) -> str:
    r = once(engine_socket, request_bytes("GET", "/version"))
    doc = _json(r.body)
    return f"{doc.get('Version')} (API {doc.get('ApiVersion')})"


def start_worker(engine_socket: str, image: str, name: str) -> str:
    """A long-running container (straight on the engine) for cp and exec."""
    body = json.dumps(
        {"Image": image, "Cmd": ["sleep", "3600"], "HostConfig": {"NetworkMode": "none"}}
    ).encode()
    r = once(
        engine_socket,
        request_bytes(
            "POST",
            f"/containers/create?name={name}",
            body,
            headers={"Content-Type": "application/json"},
        ),
    )
    if r.status != 201:
        raise HTTPError(f"worker create -> {r.status}: {r.body[:300]!r}")
    cid = str(_json(r.body)["Id"])
    r = once(engine_socket, request_bytes("POST", f"/containers/{cid}/start"))
    if r.status != 204:
        raise HTTPError(f"worker start -> {r.status}: {r.body[:300]!r}")
    return cid


def remove_container(engine_socket: str, cid: str) -> None:
    try:
        once(engine_socket, request_bytes("DELETE", f"/containers/{cid}?force=1&v=1"))
    except (OSError, HTTPError):
        pass


def socket_ok(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------- other load on the box


class ForeignLoad:
    """CPU seconds used by processes that are not part of this benchmark.

    The machine is shared: another test run or build can take CPU during a phase and skew
    it. At each `mark(label)` this snapshots utime+stime of every user-space process and
    books the growth of those that are not ours (this process and its children, anything
    whose argv mentions the stack's or the agent's directory: dockerd, containerd, shims,
    registry, the agent; and the containers' cgroup). Processes that start and end between
    two marks are missed, so this is a lower bound.
    """

    def __init__(self, our_roots: list[str], cgroup: str) -> None:
        self.roots = [os.path.normpath(r) for r in our_roots]
        self.cgroup = cgroup
        self.self_pid = os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.by_label: dict[str, float] = {}
        self.wall_by_label: dict[str, float] = {}
        self._last = self._snapshot()
        self._last_t = time.monotonic()

    def _ours(self, pid: int, ppid: int, argv: bytes, cgroups: set[int]) -> bool:
        if pid == self.self_pid or ppid == self.self_pid or pid in cgroups:
            return True
        return any(r.encode() in argv for r in self.roots)

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for hier in ("cpuacct", "cpu", "unified", "."):
            top = f"/sys/fs/cgroup/{hier}/{self.cgroup}"
            for dirpath, _dirs, _files in os.walk(top):
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
                except (OSError, ValueError):
                    pass
        return pids

    def _snapshot(self) -> dict[int, tuple[float, bool]]:
        cgroups = self._cgroup_pids()
        out: dict[int, tuple[float, bool]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read()
            except OSError:
                continue
            if not argv:  # kernel thread
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            out[pid] = (cpu, self._ours(pid, int(fields[1]), argv, cgroups))
        return out

    def mark(self, label: str) -> float:
        """Foreign CPU seconds since the previous mark, booked under `label`."""
        now = self._snapshot()
        t = time.monotonic()
        foreign = 0.0
        for pid, (cpu, ours) in now.items():
            if ours:
                continue
            before = self._last.get(pid)
            foreign += cpu - before[0] if before is not None else cpu
        self.by_label[label] = self.by_label.get(label, 0.0) + max(0.0, foreign)
        self.wall_by_label[label] = self.wall_by_label.get(label, 0.0) + t - self._last_t
        self._last, self._last_t = now, t
        return foreign

    def share(self, label: str) -> float:
        """Foreign CPU as a fraction of the machine's CPU capacity during `label`."""
        wall = self.wall_by_label.get(label, 0.0)
        return self.by_label.get(label, 0.0) / (wall * (os.cpu_count() or 1)) if wall else 0.0


def speed_probe() -> float:
    """µs for `sum(range(1000))`, best of 5 x 2000: how fast this (virtual) CPU is right now.

    Shared and virtual machines change speed over minutes; the probe before and after the run
    says whether that happened (ratios taken in turns mostly cancel it, absolute times do not).
    """
    import timeit

    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def cpu_times() -> tuple[int, int]:
    """(all ticks, steal ticks) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


# ------------------------------------------------------------------ digest refresh vs. traffic


@dataclass
class RefreshStall:
    """`/containers/json` through the proxy, quiet and while the digest service is busy."""

    quiet_us: list[float]
    busy_us: list[float]
    changes: int  # image lists put in force while busy (each one a refresh of every tag)
    tags: int  # allowed tags per image list


def refresh_stall(
    proxy: str,
    apply: Callable[[int], None],
    tags: int,
    seconds: float,
) -> RefreshStall:
    """Latency of kept-alive `/containers/json` with the settings fixed, then while `apply(i)`
    puts a new image list in force every 0.3 s (each names `tags` tags never seen before, so
    the refresh asks a registry for every one of them)."""
    import threading

    raw = request_bytes("GET", "/containers/json")
    latency_keepalive(proxy, raw, 50, 1.0)
    quiet = [ns / 1000 for ns in latency_keepalive(proxy, raw, 10**6, seconds)]
    stop = threading.Event()
    changes = 0

    def churn() -> None:
        nonlocal changes
        while not stop.is_set():
            changes += 1
            apply(changes)
            stop.wait(0.3)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the first refresh is under way
        busy = [ns / 1000 for ns in latency_keepalive(proxy, raw, 10**6, seconds)]
    finally:
        stop.set()
        thread.join(30)
    return RefreshStall(quiet, busy, changes, tags)
