"""python -m tests.env up|down|status [--dir DIR] | install | ping SOCKET

up      start a detached stack; prints `export` lines (eval "$(python -m tests.env up)")
down    stop the stack recorded in DIR/state.json and remove DIR
status  show whether the stack in DIR is alive (exit 1 if not healthy)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from tests.env.stack import Stack, StackError, ensure_packages


def engine_answers(path: str, timeout: float = 3.0) -> bool:
    """Whether something answers `GET /_ping` with 200 on the unix socket at `path`."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _dir_arg(args: argparse.Namespace) -> str:
    d = args.dir or os.environ.get("ECI_ENV_DIR")
    if not d:
        sys.exit("--dir DIR (or $ECI_ENV_DIR) is required")
    return str(d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.env", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a detached stack and print export lines")
    up.add_argument("--dir", help="empty or missing dir to use (default: /tmp/eci-env-XXXX)")
    up.add_argument("--no-images", action="store_true", help="skip building fixture images")
    sub.add_parser("install", help="install the Debian packages the stack needs, if missing")
    ping = sub.add_parser("ping", help="exit 0 when an engine answers GET /_ping on SOCKET")
    ping.add_argument("socket")
    for name in ("down", "status"):
        sp = sub.add_parser(name)
        sp.add_argument("--dir", help="the stack dir (default: $ECI_ENV_DIR)")
    args = p.parse_args(argv)

    try:
        if args.cmd == "install":
            installed = ensure_packages()
            if installed:
                print("installed: " + " ".join(installed), file=sys.stderr)
            return 0
        if args.cmd == "ping":
            return 0 if engine_answers(args.socket) else 1
        if args.cmd == "up":
            stack = Stack(args.dir, detached=True, build_images=not args.no_images).start()
            for k, v in stack.env_vars().items():
                print(f"export {k}={shlex.quote(v)}")
            print(f"# started in {stack.timings['start']:.1f}s", file=sys.stderr)
            return 0
        stack = Stack.from_state(_dir_arg(args))
        if args.cmd == "down":
            stack.stop()
            left = stack.leftovers()
            if left:
                print("leftovers:\n  " + "\n  ".join(left), file=sys.stderr)
                return 1
            return 0
        status = stack.status()
        print(json.dumps({**status, "env": stack.env_vars()}, indent=2))
        healthy = status["dockerd"] and status["engine_ping"] and all(status["registries"].values())
        return 0 if healthy else 1
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
