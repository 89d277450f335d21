"""CPU threads on a shared machine: OpenMP worker threads that sleep at barriers instead of spinning.

torch's CPU kernels (its own, oneDNN's and MKL's) run on OpenMP, GNU libgomp in the PyPI wheels.
At the end of every parallel region a worker thread spins, up to ``GOMP_SPINCOUNT`` (300,000 by
default) polls, before it sleeps. On idle cores that saves a wake-up per operator; on cores that
another job also uses it is ruinous: a thread spins through the time slice that its preempted
sibling needs to reach the barrier, at every one of the thousands of operators of a training step.
Measured with the NER recipe's LoRA step on 2 cores shared with other 2-thread jobs (load ~6-8):
6.3 s per step and 3.2 CPU-seconds with 2 spinning threads, 1.4-2.1 s and 0.95 CPU-seconds with
``OMP_WAIT_POLICY=PASSIVE`` (the same work as on 1 thread); see the README's benchmark section.

libgomp reads the policy once, when it is loaded, i.e. at ``import torch``: call
:func:`prefer_passive_openmp` before that. This module imports nothing heavy.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

#: The environment variable read by libgomp (and Intel's OpenMP) at load time.
WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or a spin count; call before ``import torch``.

    Returns:
        Whether the passive policy will be in effect: ``False`` if the user set another policy or
        ``GOMP_SPINCOUNT`` (theirs is kept), or if torch was already imported (too late: the policy
        in effect is whatever the environment said then).

    Example:
        >>> import peftkit.threads
        >>> peftkit.threads.prefer_passive_openmp()  # doctest: +SKIP
        True

    """
    if "torch" in sys.modules:
        logger.debug("torch is already imported: its OpenMP wait policy can no longer change")
        return False
    if "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    return os.environ[WAIT_POLICY].upper() == "PASSIVE"


__all__ = ["WAIT_POLICY", "prefer_passive_openmp"]
