"""`eci-agent`: the daemon (`run`) and the admin's commands (`check`, ...)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import grp
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import native, paths
from agent.cli import control_cmds, doctor_cmds, features_cmds, pins_cmds, registry_cmds
from agent.service import systemd
from agent.service.sockets import raise_open_files_limit
from agent.settings.loader import Missing, Refused, load_settings
from agent.settings.model import AdminSettings

log = logging.getLogger("eci_agent")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def engine_path(value: str) -> str:
    """`unix:///run/docker.sock` or a plain path -> the socket path."""
    if value.startswith("unix://"):
        value = value[len("unix://") :]
    elif "://" in value:
        raise argparse.ArgumentTypeError(
            f"{value!r}: only unix sockets are supported (unix:///path or /path)"
        )
    if not value:
        raise argparse.ArgumentTypeError("empty engine socket path")
    return os.path.abspath(value)


# -- check ---------------------------------------------------------------------------------


def settings_summary(settings: AdminSettings) -> dict[str, Any]:
    eci = settings.eci
    socket = eci.socket_mount
    return {
        "source": settings.source,
        "sha256": settings.sha256,
        "configurationFileVersion": settings.configuration_file_version,
        "enhancedContainerIsolation": {
            "value": eci.value,
            "locked": eci.locked,
            "dockerSocketMount": {
                "imageList": {
                    "images": [p.normalized() for p in socket.image_list.images],
                    "allowDerivedImages": socket.image_list.allow_derived_images,
                },
                "commandList": {
                    "type": socket.command_list.type.value,
                    "commands": [c.text for c in socket.command_list.commands],
                },
            },
        },
        "eciAgent": {
            "commandLists": [
                {
                    "images": [p.normalized() for p in entry.images],
                    "type": entry.command_list.type.value,
                    "commands": [c.text for c in entry.command_list.commands],
                }
                for entry in settings.extensions.image_command_lists
            ],
            "isolationExceptions": [
                {"images": [p.normalized() for p in entry.images], "allow": sorted(entry.allow)}
                for entry in settings.extensions.isolation_exceptions
            ],
        },
        "ignoredKeys": list(settings.ignored_keys),
        "notes": [
            {"path": n.json_path, "severity": n.severity.value, "message": n.message}
            for n in settings.notes
        ],
    }


def cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    result = load_settings(path, strict_modes=args.strict_modes)
    if isinstance(result, Missing):
        print(f"eci-agent check: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(result, Refused):
        if args.json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "source": str(path),
                        "reason": result.reason,
                        "problems": [
                            {
                                "path": p.json_path,
                                "message": p.message,
                                "line": p.line,
                                "column": p.column,
                            }
                            for p in result.problems
                        ],
                    },
                    indent=2,
                )
            )
        else:
            print(result.reason, file=sys.stderr)
        return EXIT_INVALID
    settings = result.settings
    summary = settings_summary(settings)
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=2))
        return EXIT_OK
    eci = settings.eci
    images = summary["enhancedContainerIsolation"]["dockerSocketMount"]["imageList"]
    commands = summary["enhancedContainerIsolation"]["dockerSocketMount"]["commandList"]
    print(f"{path}: valid (sha256 {settings.sha256})")
    print(f"  enhanced container isolation: {'on' if eci.value else 'off'}", end="")
    print(", locked" if eci.locked else ", not locked (users may switch it)")
    print("  images allowed to mount the engine socket:")
    for image in images["images"] or ["(none)"]:
        print(f"    {image}")
    print(f"  derived images allowed: {'yes' if images['allowDerivedImages'] else 'no'}")
    listed = ", ".join(commands["commands"]) or "(none)"
    print(f"  command list ({commands['type']}): {listed}")
    print(
        "  (the command list applies to requests from containers, on the socket they are given;"
        " `GET /_ping` is always allowed)"
    )
    for entry in summary["eciAgent"]["commandLists"]:
        listed = ", ".join(entry["commands"]) or "(none)"
        print(
            f"  command list for {', '.join(entry['images'])} ({entry['type']}, eciAgent "
            f"extension): {listed}"
        )
    if settings.ignored_keys:
        print(
            "  ignored (Docker Desktop settings eci-agent does not enforce): "
            + ", ".join(settings.ignored_keys)
        )
    for note in settings.notes:
        print(f"  {note.severity.value}: {note}")
    return EXIT_OK


# -- run -----------------------------------------------------------------------------------


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SystemExit(f"eci-agent run: no such group {name!r} (--listen-group)") from None


async def _serve(args: argparse.Namespace) -> int:
    from agent.proxy.gate import Gate, GateConfig
    from agent.proxy.server import EnginePool, ProxyListener
    from agent.settings.state import SettingsState
    from agent.settings.watcher import SettingsWatcher

    settings_path = Path(args.settings) if args.settings else paths.default_settings_path()
    runtime_dir = Path(args.runtime_dir) if args.runtime_dir else paths.default_runtime_dir()
    state_dir = Path(args.state_dir) if args.state_dir else paths.default_state_dir()
    runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        activated = systemd.activated_sockets()
        activated_paths = {name: systemd.socket_path(s) for name, s in activated.items()}
    except systemd.ActivationError as err:
        raise SystemExit(f"eci-agent run: socket activation: {err}") from None
    container_dir = runtime_dir / "container"
    container_dir.mkdir(exist_ok=True, mode=0o755)
    container_socket = activated_paths.get("container") or str(container_dir / "docker.sock")
    if "host" not in activated and not args.listen:
        raise SystemExit("eci-agent run: give --listen PATH (or start it socket-activated)")
    listen = activated_paths.get("host") or os.path.abspath(args.listen)
    if "control" in activated_paths:
        args.control = activated_paths["control"]
    if listen == args.engine:
        raise SystemExit("eci-agent run: --listen and --engine must be different sockets")

    state = SettingsState()
    services = control_cmds.open_services(
        args,
        state,
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        settings_path=settings_path,
        listeners={"host": listen, "container": container_socket},
    )
    digests = registry_cmds.build_digest_service(
        args, state_dir, lambda: state.current, args.engine
    )
    services.attach_digests(digests)
    loop = asyncio.get_running_loop()

    def on_result(result: Any) -> None:
        change = state.apply(result, time.time())
        services.settings_changed(change)
        level = logging.INFO if change.error is None else logging.ERROR
        log.log(level, "settings: %s", change.message)

    def on_result_threadsafe(result: Any) -> None:
        # The watcher calls from its thread; apply there (SettingsState is thread-safe).
        on_result(result)

    watcher = SettingsWatcher(settings_path, on_result_threadsafe, strict_modes=args.strict_modes)
    watcher.start()

    def settings_where() -> str:
        return f"the admin settings file {settings_path}"

    # Bind sources a user can change are held still with bind mounts (Linux, as root).
    pins = (
        pins_cmds.board_for(runtime_dir, state_dir, args.pin_sweep)
        if sys.platform == "linux" and os.geteuid() == 0
        else None
    )

    gate = Gate(
        GateConfig(
            engine_socket=args.engine,
            listen_sockets=(listen, services.config.control_path),
            container_socket=container_socket,
            settings_where=settings_where,
            current=lambda: state.current,
            registry=digests,
            events=services.store,
            pins=pins,
            state_dir=str(state_dir),
        )
    )
    services.attach_gate(gate)
    pool = EnginePool(args.engine)
    host = ProxyListener(
        listen,
        pool,
        gate,
        listener="host",
        mode=args.listen_mode,
        group=_group_id(args.listen_group),
        sock=activated.get("host"),
    )
    container = ProxyListener(
        container_socket,
        pool,
        gate,
        listener="container",
        mode=0o666,
        sock=activated.get("container"),
    )

    def close_weaker_sessions() -> None:
        closed = host.close_weaker_sessions() + container.close_weaker_sessions()
        if closed:
            log.warning(
                "closed %d connection(s) let through under a weaker policy and not done (a "
                "BuildKit stream, a request body passing unread); the command on them fails "
                "and can be run again",
                closed,
            )

    # Updates come from the watcher's thread (or the control API's switch): act in the loop.
    def on_policy_change(change: Any) -> None:
        # At once, in this thread: no remembered head outlives the policy that allowed it.
        host.forget_known_heads()
        loop.call_soon_threadsafe(close_weaker_sessions)

    unsubscribe = state.subscribe(on_policy_change)
    notifier = systemd.Notifier()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await digests.start()
    keeper: asyncio.Task[None] | None = None
    if pins is not None:
        from agent.pins.keeper import keep_pins

        keeper = asyncio.create_task(keep_pins(pins, gate.engine, args.pin_sweep))
    else:
        log.warning(
            "bind sources a user can change are not pinned (needs root on Linux): such a "
            "source can be swapped after it was judged"
        )
    await host.start()
    await container.start()
    await services.start(sock=activated.get("control"))
    # What start-up built lives as long as the agent: keep it out of the collector's scans,
    # which would otherwise walk it again and again as requests come and go.
    gc.collect()
    gc.freeze()
    log.info(
        "eci-agent enforcing in front of %s: listening on %s (containers get %s); settings %s%s",
        args.engine,
        listen,
        container_socket,
        settings_path,
        f"; socket-activated: {', '.join(sorted(activated))}" if activated else "",
    )
    notifier.notify(f"READY=1\nSTATUS=serving {listen}\nMAINPID={os.getpid()}")
    notifier.start_watchdog()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if keeper is not None:
            keeper.cancel()
        unsubscribe()
        await notifier.stop()
        await host.stop()
        await container.stop()
        gate.flush_suppressed()
        await pool.close()
        await digests.stop()
        watcher.stop()
        await services.stop()
    return EXIT_OK


#: glibc's mallopt parameter for the size from which malloc maps memory of its own.
M_MMAP_THRESHOLD = -3


def _fixed_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Keep glibc's mmap threshold at `size` (its starting value).

    By default glibc raises the threshold to the size of each mapped block freed, up to
    32 MiB: after the first large stream buffer, such buffers come from the heap instead and
    stay there, fragmented, when the stream ends. Fixed, they are mapped and given back
    (measured with MALLOC_MMAP_THRESHOLD_=131072 in turns: agent peak RSS 39.2-39.5 vs
    39.6-40.0 MiB, docs/BENCHMARKS.md item 18). An admin's own setting wins. Not glibc:
    nothing to do."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    _fixed_mmap_threshold()
    level = logging.DEBUG if args.verbose else logging.INFO
    if systemd.under_journald():
        handler = logging.StreamHandler()
        handler.setFormatter(systemd.JournalFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not os.path.exists(args.engine):
        log.warning("engine socket %s does not exist (yet); requests will fail", args.engine)
    code = native.status()
    log.log(logging.WARNING if code.stale else logging.INFO, "proxy code: %s", code.describe())
    before, after = raise_open_files_limit()
    if after != before:
        log.info("open files limit raised from %d to %d", before, after)
    elif before < 4096:
        log.warning("open files limit is %d: a few hundred clients will exhaust it", before)
    _install_loop_policy()
    return asyncio.run(_serve(args))


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eci-agent",
        description="Enhanced Container Isolation for any Docker engine, driven by Docker "
        "Desktop's admin-settings.json.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate an admin-settings.json and print its policy")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument(
        "--strict-modes",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also refuse a file a non-root user could change (as the root agent does)",
    )
    check.set_defaults(func=cmd_check)

    run = sub.add_parser("run", help="run the enforcing proxy in front of a Docker engine")
    run.add_argument(
        "--settings",
        help="admin-settings.json (default: the first that exists of "
        + ", ".join(str(p) for p in paths.settings_search_path())
        + ")",
    )
    run.add_argument(
        "--engine",
        required=True,
        type=engine_path,
        help="the real engine socket (path or unix:// URL)",
    )
    run.add_argument(
        "--listen",
        help="the socket clients use (DOCKER_HOST); with socket activation, the fd named host",
    )
    run.add_argument(
        "--listen-mode",
        type=lambda v: int(v, 8),
        default=0o660,
        help="permissions of the listen socket (octal, default 660)",
    )
    run.add_argument("--listen-group", help="group owning the listen socket (e.g. docker)")
    run.add_argument("--state-dir")
    run.add_argument("--runtime-dir")
    control_cmds.add_run_arguments(run)
    run.add_argument(
        "--strict-modes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse a settings file non-root users could change (default: when root)",
    )
    run.add_argument("-v", "--verbose", action="store_true")
    registry_cmds.add_run_arguments(run)
    pins_cmds.add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    registry_cmds.add_parsers(sub)
    control_cmds.add_parsers(sub)
    features_cmds.add_parsers(sub)
    doctor_cmds.add_parsers(sub)
    pins_cmds.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        return int(args.func(args))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
