"""Atomic, resumable training checkpoints on top of ``accelerator.save_state``.

Layout of ``<output_dir>/checkpoints``::

    step-200/                     a complete checkpoint (newest K are kept)
        model.safetensors         trainable weights only (or the full model)
        optimizer.bin             optimizer state (loaded with weights_only=True)
        random_states_<rank>.pkl  Python/NumPy/torch RNG of every process (Accelerate)
        method_state.safetensors  e.g. AdaLoRA's sensitivity averages (if any)
        best.safetensors          the best evaluation's trainable state (with select_best, see .selection)
        peftkit_state.json        step counters, scheduler, data position; written last
    .tmp-step-400/                being written; renamed to step-400 with os.replace when done
    .old-step-100/                pruned or replaced; renamed aside first, then deleted

A directory counts as a checkpoint only if it is named ``step-<N>`` *and* holds
``peftkit_state.json``. Everything is first written into ``.tmp-step-<N>`` in the same parent,
fsynced, and published with one ``os.replace``, so a crash or an error during the save never
leaves a directory that looks complete and never touches the previous checkpoint. Pruning is the
mirror image: an old checkpoint is renamed to ``.old-step-<N>`` before it is deleted, so a crash in
the middle of a deletion leaves no half-deleted ``step-<N>``. Leftover ``.tmp-``/``.old-`` directories
are removed when the next run opens the checkpoint directory.

With ``trainable_only`` (the default) the frozen base weights are not stored; a fingerprint of
them is, and resuming onto different base weights raises :class:`TrainingError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from peftkit.errors import CheckpointWriteError, PeftkitError, TrainingError

logger = logging.getLogger(__name__)

STATE_FILE = "peftkit_state.json"
METHOD_STATE_FILE = "method_state.safetensors"
BEST_STATE_FILE = "best.safetensors"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir_size(path: str | Path) -> int:
    """Total size in bytes of the files in a checkpoint directory."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (e.g. ``<output_dir>/checkpoints``), or ``None``."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _move_aside(checkpoint: Path) -> Path:
    """Rename ``step-<N>`` to ``.old-step-<N>`` (one atomic step) so that it can be deleted piecemeal."""
    aside = checkpoint.with_name(f".old-{checkpoint.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(checkpoint, aside)
    _fsync_dir(checkpoint.parent)
    return aside


def trainable_state_names(model: nn.Module) -> set[str]:
    """Names stored by a trainable-only checkpoint: trainable parameters and persistent buffers."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    state_keys = set(model.state_dict().keys())
    names |= {name for name, _ in model.named_buffers() if name in state_keys}
    return names


def frozen_fingerprint(model: nn.Module) -> str:
    """Hash (name, dtype, shape, bytes) of every state tensor a trainable-only checkpoint omits."""
    kept = trainable_state_names(model)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name in kept or not isinstance(tensor, torch.Tensor):
            continue
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _trainable_mismatch(stored: dict[str, tuple[int, ...]], model: nn.Module) -> str | None:
    """How a checkpoint's trainable tensors (name -> shape) differ from ``model``'s, if they do."""
    kept = trainable_state_names(model)
    missing, unexpected = sorted(kept - set(stored)), sorted(set(stored) - kept)
    if missing or unexpected:
        return f"missing: {missing[:3]}, unexpected: {unexpected[:3]}"
    current = model.state_dict()
    resized = [name for name in sorted(kept) if stored[name] != tuple(current[name].shape)]
    if resized:
        name = resized[0]
        more = f" and {len(resized) - 1} more" if len(resized) > 1 else ""
        return f"{name} has shape {stored[name]} in the checkpoint but {tuple(current[name].shape)} in the model{more}"
    return None


def _damaged_file(path: Path, pattern: str = "*") -> str | None:
    """Name of the first file of checkpoint ``path`` that does not load safely (tensors only), if any."""
    from accelerate.utils.other import load as safe_load  # torch.load(weights_only=True) + numpy RNG types

    for file in sorted(path.glob(pattern)):
        try:
            if file.suffix == ".safetensors":
                load_file(str(file))
            elif file.suffix in (".bin", ".pkl", ".pt"):
                safe_load(file, map_location="cpu")
        except Exception:
            return file.name
    return None


class CheckpointManager:
    """Save, find, load and prune checkpoints of one run.

    Every process must call :meth:`save` and :meth:`load` together (they synchronise).

    Args:
        root: Checkpoint directory, normally ``<output_dir>/checkpoints``.
        accelerator: The run's accelerator (its prepared model/optimizer are saved).
        model: The *unwrapped* model.
        keep: How many of the newest checkpoints to keep.
        trainable_only: Store only trainable parameters and buffers instead of the full model.

    """

    def __init__(
        self,
        root: str | Path,
        accelerator: Accelerator,
        model: nn.Module,
        *,
        keep: int = 2,
        trainable_only: bool = True,
    ) -> None:
        self.root = Path(root)
        self.accelerator = accelerator
        self.model = model
        self.keep = keep
        self.trainable_only = trainable_only
        self._fingerprint: str | None = None
        if accelerator.is_main_process and self.root.is_dir():
            for pattern in (".tmp-step-*", ".old-step-*"):
                for stale in self.root.glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint of this run, or ``None``."""
        return find_latest_checkpoint(self.root)

    def fingerprint(self) -> str:
        """Fingerprint of the frozen weights (computed once; they do not change in training)."""
        if self._fingerprint is None:
            self._fingerprint = frozen_fingerprint(self.model)
        return self._fingerprint

    # ------------------------------------------------------------------------------------------
    # save

    def save(
        self,
        step: int,
        payload: dict[str, Any],
        method_tensors: dict[str, torch.Tensor],
        best_tensors: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write checkpoint ``step-<step>`` atomically and prune old ones.

        Args:
            step: Optimizer steps taken so far.
            payload: JSON-serialisable loop state (counters, scheduler, ...).
            method_tensors: Extra tensors of the adapter methods (see :mod:`.method_state`).
            best_tensors: The best evaluation's state (see :mod:`.selection`), stored as
                ``best.safetensors`` and read back by :meth:`load_best`.

        Returns:
            The published checkpoint directory.

        """
        acc = self.accelerator
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            with self._save_hook():
                acc.save_state(str(tmp), safe_serialization=True)
            acc.wait_for_everyone()
            if acc.is_main_process:
                if method_tensors:
                    save_file(method_tensors, str(tmp / METHOD_STATE_FILE))
                if best_tensors:
                    save_file(best_tensors, str(tmp / BEST_STATE_FILE))
                payload = {**payload, "format_version": FORMAT_VERSION, "num_processes": acc.num_processes}
                payload["model_format"] = "trainable_only" if self.trainable_only else "full"
                if self.trainable_only:
                    payload["frozen_fingerprint"] = self.fingerprint()
                _fsync_tree(tmp)
                with open(tmp / STATE_FILE, "w", encoding="utf-8") as handle:
                    json.dump(payload, handle, indent=1)
                    handle.flush()
                    os.fsync(handle.fileno())
                self._publish(tmp, final)
                self._prune()
        except BaseException as exc:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, PeftkitError):
                latest = self.latest()
                kept = (
                    f"the last complete checkpoint, {latest}, is intact"
                    if latest
                    else "no checkpoint was kept"
                )
                raise CheckpointWriteError.wrap(
                    f"Cannot write checkpoint {final}: {exc.strerror or exc}"
                    f"{f' ({exc.filename})' if exc.filename else ''}. Nothing partial was left and {kept}. Free "
                    "some disk space (or lower --keep-checkpoints, or use another --output-dir), then rerun with "
                    "--resume.",
                    exc,
                ) from exc
            raise
        acc.wait_for_everyone()
        return final

    @contextlib.contextmanager
    def _save_hook(self) -> Iterator[None]:
        if not self.trainable_only:
            yield
            return

        def keep_trainable(models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
            for i, model in enumerate(models):
                kept = trainable_state_names(self.accelerator.unwrap_model(model))
                weights[i] = OrderedDict(
                    (k, v) for k, v in weights[i].items() if k.removeprefix("module.") in kept
                )

        handle = self.accelerator.register_save_state_pre_hook(keep_trainable)
        try:
            yield
        finally:
            handle.remove()

    def _publish(self, tmp: Path, final: Path) -> None:
        old = _move_aside(final) if final.exists() else None
        os.replace(tmp, final)
        _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _prune(self) -> None:
        for _, path in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(_move_aside(path), ignore_errors=True)

    # ------------------------------------------------------------------------------------------
    # load

    def load_best(self, path: str | Path) -> dict[str, torch.Tensor]:
        """The ``best_tensors`` saved with checkpoint ``path`` (``{}`` if it has none).

        Raises:
            TrainingError: The file exists but cannot be read.

        """
        file = Path(path) / BEST_STATE_FILE
        if not file.is_file():
            return {}
        try:
            return load_file(str(file))
        except Exception as exc:
            raise TrainingError(
                f"Cannot read {file} ({type(exc).__name__}): resume from an older checkpoint."
            ) from exc

    def load(self, path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Restore model, optimizer and RNG states from ``path``.

        Returns:
            ``(payload, method_tensors)`` as given to :meth:`save`.

        Raises:
            TrainingError: ``path`` is not a complete checkpoint, or its frozen-weight fingerprint
                differs from the current model's.

        """
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.is_file():
            raise TrainingError(
                f"{path} is not a complete peftkit checkpoint (no {STATE_FILE}): pass a step-<N> directory "
                f"from <output_dir>/checkpoints, or use --resume to pick the newest complete one."
            )
        try:
            payload = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainingError(f"Cannot read {state_file}: {exc}. Resume from an older checkpoint.") from exc
        trainable_only = payload.get("model_format") == "trainable_only"
        try:
            # Accelerate skips RNG files it cannot read with only an info log; a resume without them
            # silently differs from the uninterrupted run, so they are checked first.
            if _damaged_file(path, "random_states_*.pkl"):
                raise ValueError("the random-number-generator states cannot be read")
            with self._load_hook(trainable_only, payload.get("frozen_fingerprint")):
                self.accelerator.load_state(str(path))
            method_file = path / METHOD_STATE_FILE
            tensors = load_file(str(method_file)) if method_file.is_file() else {}
        except TrainingError:
            raise
        except Exception as exc:  # unpickling refused (weights_only), truncated or foreign files
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            damaged = _damaged_file(path)
            if damaged is None:  # every file reads: the state does not fit this run's model or optimizer
                raise TrainingError(
                    f"Checkpoint {path} does not fit this run ({reason}): resume with the same method and options "
                    "as the original run, or start a new run in another --output-dir."
                ) from exc
            raise TrainingError(
                f"Checkpoint {path} cannot be loaded: {damaged} in it is damaged or holds objects other than "
                f"tensors ({reason}). peftkit never unpickles arbitrary objects. Resume from an older checkpoint "
                "(--resume-from <output_dir>/checkpoints/step-<N>) or start over."
            ) from exc
        return payload, tensors

    @contextlib.contextmanager
    def _load_hook(self, trainable_only: bool, frozen_fingerprint: str | None) -> Iterator[None]:
        """Load trainable-only model files, after checking they fit the model and its frozen weights."""
        if not trainable_only:
            yield
            return

        def load_trainable(models: list[nn.Module], input_dir: str) -> None:
            loads = []
            for i, model in enumerate(models):
                file = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
                stored = {k.removeprefix("module."): v for k, v in load_file(str(file)).items()}
                inner = self.accelerator.unwrap_model(model)
                mismatch = _trainable_mismatch({k: tuple(v.shape) for k, v in stored.items()}, inner)
                if mismatch:
                    raise TrainingError(
                        f"Checkpoint {input_dir} does not match the model's trainable weights ({mismatch}): resume "
                        "with the same method and options (r, target modules, ...) as the original run."
                    )
                loads.append((inner, stored))
            # Checked after the trainable names: other adapter options also rename frozen weights
            # (``value.weight`` becomes ``value.base_layer.weight``), which is not another base.
            if frozen_fingerprint is not None and frozen_fingerprint != self.fingerprint():
                raise TrainingError(
                    f"Checkpoint {input_dir} was trained on different frozen base weights than the model being "
                    "resumed: resume with the same --model-path, method and options as the original run, "
                    "or start a new run in another --output-dir."
                )
            for inner, stored in loads:
                inner.load_state_dict(stored, strict=False)
            models.clear()  # loaded here; Accelerate must not load the partial file strictly

        handle = self.accelerator.register_load_state_pre_hook(load_trainable)
        try:
            yield
        finally:
            handle.remove()
