"""The gate's pin helpers: which host paths are held, where a pin replaces them in a body."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.pins.board import PinBoard, PinRecord, release_all
from agent.policy import gojson
from agent.policy.gojson import GoObject
from agent.policy.mounts import HostPath, create_mounts
from agent.proxy.gate import _hold_all, _pin_map, _pinnable, _rewrite_sources

NOBODY = 65534
#: A pins board `_hold_all` knows (none of its folders exists: nothing here is pinned).
PINS = PinBoard(Path("/run/eci-agent-test/pins"), Path("/run/eci-agent-test/records"))


@pytest.mark.parametrize(
    ("intent", "expected"),
    [
        (HostPath("/h/x", "HostConfig.Binds[0]"), True),
        (HostPath("/h/x", "HostConfig.Mounts[2].Source"), True),
        (HostPath("/h/x", "DriverOpts", rewritable=False), True),
        (HostPath("/h/x", "(top level).Binds[0]", rewritable=False), False),
        (HostPath("/h/x", "Volumes['/h/x:/d']", rewritable=False), False),
        (HostPath("/h/x", "HostConfig.Mounts[0].VolumeOptions.DriverConfig", False), False),
        (HostPath("/h/x", "HostConfig.Binds[0]", rewritable=False), False),
    ],
    ids=["binds", "mounts", "volume-device", "top-level", "legacy-volumes", "inline-device",
         "not-rewritable"],
)  # fmt: skip
def test_where_a_pin_can_replace_a_host_path(intent, expected):
    assert _pinnable(intent) is expected


def _doc(text: str) -> GoObject:
    doc = gojson.loads(text)
    assert isinstance(doc, GoObject)
    return doc


def test_rewrite_sources_replaces_binds_and_bind_mounts_only():
    hc = _doc(
        '{"Binds": ["/h/a:/d:ro", "/h/b:/e", "named:/f", null],'
        ' "Mounts": [{"Type": "bind", "Source": "/h/a", "Target": "/g"},'
        ' {"Type": "volume", "Source": "/h/a", "Target": "/v"}]}'
    )
    out = gojson.to_plain(_rewrite_sources(hc, {"/h/a": "/pins/1"}))
    assert out["Binds"] == ["/pins/1:/d:ro", "/h/b:/e", "named:/f", None]
    assert out["Mounts"][0]["Source"] == "/pins/1"
    assert out["Mounts"][1]["Source"] == "/h/a", "a volume's name is no bind source"


def test_rewrite_sources_writes_the_merged_view_once():
    """`binds` and `Binds` are one field to the engine (the last wins): written once."""
    hc = _doc('{"binds": ["/h/x:/y"], "Binds": ["/h/a:/d"]}')
    out = gojson.dumps(_rewrite_sources(hc, {"/h/a": "/pins/1"}))
    assert gojson.to_plain(gojson.loads(out)) == {"Binds": ["/pins/1:/d"]}


def test_pin_map_maps_each_written_form_to_the_pin_of_its_clean_path():
    intents = (HostPath("/h/a/", "HostConfig.Binds[0]"), HostPath("/h//a", "HostConfig.Binds[1]"),
               HostPath("/h/b", "HostConfig.Binds[2]"))  # fmt: skip
    assert _pin_map(intents, {"/h/a": "/pins/1"}) == {"/h/a/": "/pins/1", "/h//a": "/pins/1"}


@pytest.fixture
def user(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "home"
    (home / "p").mkdir(parents=True)
    os.chown(home, NOBODY, NOBODY)
    return home


def _create(binds: str = "[]", mounts: str = "[]", top: str = "") -> tuple:
    body = _doc(f'{{"Image": "x", {top} "HostConfig": {{"Binds": {binds}, "Mounts": {mounts}}}}}')
    return create_mounts(body)


def test_hold_all_holds_what_a_user_can_change_once(user, tmp_path):
    intents = _create(f'["{user}/p:/a", "{user}/p/:/b", "{tmp_path}:/c"]')
    held, refused = _hold_all(intents, PINS)
    try:
        assert refused is None
        assert list(held) == [f"{user}/p"], "the root-held folder is given as it is"
    finally:
        release_all(held.values())


def test_hold_all_refuses_what_it_cannot_pin(user):
    intents = create_mounts(_doc(f'{{"Image": "x", "Binds": ["{user}/p:/d"]}}'))
    held, refused = _hold_all(intents, PINS)
    assert held == {} and refused is not None
    assert (refused.status, refused.rule) == (403, "unpinnable-bind")


def test_hold_all_answers_a_missing_mount_source_as_the_engine_would(user):
    mounts = f'[{{"Type": "bind", "Source": "{user}/no", "Target": "/d"}}]'
    held, refused = _hold_all(_create(mounts=mounts), PINS)
    assert held == {} and refused is not None and refused.status == 400
    words = f'invalid mount config for type "bind": bind source path does not exist: {user}/no'
    assert refused.message.endswith(words), refused.message
    held, refused = _hold_all(_create(binds=f'["{user}/no:/d"]'), PINS)
    try:
        assert refused is None and list(held) == [f"{user}/no"], "Binds: made, as the engine does"
    finally:
        release_all(held.values())


@pytest.mark.parametrize(
    "named",
    ["{pins}", "{pins}/0123abcd", "{pins}/0123abcd/inside", "{user}/to-pin", "{user}/to-pins/x"],
)
def test_hold_all_refuses_a_path_that_is_or_leads_into_a_pin(user, tmp_path, named):
    pins = tmp_path / "pins"
    (pins / "0123abcd" / "inside").mkdir(parents=True)
    (user / "to-pin").symlink_to(pins / "0123abcd")
    (user / "to-pins").symlink_to(pins)
    source = named.format(pins=pins, user=user)
    board = PinBoard(pins, tmp_path / "records")
    held, refused = _hold_all(_create(binds=f'["{source}:/d"]'), board)
    assert held == {} and refused is not None
    assert (refused.status, refused.rule) == (403, "names-a-pin"), refused.message


def test_hold_all_forwards_one_of_its_own_pins_named_as_it_is(user, tmp_path):
    """`docker service update` sends back the stored spec, which names the pin: it is judged
    as the file it holds (elsewhere), not held again and not refused."""
    board = PinBoard(tmp_path / "pins", tmp_path / "records")
    (tmp_path / "pins" / "0123abcd").mkdir(parents=True)
    (tmp_path / "records").mkdir()
    record = PinRecord("0123abcd", str(tmp_path / "pins" / "0123abcd"), str(user / "p"),
                       str(user / "p"), (1, 2), True, 0.0)  # fmt: skip
    (tmp_path / "records" / "0123abcd.json").write_text(record.to_json())
    held, refused = _hold_all(_create(binds=f'["{record.pin}:/d", "{record.pin}/:/e"]'), board)
    assert (held, refused) == ({}, None)


def test_a_path_held_for_a_bind_is_refused_where_no_pin_can_go(user):
    """The same folder as a bind and as an inline volume's device: the bind alone would get
    the pin, and the volume would keep the path (review 8b)."""
    device = {"type": "none", "o": "bind", "device": f"{user}/p"}
    mounts = [{"Type": "volume", "Source": "v", "Target": "/v",
               "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": device}}}]  # fmt: skip
    held, refused = _hold_all(_create(f'["{user}/p:/b"]', json.dumps(mounts)), PINS)
    assert held == {} and refused is not None and refused.rule == "unpinnable-bind"


def test_hold_all_bounds_the_pins_of_one_request(user):
    from agent.proxy.gate import MAX_PINS_PER_REQUEST

    for i in range(MAX_PINS_PER_REQUEST + 1):
        (user / "p" / str(i)).mkdir()
    binds = [f"{user}/p/{i}:/d{i}" for i in range(MAX_PINS_PER_REQUEST + 1)]
    held, refused = _hold_all(_create(binds=json.dumps(binds)), PINS)
    assert held == {} and refused is not None and refused.rule == "too-many-pins"
    held, refused = _hold_all(_create(binds=json.dumps(binds[:-1])), PINS)
    try:
        assert refused is None and len(held) == MAX_PINS_PER_REQUEST
    finally:
        release_all(held.values())
