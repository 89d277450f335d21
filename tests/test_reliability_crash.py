"""``kill -9`` at any moment: training resumes exactly, adapters and merged models are never half-written.

Real processes throughout. Training runs ``tests/scripts/train_tiny.py`` (LoRA on a tiny BERT with
``peftkit.training``, checkpoints every 2 steps). Saves and merges run in children forked by
``tests/scripts/crash_worker.py`` (so that peftkit is imported once): either killed with SIGKILL at a
random moment of a save loop, or killing themselves right after each file-system step of a save.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from peftkit.errors import AdapterFileError
from peftkit.io import read_adapter_dir
from peftkit.io.files import atomic_write_dir
from tests.tiny_models import MODEL_CLASSES

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "--epochs",
    "3",
    "--batch-size",
    "4",
    "--lr",
    "5e-3",
    "--log-every",
    "100",
    "--checkpoint-every",
    "2",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def start_training(output_dir: Path, *extra: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(SCRIPTS / "train_tiny.py"),
        "--output-dir",
        str(output_dir),
        *TRAIN,
        *extra,
    ]
    return subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, (
            f"the run ended before {path} appeared: {process.communicate()[1][-2000:]}"
        )
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return read_adapter_dir(directory).tensors


def assert_same_adapter(actual: Path, expected: Path) -> None:
    got, want = adapter_tensors(actual), adapter_tensors(expected)
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)  # bitwise: same arithmetic


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs started together: uninterrupted, killed with SIGKILL mid-way, and poisoned with a NaN."""
    root = tmp_path_factory.mktemp("runs")
    reference = start_training(root / "reference")
    victim = start_training(root / "killed", "--sleep", "0.04")
    poisoned = start_training(root / "nan", "--nan-at-batch", "11")
    wait_for(root / "killed" / "checkpoints" / "step-4", victim)
    delay = random.uniform(0.0, 0.4)  # lands anywhere: in a step, in a checkpoint save, between them
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    killed_status, _ = finish(victim)
    return {
        "root": root,
        "reference": finish(reference),
        "killed": killed_status,
        "delay": delay,
        "nan": finish(poisoned),
    }


def test_kill_9_then_resume_gives_the_same_adapter_as_an_uninterrupted_run(runs) -> None:
    root = runs["root"]
    assert runs["reference"][0] == 0, runs["reference"][1][-2000:]
    assert runs["killed"] == -signal.SIGKILL
    assert not (root / "killed" / "adapter").exists(), "the run must have been killed before it finished"
    checkpoints = [p.name for p in (root / "killed" / "checkpoints").iterdir()]
    # numeric order: "step-10" is newer than "step-8" (the kill may land after either)
    complete = sorted((n for n in checkpoints if n.startswith("step-")), key=lambda n: int(n[5:]))
    assert complete and all(
        (root / "killed" / "checkpoints" / n / "peftkit_state.json").is_file() for n in complete
    )

    status, stderr = finish(start_training(root / "killed", "--resume"))
    assert status == 0, stderr[-2000:]
    assert "Resumed from" in stderr and complete[-1] in stderr, stderr[-2000:]
    assert not list((root / "killed" / "checkpoints").glob(".tmp-*")), "a half-written checkpoint was left"
    assert not list((root / "killed" / "checkpoints").glob(".old-*")), "a half-pruned checkpoint was left"
    assert_same_adapter(root / "killed" / "adapter", root / "reference" / "adapter")


def test_nan_in_a_real_run_stops_it_naming_step_and_batch_and_the_kept_checkpoint(runs) -> None:
    root = runs["root"]
    status, stderr = runs["nan"]
    kept = root / "nan" / "checkpoints" / "step-10"
    assert status == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: Non-finite loss (nan) at optimizer step 11"), last
    assert "epoch 1, batch 2 of the epoch" in last and str(kept) in last and "--resume" in last, last
    assert "Traceback" not in stderr
    assert sorted(p.name for p in kept.parent.iterdir()) == ["step-10", "step-8"]
    assert not (root / "nan" / "adapter").exists()

    # The NaN step never reached the weights: resuming from the kept checkpoint (the fault gone)
    # ends exactly where the uninterrupted run did.
    status, stderr = finish(start_training(root / "nan", "--resume"))
    assert status == 0, stderr[-2000:]
    assert_same_adapter(root / "nan" / "adapter", root / "reference" / "adapter")


# ----------------------------------------------------------------------------------------------
# save_adapter and merge, through the fork server


class Worker:
    """Client of ``tests/scripts/crash_worker.py``."""

    def __init__(self, workdir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "crash_worker.py"), str(workdir)],
            cwd=ROOT,
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()
        assert self.info.get("ready"), self.info

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        assert line, f"crash worker died (status {self.process.poll()})"
        return json.loads(line)

    def ask(self, **command: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command, default=str) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    client = Worker(tmp_path_factory.mktemp("worker"))
    try:
        yield client
    finally:
        client.close()


def which_adapter(directory: Path, refs: dict[str, str]) -> str:
    """``"A"`` or ``"B"``: the complete reference adapter ``directory`` holds (anything else fails)."""
    tensors = adapter_tensors(directory)
    for name, ref in refs.items():
        expected = adapter_tensors(Path(ref))
        if tensors.keys() == expected.keys() and all(torch.equal(tensors[k], expected[k]) for k in expected):
            return name
    raise AssertionError(f"{directory} holds neither reference adapter")


def leftovers_do_not_load(parent: Path, target: Path, refs: dict[str, str]) -> None:
    """Anything next to ``target`` is hidden, and either fails to load or is a complete reference copy."""
    for entry in parent.iterdir():
        if entry == target or entry.name == "progress":
            continue
        assert entry.name.startswith("."), f"visible leftover {entry}"
        try:
            read_adapter_dir(entry)
        except AdapterFileError:
            continue
        which_adapter(entry, refs)


def test_kill_9_during_save_adapter_leaves_a_complete_adapter(worker: Worker, tmp_path: Path) -> None:
    refs = worker.info["refs"]
    rng = random.Random()
    for trial in range(6):
        parent = tmp_path / f"trial-{trial}"
        parent.mkdir()
        target, progress = parent / "adapter", parent / "progress"
        pid = worker.ask(op="save_loop", target=target, progress=progress)["pid"]
        deadline = time.monotonic() + 120
        while not progress.exists() or len(progress.read_text().split()) < 2:  # two saves: one replaced
            assert time.monotonic() < deadline, "the save loop made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        assert worker.ask(op="reap", pid=pid)["signal"] == signal.SIGKILL
        saves = progress.read_text().split()
        holds = which_adapter(target, refs)
        assert holds in (saves[-1], "AB"[len(saves) % 2]), (holds, saves)  # the last complete or the next one
        leftovers_do_not_load(parent, target, refs)
        # The next save to the same path clears what the killed process left beside it.
        atomic_write_dir(target, {p.name: p.read_bytes() for p in Path(refs["A"]).iterdir()})
        assert which_adapter(target, refs) == "A"
        assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_kill_9_after_every_step_of_a_save(worker: Worker, tmp_path: Path, exchange: bool) -> None:
    """Step by step: writes, fsyncs, the swap (or the two renames of the fallback), the clean-up."""
    refs = worker.info["refs"]
    outcomes = []
    for step in range(1, 30):
        parent = tmp_path / f"step-{step}"
        target = Path(_copy(Path(refs["A"]), parent / "adapter"))
        killed = worker.ask(op="crash_at", target=target, step=step, exchange=exchange)["killed"]
        if target.exists():
            outcomes.append(which_adapter(target, refs))
            leftovers_do_not_load(parent, target, refs)
        else:  # only possible between the two renames of the fallback
            assert not exchange, f"no adapter at {target} after a kill at step {step}"
            with pytest.raises(
                AdapterFileError, match="A save into it was interrupted.*rename the one holding"
            ):
                read_adapter_dir(target)
            outcomes.append("missing")
        if not killed:
            break
    assert not killed, "the save needs fewer steps than tried"
    assert outcomes[0] == "A" and outcomes[-1] == "B"
    assert ("missing" in outcomes) == (not exchange), outcomes


def _copy(source: Path, target: Path) -> Path:
    import shutil

    target.parent.mkdir(parents=True)
    return Path(shutil.copytree(source, target))


def merged_is_complete(directory: Path) -> None:
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "peftkit_merge.json"} <= names, names
    MODEL_CLASSES["bert"].from_pretrained(str(directory))


def test_kill_9_during_merge_leaves_no_half_output(worker: Worker, tmp_path: Path) -> None:
    rng = random.Random()
    for trial in range(4):
        out = tmp_path / f"trial-{trial}"
        out.mkdir()
        progress = out / "progress"
        pid = worker.ask(op="merge_loop", out=out, progress=progress)["pid"]
        deadline = time.monotonic() + 120
        while not progress.exists():
            assert time.monotonic() < deadline, "the merge loop made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(pid, signal.SIGKILL)
        assert worker.ask(op="reap", pid=pid)["signal"] == signal.SIGKILL
        done = len(progress.read_text().split())
        visible = {p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != "progress"}
        finished = {f"merged-{i}" for i in range(done)}
        assert visible in (finished, finished | {f"merged-{done}"}), (visible, done)  # complete ones only
        for directory in map(out.joinpath, visible):
            merged_is_complete(directory)


@pytest.mark.parametrize(("when", "exists"), [("before", False), ("after", True)])
def test_kill_9_around_the_publication_of_a_merge(
    worker: Worker, tmp_path: Path, when: str, exists: bool
) -> None:
    out = tmp_path / "merged"
    assert worker.ask(op="merge_crash", out=out, when=when)["killed"]
    assert out.exists() == exists
    if exists:
        merged_is_complete(out)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in name for name in hidden), hidden
