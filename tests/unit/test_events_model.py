"""The pure event record: its JSON form, both ways."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from agent.events.model import Event, EventFormatError, Kind, denial, format_time, parse_time

FULL = Event(
    kind="denied",
    time=1_700_000_000.123456,
    message='enhanced container isolation: docker socket mount denied "x"\nsecond line',
    decision="denied",
    rule="socket-mount-image",
    status=403,
    image="docker.io/library/docker",
    digest="sha256:" + "a" * 64,
    commands=("push", "build"),
    method="POST",
    path="/v1.43/containers/create?name=x",
    container_id="c" * 64,
    container_name="x",
    uid=1000,
    pid=4242,
    gid=1000,
    listener="host",
    settings_sha256="f" * 64,
    extra={"reason": "not-listed", "nested": {"a": [1, 2]}},
    id=7,
)


def test_a_full_event_survives_json_both_ways() -> None:
    line = FULL.to_json()
    assert "\n" not in line
    assert Event.from_json(line) == FULL
    doc = json.loads(line)
    assert doc["time"] == "2023-11-14T22:13:20.123456Z"
    assert doc["containerId"] == "c" * 64 and doc["settingsSha256"] == "f" * 64
    assert list(doc)[:3] == ["id", "time", "kind"]


def test_empty_fields_are_left_out_and_read_back_as_empty() -> None:
    event = Event(kind="policy-reloaded", time=5.0)
    assert event.to_dict() == {
        "time": "1970-01-01T00:00:05.000000Z",
        "kind": "policy-reloaded",
        "message": "",  # always there, so consumers can rely on it
    }
    assert Event.from_dict(event.to_dict()) == event
    assert event.id is None and event.with_id(3).id == 3


def test_unknown_keys_land_in_extra() -> None:
    event = Event.from_dict({"kind": "x", "time": 1, "future": {"k": 1}, "extra": {"a": 2}})
    assert event.extra == {"a": 2, "future": {"k": 1}}


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "x"},
        {"time": 1},
        {"kind": 3, "time": 1},
        {"kind": "x", "time": "yesterday"},
        {"kind": "x", "time": True},
        {"kind": "x", "time": 1, "uid": "0"},
        {"kind": "x", "time": 1, "status": True},
        {"kind": "x", "time": 1, "commands": "push"},
        {"kind": "x", "time": 1, "extra": []},
    ],
)
def test_malformed_events_are_refused(doc: dict[str, object]) -> None:
    with pytest.raises(EventFormatError):
        Event.from_dict(doc)


def test_times() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
    assert parse_time("1970-01-01T00:00:01Z") == 1.0
    assert parse_time("1970-01-01T02:00:01+02:00") == 1.0
    assert parse_time(2) == 2.0
    with pytest.raises(EventFormatError):
        parse_time(float("nan"))


@dataclass
class FakePeer:
    pid: int | None
    uid: int | None
    gid: int | None
    listener: str


def test_denial_takes_the_peer_and_the_decision() -> None:
    event = denial(
        time=1.0,
        method="POST",
        path="/containers/create",
        rule="socket-mount-image",
        status=403,
        message="no",
        peer=FakePeer(10, 1000, 100, "container"),
        settings_sha256="ab",
        extra={"reason": "r"},
    )
    assert event.kind == Kind.DENIED.value == "denied"
    assert (event.uid, event.pid, event.gid, event.listener) == (1000, 10, 100, "container")
    assert event.decision == "denied" and event.rule == "socket-mount-image"
    assert event.extra == {"reason": "r"}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain /home/u/é ok", "plain /home/u/é ok"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("x\x1b[2K\x7f\x85\x9f", "x\\x1b[2K\\x7f\\x85\\x9f"),
        ("evil\u202etxt.exe\u2066\u200f", "evil\\u202etxt.exe\\u2066\\u200f"),
        ("\\x0a stays", "\\x0a stays"),
    ],
    ids=["plain", "newlines-tab", "escape-del-c1", "bidi", "backslash"],
)
def test_printable_shows_controls_as_escapes(text: str, shown: str) -> None:
    from agent.events.model import printable

    assert printable(text) == shown
    assert "\n" not in printable(text) and "\x1b" not in printable(text)


def test_an_event_line_for_people_is_one_line_whatever_the_client_wrote() -> None:
    from agent.cli.control_cmds import format_event

    event = Event(
        kind="denied",
        time=1_700_000_000.0,
        message="bind of /tmp/x\r\x1b[2K#1 forged\nline refused",
        method="POST",
        path="/containers/create?name=a\nb",
        image="img\u202e",
        id=3,
    )
    line = format_event(event)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.startswith("#3 ") and "\\x0d\\x1b[2K#1 forged\\x0aline" in line
