"""Read checkpoint tensors with ``pread`` while a base is quantised on the CPU, so the file never counts as memory.

transformers opens every safetensors shard of a checkpoint with ``mmap`` and keeps all of them
mapped until the last weight is loaded. Quantising on the fly reads every weight once, so by the
end the whole checkpoint (2.2 GB for a 1.1B-parameter model in bf16) sits in the process's
resident set as mapped file pages, on top of the quantised weights being built: the 8-bit load
of such a model peaked at 4.1 GB above the process's baseline on CPU, more than the bf16 model
it replaces. With ``pread`` each tensor is copied into a buffer that is freed once it is quantised
(peak 1.8 GB for the same load, and twice as fast). transformers does exactly this on Windows and
for MPS; :func:`pread_checkpoints` makes it do so for one ``from_pretrained`` call here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()


@contextlib.contextmanager
def pread_checkpoints() -> Iterator[bool]:
    """Within the block, transformers reads safetensors checkpoints with ``pread`` instead of ``mmap``.

    Yields:
        Whether the switch is in effect (``False`` where this transformers / safetensors cannot do it;
        loading then works as usual).

    """
    try:
        import transformers.modeling_utils as modeling_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield False
        return
    original = getattr(modeling_utils, "safe_open", None)
    if original is None or not _supports_backend(original):
        logger.debug("safetensors here has no pread backend: the checkpoint is memory-mapped")
        yield False
        return

    def safe_open_pread(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("backend", "mmap") == "mmap" and kwargs.get("device", "cpu") == "cpu":
            kwargs["backend"] = "pread"
        return original(*args, **kwargs)

    with _LOCK:  # two loads in two threads: one patch at a time, always restored
        modeling_utils.safe_open = safe_open_pread
        try:
            yield True
        finally:
            modeling_utils.safe_open = original


def _supports_backend(safe_open: Any) -> bool:
    """Whether ``safe_open`` takes ``backend="pread"`` (safetensors >= 0.8)."""
    import safetensors

    try:
        major, minor = (int(part) for part in safetensors.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (0, 8)
