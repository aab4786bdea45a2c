"""Events to syslog as RFC 5424 messages with structured data, stdlib only.

One path, no extra dependency: `logging.handlers.SysLogHandler` sends the datagram (to a local
socket such as `/dev/log`, which journald and rsyslog both read, or over UDP to a collector),
and `rfc5424()` builds the message after its `<PRI>`:

    <PRI>1 2025-01-01T12:00:00.000000Z host eci-agent 4242 denied [eci@32473 id="7" ...] msg

The MSGID is the event kind; every event field is a parameter of the `eci@32473` SD element
(32473 is the private enterprise number RFC 5612 sets aside for documentation: eci-agent has
no number of its own), `extra` as one JSON-encoded parameter; the MSG is the event's message,
marked UTF-8 with a BOM as RFC 5424 asks. The severity follows the kind (a denial is a
warning), the facility is `authpriv` unless told otherwise.

journald's native socket (structured `KEY=value` fields) was not chosen: it exists only under
systemd, while a syslog socket or a UDP collector exists everywhere, and journald already
stores a syslog message's structured data alongside it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
from collections.abc import Iterable

from agent.events.model import Event, Kind, format_time, printable

SD_ID = "eci@32473"
APP_NAME = "eci-agent"
DEFAULT_ADDRESS = "/dev/log"

_LEVELS = {
    Kind.DENIED.value: logging.WARNING,
    Kind.SETTINGS_REJECTED.value: logging.ERROR,
    Kind.ENGINE_UNREACHABLE.value: logging.ERROR,
    Kind.EVENTS_DROPPED.value: logging.ERROR,
    Kind.NEEDS_REPULL.value: logging.WARNING,
}

Address = str | tuple[str, int]


def level_of(event: Event) -> int:
    return _LEVELS.get(event.kind, logging.INFO)


def _name(text: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or NILVALUE."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _param_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(event: Event) -> str:
    parts = [SD_ID]
    for key, value in event.to_dict().items():
        if key == "message":
            continue
        if isinstance(value, list | dict):
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        else:
            text = str(value)
        parts.append(f'{_name(key, 32)}="{_param_value(text)}"')
    return "[" + " ".join(parts) + "]"


def rfc5424(event: Event, *, hostname: str | None = None, procid: int | None = None) -> str:
    """The RFC 5424 message for `event`, from VERSION on (the handler adds `<PRI>`)."""
    host = _name(hostname if hostname is not None else socket.gethostname(), 255)
    pid = procid if procid is not None else os.getpid()
    header = f"1 {format_time(event.time)} {host} {APP_NAME} {pid} {_name(event.kind, 32)}"
    message = printable(event.message)
    return f"{header} {structured_data(event)}" + (f" \ufeff{message}" if message else "")


def parse_address(text: str) -> Address:
    """`/path/to/socket`, `udp://host:port` or `host:port` (UDP)."""
    if text.startswith("/"):
        return text
    if text.startswith("udp://"):
        text = text[len("udp://") :]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r}: a syslog address is a socket path or udp://host:port")
    return host.strip("[]") or "localhost", int(port)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return rfc5424(record.eci_event)  # type: ignore[attr-defined]


class _Handler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        raise  # the caller decides (the CLI reports it); logging would only print it


class SyslogSink:
    """Sends events to syslog; `send` is blocking (a datagram), keep it off the event loop."""

    def __init__(
        self,
        address: Address = DEFAULT_ADDRESS,
        facility: int = logging.handlers.SysLogHandler.LOG_AUTHPRIV,
    ) -> None:
        socktype = socket.SOCK_DGRAM
        self.handler = _Handler(address, facility, socktype)
        self.handler.append_nul = False
        self.handler.setFormatter(_Formatter())

    def send(self, event: Event) -> None:
        record = logging.LogRecord(
            "eci_agent.events", level_of(event), "", 0, event.message, None, None
        )
        record.eci_event = event
        self.handler.emit(record)

    def send_all(self, events: Iterable[Event]) -> int:
        count = 0
        for event in events:
            self.send(event)
            count += 1
        return count

    def close(self) -> None:
        self.handler.close()
