"""agent.settings.watcher on real files: every way of saving a file is seen, quickly.

All watchers here use `strict_modes=False` (the ownership checks are the loader's business and
are tested there) except the one test about permission changes, which says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.settings.loader import Loaded, LoadResult, Missing, Refused
from agent.settings.state import SettingsState
from agent.settings.watcher import SettingsWatcher

NAME = "admin-settings.json"
WAIT = 5.0  # generous upper bound for anything to arrive; latency is asserted separately


def doc(value: bool = True, *images: str) -> bytes:
    return json.dumps(
        {
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {
                "value": value,
                "locked": True,
                "dockerSocketMount": {"imageList": {"images": list(images)}},
            },
        },
        indent=2,
    ).encode()


GOOD_1 = doc(True, "docker:cli")
GOOD_2 = doc(False, "docker:dind")
GOOD_3 = doc(True, "alpine")
INVALID = b'{"configurationFileVersion": 2, "enhancedContainerIsolation": {"value": "on"}}'


def is_loaded(data: bytes) -> Callable[[LoadResult], bool]:
    sha = hashlib.sha256(data).hexdigest()
    return lambda r: isinstance(r, Loaded) and r.settings.sha256 == sha


def is_missing(r: LoadResult) -> bool:
    return isinstance(r, Missing)


def is_refused(r: LoadResult) -> bool:
    return isinstance(r, Refused)


class Recorder:
    """The `on_result` callback: records each delivery with its arrival time."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.results: list[tuple[float, LoadResult]] = []

    def __call__(self, result: LoadResult) -> None:
        with self.cond:
            self.results.append((time.monotonic(), result))
            self.cond.notify_all()

    def __len__(self) -> int:
        with self.cond:
            return len(self.results)

    def kinds(self) -> list[str]:
        return [type(r).__name__ for _, r in self.results]

    def wait_for(
        self, match: Callable[[LoadResult], bool], *, after: int = 0, timeout: float = WAIT
    ) -> float:
        """The arrival time of the first delivery from index `after` on that `match`es."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, result in self.results[after:]:
                    if match(result):
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"nothing matching within {timeout}s; delivered: {self.kinds()}"
                    )
                self.cond.wait(remaining)

    def last(self) -> LoadResult:
        with self.cond:
            return self.results[-1][1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "eci-agent"
    d.mkdir()
    return d


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watch(recorder: Recorder) -> Iterator[Callable[[Path], SettingsWatcher]]:
    started: list[SettingsWatcher] = []

    def start(path: Path) -> SettingsWatcher:
        w = SettingsWatcher(path, recorder, strict_modes=False)
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def settle(watcher: SettingsWatcher, seconds: float = 0.4) -> int:
    """Let pending events drain; returns the load count afterwards."""
    time.sleep(seconds)
    return watcher.loads


def test_initial_load_is_delivered_by_start(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    (folder / NAME).write_bytes(GOOD_1)
    w = watch(folder / NAME)
    assert len(recorder) == 1  # synchronously, before start() returned
    assert is_loaded(GOOD_1)(recorder.last())
    assert w.loads == 1
    assert w.watched_folder == os.path.realpath(folder)


def test_initial_missing_is_delivered(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    watch(folder / NAME)
    assert recorder.kinds() == ["Missing"]


def test_edit_in_place(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    inode = path.stat().st_ino
    watch(path)
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(GOOD_2)
    assert path.stat().st_ino == inode
    recorder.wait_for(is_loaded(GOOD_2), after=1)


def test_atomic_replace(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    watch(path)
    inodes = {path.stat().st_ino}
    for i, data in enumerate([GOOD_2, GOOD_3, GOOD_1]):
        n = len(recorder)
        tmp = folder / f".{NAME}.tmp{i}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        inodes.add(path.stat().st_ino)
        recorder.wait_for(is_loaded(data), after=n)
    assert len(inodes) > 1  # really a new file each time, not an edit in place
    assert is_loaded(GOOD_1)(recorder.last())


def test_delete_then_recreate(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    watch(path)
    path.unlink()
    recorder.wait_for(is_missing, after=1)
    n = len(recorder)
    path.write_bytes(GOOD_2)
    recorder.wait_for(is_loaded(GOOD_2), after=n)


def test_vim_like_save(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    watch(path)
    swap = folder / f".{NAME}.swp"
    swap.write_bytes(b"b0VIM 9.0" + b"\0" * 100)
    probe = folder / "4913"
    probe.write_bytes(b"")
    probe.unlink()
    backup = folder / f"{NAME}~"
    os.rename(path, backup)
    path.write_bytes(GOOD_2)
    backup.unlink()
    swap.unlink()
    recorder.wait_for(is_loaded(GOOD_2), after=1)
    time.sleep(0.5)
    assert is_loaded(GOOD_2)(recorder.last())


def test_move_into_place_from_elsewhere(
    tmp_path: Path, folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    watch(path)
    staged = tmp_path / "staged.json"
    staged.write_bytes(GOOD_3)
    os.rename(staged, path)
    recorder.wait_for(is_loaded(GOOD_3), after=1)


def test_invalid_content_is_refused_and_state_keeps_last_good(
    folder: Path, recorder: Recorder
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    state = SettingsState()

    def on_result(result: LoadResult) -> None:
        state.apply(result, time.time())
        recorder(result)

    with SettingsWatcher(path, on_result, strict_modes=False) as w:
        assert is_loaded(GOOD_1)(recorder.last())
        assert state.current.settings.sha256 == hashlib.sha256(GOOD_1).hexdigest()
        path.write_bytes(INVALID)
        recorder.wait_for(is_refused, after=1)
        refused = recorder.last()
        assert isinstance(refused, Refused)
        assert [p.json_path for p in refused.problems] == ["enhancedContainerIsolation.value"]
        assert state.current.settings.sha256 == hashlib.sha256(GOOD_1).hexdigest()
        assert state.error is not None and "enhancedContainerIsolation.value" in state.error
        n = len(recorder)
        path.write_bytes(GOOD_2)
        recorder.wait_for(is_loaded(GOOD_2), after=n)
        assert state.error is None
        assert state.current.settings.sha256 == hashlib.sha256(GOOD_2).hexdigest()
        assert w.loads >= 3


def test_unrelated_files_trigger_no_reload(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    w = watch(path)
    loads = settle(w)
    (folder / f".{NAME}.swp").write_bytes(b"swap")
    (folder / f"{NAME}~").write_bytes(GOOD_2)
    (folder / "4913").write_bytes(b"")
    (folder / "other.json").write_bytes(GOOD_3)
    os.rename(folder / "other.json", folder / "other2.json")
    (folder / f"{NAME}.bak").write_bytes(GOOD_2)
    (folder / "sub").mkdir()
    (folder / "sub" / NAME).write_bytes(GOOD_2)  # same name, other folder
    (folder / "4913").unlink()
    path.read_bytes()  # reading the file is not a change either
    time.sleep(2.5)  # covers two fallback polls too
    assert w.loads == loads
    assert len(recorder) == 1


def test_identical_bytes_are_not_delivered_again(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    w = watch(path)
    loads = settle(w)
    path.write_bytes(GOOD_1)  # rewritten, same bytes
    deadline = time.monotonic() + WAIT
    while w.loads == loads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.loads > loads  # it was read again...
    time.sleep(0.3)
    assert len(recorder) == 1  # ...but not delivered again


def test_valid_change_takes_effect_within_one_second(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    w = watch(path)
    settle(w)
    latencies = []
    for data in (GOOD_2, GOOD_3):
        n = len(recorder)
        tmp = folder / ".new"
        tmp.write_bytes(data)
        written = time.monotonic()
        os.replace(tmp, path)
        arrived = recorder.wait_for(is_loaded(data), after=n)
        latencies.append(arrived - written)
        n = len(recorder)
        written = time.monotonic()
        path.write_bytes(GOOD_1)
        arrived = recorder.wait_for(is_loaded(GOOD_1), after=n)
        latencies.append(arrived - written)
    assert max(latencies) < 1.0, latencies


def test_parent_folder_deleted_and_recreated(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    w = watch(path)
    shutil.rmtree(folder)
    recorder.wait_for(is_missing, after=1)
    folder.mkdir()
    n = len(recorder)
    path.write_bytes(GOOD_2)
    recorder.wait_for(is_loaded(GOOD_2), after=n)
    assert w.watched_folder == os.path.realpath(folder)
    # And the new folder is really watched by events again, not only polled.
    n = len(recorder)
    written = time.monotonic()
    path.write_bytes(GOOD_3)
    assert recorder.wait_for(is_loaded(GOOD_3), after=n) - written < 1.0


def test_parent_folder_replaced_quickly(folder: Path, recorder: Recorder) -> None:
    # No fallback poll here (30 s): only a re-established inotify watch can deliver GOOD_3.
    # `rm -rf` + `mkdir` often gives the new folder the old inode number (ext4 does), so the
    # watcher must notice that its watch died with the old folder, not just compare inodes.
    path = folder / NAME
    path.write_bytes(GOOD_1)
    with SettingsWatcher(path, recorder, strict_modes=False, poll_interval=30.0) as w:
        shutil.rmtree(folder)
        folder.mkdir()
        path.write_bytes(GOOD_2)
        recorder.wait_for(is_loaded(GOOD_2), after=1)
        time.sleep(0.3)
        n = len(recorder)
        path.write_bytes(GOOD_3)
        recorder.wait_for(is_loaded(GOOD_3), after=n)
        assert w.watched_folder == os.path.realpath(folder)


def test_events_alone_suffice(folder: Path, recorder: Recorder) -> None:
    # With the fallback poll out of the way, each way of saving must be seen through events.
    path = folder / NAME
    path.write_bytes(GOOD_1)
    with SettingsWatcher(path, recorder, strict_modes=False, poll_interval=30.0):
        n = len(recorder)
        with open(path, "r+b") as fh:  # in place
            fh.truncate(0)
            fh.write(GOOD_2)
        recorder.wait_for(is_loaded(GOOD_2), after=n)

        n = len(recorder)
        (folder / ".tmp").write_bytes(GOOD_3)  # atomic replace
        os.replace(folder / ".tmp", path)
        recorder.wait_for(is_loaded(GOOD_3), after=n)

        n = len(recorder)
        path.unlink()  # delete
        recorder.wait_for(is_missing, after=n)
        n = len(recorder)
        path.write_bytes(GOOD_1)  # re-create
        recorder.wait_for(is_loaded(GOOD_1), after=n)

        n = len(recorder)
        os.rename(path, folder / f"{NAME}~")  # vim: move aside, write anew, drop the backup
        path.write_bytes(GOOD_2)
        (folder / f"{NAME}~").unlink()
        recorder.wait_for(is_loaded(GOOD_2), after=n)

        n = len(recorder)
        os.chmod(path, 0o600)  # attributes alone: re-read (strict modes may care)
        os.chmod(path, 0o644)
        path.write_bytes(INVALID)
        recorder.wait_for(is_refused, after=n)


def test_parent_folder_missing_at_start(
    tmp_path: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = tmp_path / "etc" / "eci-agent" / NAME
    w = watch(path)
    assert recorder.kinds() == ["Missing"]
    assert w.watched_folder == os.path.realpath(tmp_path)
    (tmp_path / "etc").mkdir()
    time.sleep(0.3)
    (tmp_path / "etc" / "eci-agent").mkdir()
    path.write_bytes(GOOD_1)
    recorder.wait_for(is_loaded(GOOD_1), after=1)
    assert w.watched_folder == os.path.realpath(path.parent)


def test_symlinked_file_edited_elsewhere_is_seen_by_polling(
    tmp_path: Path, folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    # Editing the target of a symlink makes no event in the watched folder: only the
    # periodic stat fallback can see it.
    target_dir = tmp_path / "real"
    target_dir.mkdir()
    target = target_dir / "settings.json"
    target.write_bytes(GOOD_1)
    path = folder / NAME
    path.symlink_to(target)
    watch(path)
    assert is_loaded(GOOD_1)(recorder.last())
    written = time.monotonic()
    with open(target, "r+b") as fh:
        fh.truncate(0)
        fh.write(GOOD_2)
    arrived = recorder.wait_for(is_loaded(GOOD_2), after=1)
    assert arrived - written < 2.5  # one poll interval plus the debounce, with slack


@pytest.mark.skipif(os.geteuid() != 0, reason="strict modes need root")
def test_permission_change_is_seen_in_strict_mode(folder: Path, recorder: Recorder) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    os.chmod(path, 0o644)
    os.chmod(folder, 0o755)
    # No fallback poll: a chmod must be seen through its attribute-change event.
    with SettingsWatcher(path, recorder, strict_modes=True, poll_interval=30.0):
        assert is_loaded(GOOD_1)(recorder.last())
        os.chmod(path, 0o666)
        recorder.wait_for(is_refused, after=1)
        refused = recorder.last()
        assert isinstance(refused, Refused) and "writable by group and others" in refused.reason
        n = len(recorder)
        os.chmod(path, 0o644)
        recorder.wait_for(is_loaded(GOOD_1), after=n)


def test_stop_joins_and_stops_delivering(folder: Path, recorder: Recorder) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    before = {t.ident for t in threading.enumerate()}
    w = SettingsWatcher(path, recorder, strict_modes=False)
    w.start()
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert started
    w.stop()
    assert not any(t.is_alive() for t in started)
    path.write_bytes(GOOD_2)
    time.sleep(1.5)
    assert recorder.kinds() == ["Loaded"]
    w.stop()  # idempotent


def test_start_twice_is_an_error(folder: Path, recorder: Recorder) -> None:
    with SettingsWatcher(folder / NAME, recorder, strict_modes=False) as w:
        with pytest.raises(RuntimeError):
            w.start()


def test_failing_callback_does_not_stop_the_watcher(folder: Path) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    recorder = Recorder()
    calls = 0

    def flaky(result: LoadResult) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("callback bug")
        recorder(result)

    with SettingsWatcher(path, flaky, strict_modes=False):
        path.write_bytes(GOOD_2)  # delivered, and the callback raises
        deadline = time.monotonic() + WAIT
        while calls < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == 2
        path.write_bytes(GOOD_3)
        recorder.wait_for(is_loaded(GOOD_3), after=1)


def test_request_reload_rereads(
    folder: Path, recorder: Recorder, watch: Callable[[Path], SettingsWatcher]
) -> None:
    path = folder / NAME
    path.write_bytes(GOOD_1)
    w = watch(path)
    loads = settle(w)
    w.request_reload()
    deadline = time.monotonic() + WAIT
    while w.loads == loads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.loads == loads + 1
