"""The service spec forwarded with its networks pinned to the IDs they were judged as."""

from __future__ import annotations

import json

from agent.policy import gojson
from agent.policy.gojson import GoObject
from agent.proxy.gate import _pin_service_networks


def _targets(text: str) -> tuple[list[str], list[str]]:
    doc = gojson.loads(text)
    assert isinstance(doc, GoObject)
    task = doc.field("TaskTemplate")
    task_nets = task.field("Networks", []) if isinstance(task, GoObject) else []
    return (
        [n.field("Target") for n in task_nets],
        [n.field("Target") for n in doc.field("Networks", [])],
    )


def test_every_judged_target_is_pinned_as_the_engine_reads_it() -> None:
    body = gojson.loads(
        json.dumps({"TaskTemplate": {"Networks": [{"Target": "a"}, {"Target": "keep"}]}})[:-1]
        # a second, case-folded top-level key: the engine reads the last one
        + ', "networks": [{"target": "b"}], "NETWORKS": [{"TARGET": "c", "Aliases": ["x"]}]}'
    )
    assert isinstance(body, GoObject)
    out = _pin_service_networks(body, {"a": "id-a", "b": "id-b", "c": "id-c"})
    assert _targets(out) == (["id-a", "keep"], ["id-c"])
    aliases = gojson.loads(out).field("Networks")[0].field("Aliases")
    assert aliases == ["x"]


def test_specs_without_networks_are_left_as_they_are() -> None:
    body = gojson.loads('{"TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "Networks": null}')
    assert isinstance(body, GoObject)
    out = gojson.loads(_pin_service_networks(body, {"a": "id-a"}))
    assert out.field("TaskTemplate").field("ContainerSpec").field("Image") == "x"
    assert out.field("Networks") is None
