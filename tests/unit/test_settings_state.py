"""agent.settings.state: which policy is in force after each load, and the error state."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest

from agent.settings.loader import Loaded, LoadResult, Missing, Refused
from agent.settings.model import (
    BUILTIN_DEFAULT,
    UNREADABLE_FILE_DEFAULT,
    AdminSettings,
    SettingsLocked,
)
from agent.settings.parse import parse_settings
from agent.settings.state import Change, ChangeKind, SettingsState

PATH = "/etc/eci-agent/admin-settings.json"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20+00:00
T0_TEXT = "2023-11-14T22:13:20+00:00"


def settings(
    value: bool = True, locked: bool = True, images: tuple[str, ...] = ()
) -> AdminSettings:
    text = json.dumps(
        {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {
                "value": value,
                "locked": locked,
                "dockerSocketMount": {"imageList": {"images": list(images)}},
            },
        }
    )
    return parse_settings(text.encode(), PATH)


A = settings(images=("docker:cli",))
B = settings(images=("docker:dind",))
UNLOCKED = settings(value=True, locked=False)
UNLOCKED_2 = settings(value=True, locked=False, images=("alpine",))
LOCKED_OFF = settings(value=False, locked=True)
BAD = Refused(PATH, "bad file: enhancedContainerIsolation.value: expected true or false")
SHA_A = (A.sha256 or "")[:12]

RESULTS: dict[str, LoadResult] = {
    "A": Loaded(A),
    "B": Loaded(B),
    "U": Loaded(UNLOCKED),
    "U2": Loaded(UNLOCKED_2),
    "L": Loaded(LOCKED_OFF),
    "missing": Missing(PATH),
    "bad": BAD,
    "worse": Refused(PATH, "refusing it: a non-root user could change it"),
}
SETTINGS: dict[str, AdminSettings] = {
    "A": A,
    "B": B,
    "U": UNLOCKED,
    "U2": UNLOCKED_2,
    "L": LOCKED_OFF,
    "default": BUILTIN_DEFAULT,
    "default-locked": UNREADABLE_FILE_DEFAULT,
}


@dataclass(frozen=True)
class Step:
    result: str  # key of RESULTS
    kind: ChangeKind  # expected Change.kind
    current: str  # key of SETTINGS in force afterwards
    error: str | None = None  # a fragment of the expected error, or None for no error


# (case id, steps applied in order to a fresh state, one second apart)
TRANSITIONS: list[tuple[str, list[Step]]] = [
    ("no file at start: default, no error", [Step("missing", ChangeKind.APPLIED, "default")]),
    (
        "no file twice",
        [
            Step("missing", ChangeKind.APPLIED, "default"),
            Step("missing", ChangeKind.UNCHANGED, "default"),
        ],
    ),
    ("good file", [Step("A", ChangeKind.APPLIED, "A")]),
    ("same file again", [Step("A", ChangeKind.APPLIED, "A"), Step("A", ChangeKind.UNCHANGED, "A")]),
    (
        "new good file replaces",
        [Step("A", ChangeKind.APPLIED, "A"), Step("B", ChangeKind.APPLIED, "B")],
    ),
    (
        "file appears",
        [Step("missing", ChangeKind.APPLIED, "default"), Step("A", ChangeKind.APPLIED, "A")],
    ),
    (
        "bad file keeps last good",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("bad", ChangeKind.KEPT, "A", "bad file: enhancedContainerIsolation.value"),
        ],
    ),
    (
        "same bad file twice",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("bad", ChangeKind.KEPT, "A", "bad file"),
            Step("bad", ChangeKind.UNCHANGED, "A", "bad file"),
        ],
    ),
    (
        "another refusal replaces the error",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("bad", ChangeKind.KEPT, "A", "bad file"),
            Step("worse", ChangeKind.KEPT, "A", "non-root user"),
        ],
    ),
    (
        "fixed file clears the error",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("bad", ChangeKind.KEPT, "A", "bad file"),
            Step("B", ChangeKind.APPLIED, "B"),
        ],
    ),
    (
        "restored file clears the error",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("bad", ChangeKind.KEPT, "A", "bad file"),
            Step("A", ChangeKind.APPLIED, "A"),
        ],
    ),
    (
        "deleted file keeps last good",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step(
                "missing",
                ChangeKind.KEPT,
                "A",
                f"settings file {PATH} deleted; keeping the last "
                f"good policy from 2023-11-14T22:13:20+00:00, {PATH} (sha256 {SHA_A})",
            ),
        ],
    ),
    (
        "deleted then back",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("missing", ChangeKind.KEPT, "A", "deleted"),
            Step("missing", ChangeKind.UNCHANGED, "A", "deleted"),
            Step("A", ChangeKind.APPLIED, "A"),
        ],
    ),
    (
        "deleted after a refusal still keeps the last good",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("bad", ChangeKind.KEPT, "A", "bad file"),
            Step("missing", ChangeKind.KEPT, "A", "deleted"),
        ],
    ),
    (
        "bad file at start: default with an error",
        [Step("bad", ChangeKind.KEPT, "default-locked", "bad file")],
    ),
    (
        "bad file at start then deleted: default, no error",
        [
            Step("bad", ChangeKind.KEPT, "default-locked", "bad file"),
            Step("missing", ChangeKind.APPLIED, "default"),
        ],
    ),
    (
        "bad file at start then fixed",
        [
            Step("bad", ChangeKind.KEPT, "default-locked", "bad file"),
            Step("worse", ChangeKind.KEPT, "default-locked", "non-root user"),
            Step("A", ChangeKind.APPLIED, "A"),
        ],
    ),
    (
        "last good is the latest good",
        [
            Step("A", ChangeKind.APPLIED, "A"),
            Step("B", ChangeKind.APPLIED, "B"),
            Step("bad", ChangeKind.KEPT, "B", "bad file"),
        ],
    ),
]


@pytest.mark.parametrize("steps", [c[1] for c in TRANSITIONS], ids=[c[0] for c in TRANSITIONS])
def test_transitions(steps: list[Step]) -> None:
    state = SettingsState()
    for i, step in enumerate(steps):
        now = T0 + i
        result = RESULTS[step.result]
        change = state.apply(result, now)
        where = f"step {i} ({step.result})"
        assert change.kind is step.kind, where
        assert state.current.settings == SETTINGS[step.current], where
        assert change.effective == state.current, where
        assert state.last_result is result
        assert state.last_reload == now
        if step.error is None:
            assert state.error is None, where
            assert change.error is None, where
        else:
            assert state.error is not None and step.error in state.error, where
            assert change.error == state.error, where


def test_initial_state() -> None:
    state = SettingsState()
    assert state.current.settings is BUILTIN_DEFAULT
    assert state.current.eci_enabled is True
    assert state.error is None
    assert state.last_result is None
    assert state.last_reload is None
    assert state.last_good_at is None


def test_refusal_message_names_what_is_kept() -> None:
    state = SettingsState()
    state.apply(RESULTS["A"], T0)
    change = state.apply(RESULTS["bad"], T0 + 60)
    assert state.error == BAD.reason
    assert change.message.startswith(BAD.reason)
    assert f"keeping the last good policy from {T0_TEXT}, {PATH} (sha256 {SHA_A})" in (
        change.message
    )
    assert state.last_good_at == T0

    fresh = SettingsState()
    change = fresh.apply(RESULTS["bad"], T0)
    assert "keeping the built-in default policy" in change.message


def test_applied_message_names_the_file() -> None:
    change = SettingsState().apply(RESULTS["L"], T0)
    assert (
        change.message
        == f"applied {PATH} (sha256 {(LOCKED_OFF.sha256 or '')[:12]}): ECI off, locked"
    )
    assert str(change) == change.message


def test_missing_at_start_reports_the_default() -> None:
    change = SettingsState().apply(Missing(PATH), T0)
    assert "built-in default policy applies" in change.message


# -- the user's choice -----------------------------------------------------------------------


def test_user_choice_when_unlocked() -> None:
    state = SettingsState()
    state.apply(RESULTS["U"], T0)
    change = state.set_user_choice(False)
    assert change.kind is ChangeKind.APPLIED
    assert state.current.eci_enabled is False
    assert state.current.user_choice is False
    assert state.set_user_choice(False).kind is ChangeKind.UNCHANGED
    assert state.set_user_choice(None).kind is ChangeKind.APPLIED
    assert state.current.eci_enabled is True


def test_user_choice_survives_an_unlocked_reload() -> None:
    state = SettingsState()
    state.apply(RESULTS["U"], T0)
    state.set_user_choice(False)
    change = state.apply(RESULTS["U2"], T0 + 1)
    assert change.kind is ChangeKind.APPLIED
    assert state.current.settings == UNLOCKED_2
    assert state.current.user_choice is False
    assert state.current.eci_enabled is False


def test_user_choice_dropped_when_the_file_locks() -> None:
    state = SettingsState()
    state.apply(RESULTS["U"], T0)
    state.set_user_choice(True)
    change = state.apply(RESULTS["L"], T0 + 1)
    assert change.kind is ChangeKind.APPLIED
    assert state.current.user_choice is None
    assert state.current.eci_enabled is False  # the file says off, locked
    assert "the user's choice no longer applies" in change.message
    # Unlocking again does not bring the old choice back.
    state.apply(RESULTS["U"], T0 + 2)
    assert state.current.user_choice is None


def test_user_choice_refused_when_locked() -> None:
    state = SettingsState()
    state.apply(RESULTS["A"], T0)
    seen: list[Change] = []
    state.subscribe(seen.append)
    with pytest.raises(SettingsLocked) as info:
        state.set_user_choice(False)
    assert PATH in str(info.value)
    assert "locked by the administrator" in str(info.value)
    assert state.current.eci_enabled is True
    assert state.current.user_choice is None
    assert seen == []
    assert state.set_user_choice(None).kind is ChangeKind.UNCHANGED  # following the file is fine


def test_user_choice_with_no_file() -> None:
    state = SettingsState()
    state.apply(Missing(PATH), T0)
    state.set_user_choice(False)
    assert state.current.eci_enabled is False
    state.apply(Missing(PATH), T0 + 1)
    assert state.current.user_choice is False  # the default is unlocked


def test_user_choice_kept_while_a_refused_file_keeps_an_unlocked_policy() -> None:
    state = SettingsState()
    state.apply(RESULTS["U"], T0)
    state.set_user_choice(False)
    state.apply(RESULTS["bad"], T0 + 1)
    assert state.current.eci_enabled is False
    assert state.error is not None


# -- listeners -------------------------------------------------------------------------------


def test_listeners_see_every_change_in_order() -> None:
    state = SettingsState()
    seen: list[Change] = []
    unsubscribe = state.subscribe(seen.append)
    state.apply(RESULTS["U"], T0)
    state.apply(RESULTS["U"], T0 + 1)
    state.set_user_choice(False)
    state.apply(RESULTS["bad"], T0 + 2)
    assert [c.kind for c in seen] == [
        ChangeKind.APPLIED,
        ChangeKind.UNCHANGED,
        ChangeKind.APPLIED,
        ChangeKind.KEPT,
    ]
    assert seen[-1].effective.user_choice is False
    unsubscribe()
    state.apply(RESULTS["A"], T0 + 3)
    assert len(seen) == 4
    unsubscribe()  # twice is harmless


def test_a_failing_listener_does_not_stop_the_others() -> None:
    state = SettingsState()
    seen: list[ChangeKind] = []

    def broken(change: Change) -> None:
        raise RuntimeError("listener bug")

    state.subscribe(broken)
    state.subscribe(lambda c: seen.append(c.kind))
    change = state.apply(RESULTS["A"], T0)
    assert seen == [ChangeKind.APPLIED]
    assert state.current.settings == A
    assert change.kind is ChangeKind.APPLIED


def test_listener_may_read_the_state() -> None:
    state = SettingsState()
    read: list[AdminSettings] = []
    state.subscribe(lambda c: read.append(state.current.settings))
    state.apply(RESULTS["B"], T0)
    assert read == [B]


def test_concurrent_updates_are_serialized() -> None:
    state = SettingsState()
    seen: list[Change] = []
    state.subscribe(seen.append)
    order = ["A", "B", "bad", "missing"] * 50
    barrier = threading.Barrier(4)

    def worker(offset: int) -> None:
        barrier.wait()
        for i, key in enumerate(order[offset::4]):
            state.apply(RESULTS[key], T0 + i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(order)
    # Every change reported the state as it was right after that update.
    last = seen[-1]
    assert last.effective == state.current
    assert last.error == state.error
    assert state.current.settings in (A, B)


def test_a_file_refused_before_any_was_read_locks_the_switch() -> None:
    """The admin meant some policy: until the file can be read, the user's own ECI switch
    (which that file may lock) is refused and any earlier choice is dropped."""
    state = SettingsState()
    state.set_user_choice(False)  # no file yet: Docker Desktop's unlocked default
    assert state.current.eci_enabled is False
    state.apply(RESULTS["bad"], T0)
    assert state.current.eci_enabled is True and state.current.settings.eci.locked
    with pytest.raises(SettingsLocked, match="could not be read"):
        state.set_user_choice(False)
    state.apply(RESULTS["U"], T0 + 1)  # readable again, and unlocked: the switch is back
    state.set_user_choice(False)
    assert state.current.eci_enabled is False
    state.apply(RESULTS["bad"], T0 + 2)  # a good file was read: its policy stays, as it said
    assert state.current.settings is UNLOCKED and state.current.eci_enabled is False
