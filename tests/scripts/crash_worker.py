"""Fork server for the kill -9 tests of ``save_adapter`` and ``peftkit merge``.

Importing peftkit costs seconds of CPU, so the tests start this script once; it prepares two
adapters and a base model, then *forks* a real child process for every trial, which the test
kills with SIGKILL (or which kills itself at a chosen step of the save). One JSON command per
line on stdin, one JSON reply per line on stdout::

    {"op": "save_loop", "target": DIR, "progress": FILE}   -> {"pid": N}  child saves A, B, A, ... to DIR
    {"op": "merge_loop", "out": DIR, "progress": FILE}     -> {"pid": N}  child merges into DIR/merged-<i>
    {"op": "reap", "pid": N}                               -> {"status": S, "signal": SIG or null}
    {"op": "crash_at", "target": DIR, "step": K, "exchange": B}
        -> {"killed": bool}  child saves B over A at DIR and SIGKILLs itself right after the K-th
           file-system step of the save (write, fsync, rename, exchange, delete); exchange=false
           disables the atomic renameat2 swap (the fallback used where it does not exist)
    {"op": "merge_crash", "out": DIR, "when": "before" | "after"}
        -> {"killed": bool}  child merges and SIGKILLs itself just before / after publishing DIR
    {"op": "quit"}

On start it prints ``{"ready": true, "refs": {"A": DIR, "B": DIR}, "base": DIR, "adapter": DIR}``.
Usage: ``python tests/scripts/crash_worker.py WORKDIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.tiny_models

import torch  # noqa: E402

torch.set_num_threads(1)  # children are forked: no OpenMP pool may exist in the parent

import peftkit  # noqa: E402
from peftkit.io import files as io_files  # noqa: E402
from tests.tiny_models import MODEL_CLASSES, make_model  # noqa: E402

LOG = os.devnull  # children's stdout/stderr (set to <workdir>/children.log in main)


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def adapter_model(seed: int, r: int) -> torch.nn.Module:
    base = make_model("bert")
    torch.manual_seed(100 + seed)
    model = peftkit.wrap(base, "lora", r=r)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fork(body: Any, *args: Any) -> int:
    """Run ``body(*args)`` in a forked child; returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the command loop, never writes to the protocol pipe
        try:
            log = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            body(*args)
        finally:
            os._exit(0)
    return pid


def save_loop(models: dict[str, torch.nn.Module], target: Path, progress: Path) -> None:
    i = 0
    while True:
        peftkit.save_adapter(models["AB"[i % 2]], target)
        with open(progress, "a") as handle:
            handle.write(f"{'AB'[i % 2]}\n")
        i += 1


def crash_at(model: torch.nn.Module, target: Path, step: int, exchange: bool) -> None:
    """Count the file-system steps of one save and SIGKILL this process after the ``step``-th."""
    count = {"n": 0}

    def counted(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            count["n"] += 1
            if count["n"] == step:
                die()
            return result

        return wrapper

    io_files.write_file = counted(io_files.write_file)
    io_files._fsync_dir = counted(io_files._fsync_dir)
    io_files._exchange = counted(io_files._exchange) if exchange else (lambda a, b: False)
    os.replace = counted(os.replace)
    shutil.rmtree = counted(shutil.rmtree)
    peftkit.save_adapter(model, target)


def merge_loop(base: Path, adapter: Path, out: Path, progress: Path) -> None:
    from peftkit.cli import main

    i = 0
    while True:
        if (
            main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out / f"merged-{i}")])
            != 0
        ):
            os._exit(3)
        with open(progress, "a") as handle:
            handle.write(f"{i}\n")
        i += 1


def merge_crash(base: Path, adapter: Path, out: Path, when: str) -> None:
    from peftkit.merge import into_base

    real = os.replace

    def replace(src, dst):
        if Path(dst) == out and when == "before":
            die()
        real(src, dst)
        if Path(dst) == out:
            die()

    into_base.os.replace = replace
    peftkit.merge_adapter(base, adapter, out)


def main(workdir: Path) -> None:
    global LOG
    LOG = str(workdir / "children.log")
    models = {"A": adapter_model(0, r=96), "B": adapter_model(1, r=96)}
    refs = {name: str(peftkit.save_adapter(model, workdir / "refs" / name)) for name, model in models.items()}
    base_dir = workdir / "base"
    make_model("bert").save_pretrained(str(base_dir))
    trained = MODEL_CLASSES["bert"].from_pretrained(str(base_dir))
    torch.manual_seed(5)
    peftkit.wrap(trained, "lora", r=8)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_()
    adapter_dir = peftkit.save_adapter(trained, workdir / "merge-adapter")
    reply({"ready": True, "refs": refs, "base": str(base_dir), "adapter": str(adapter_dir)})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        if op == "save_loop":
            target, progress = Path(command["target"]), Path(command["progress"])
            reply({"pid": fork(save_loop, models, target, progress)})
        elif op == "merge_loop":
            out, progress = Path(command["out"]), Path(command["progress"])
            reply({"pid": fork(merge_loop, base_dir, adapter_dir, out, progress)})
        elif op == "reap":
            _, status = os.waitpid(command["pid"], 0)
            reply({"status": status, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})
        elif op == "crash_at":
            target = Path(command["target"])
            pid = fork(crash_at, models["B"], target, command["step"], command["exchange"])
            _, status = os.waitpid(pid, 0)
            reply({"killed": os.WIFSIGNALED(status)})
        elif op == "merge_crash":
            out = Path(command["out"])
            pid = fork(merge_crash, base_dir, adapter_dir, out, command["when"])
            _, status = os.waitpid(pid, 0)
            reply({"killed": os.WIFSIGNALED(status)})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
