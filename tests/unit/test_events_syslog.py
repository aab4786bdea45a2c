"""Events as RFC 5424 syslog messages, sent to a real datagram socket."""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path

import pytest

from agent.events.model import Event
from agent.events.syslog import SD_ID, SyslogSink, parse_address, rfc5424

DENIED = Event(
    kind="denied",
    time=1_700_000_000.5,
    message='docker socket mount denied for "x"]\nnext',
    rule="socket-mount-image",
    status=403,
    uid=1000,
    commands=("push",),
    extra={"reason": 'a"b\\c'},
    id=9,
)

# RFC 5424: VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
HEADER = re.compile(r"^1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*\])(?: \ufeff(.*))?$", re.S)


def test_the_message_is_rfc5424_with_structured_data() -> None:
    text = rfc5424(DENIED, hostname="host one", procid=42)
    match = HEADER.match(text)
    assert match, text
    stamp, host, app, procid, msgid, sd, msg = match.groups()
    assert (stamp, host, app, procid, msgid) == (
        "2023-11-14T22:13:20.500000Z",
        "hostone",
        "eci-agent",
        "42",
        "denied",
    )
    assert sd.startswith(f'[{SD_ID} id="9" ')
    assert 'rule="socket-mount-image"' in sd and 'status="403"' in sd and 'uid="1000"' in sd
    assert r'commands="[\"push\"\]"' in sd  # ", \ and ] escaped
    assert r'extra="{\"reason\":\"a\\\"b\\\\c\"}"' in sd
    assert msg == 'docker socket mount denied for "x"]\\x0anext'


def test_parse_address() -> None:
    assert parse_address("/dev/log") == "/dev/log"
    assert parse_address("udp://collector:514") == ("collector", 514)
    assert parse_address("10.0.0.1:1514") == ("10.0.0.1", 1514)
    with pytest.raises(ValueError):
        parse_address("collector")


def test_the_sink_sends_one_datagram_per_event_with_the_priority() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = str(Path(tmp) / "log.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(5)
        sink = SyslogSink(path)
        try:
            assert sink.send_all([DENIED, Event(kind="policy-reloaded", time=1.0)]) == 2
            first = server.recv(65536).decode()
            second = server.recv(65536).decode()
        finally:
            sink.close()
            server.close()
    # authpriv (10) * 8 + warning (4) = 84; + info (6) = 86.
    assert first.startswith("<84>1 2023-11-14T22:13:20.500000Z ")
    assert second.startswith("<86>1 1970-01-01T00:00:01.000000Z ")
    assert HEADER.match(first[4:])


def test_an_unreachable_syslog_is_an_error_not_silence(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        SyslogSink(str(tmp_path / "nothing.sock")).send(DENIED)
