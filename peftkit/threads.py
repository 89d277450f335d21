"""CPU threads on a shared machine: OpenMP worker threads that spin briefly at barriers, then sleep.

torch's CPU kernels (its own, oneDNN's and MKL's) run on OpenMP, GNU libgomp in the PyPI wheels.
At the end of every parallel region a worker thread spins, up to ``GOMP_SPINCOUNT`` polls
(300,000 by default), before it sleeps. Two settings are bad for a training step's thousands of
small operators:

* libgomp's default: on cores that another job also uses, a thread spins through the time slice
  its preempted sibling needs to reach the barrier. The NER recipe's LoRA step beside another
  2-thread torch job ran 2.5x-20x slower than alone, at up to 5x the CPU time.
* ``OMP_WAIT_POLICY=PASSIVE`` (no spinning): every barrier costs a futex sleep and wake-up, which
  leaves 2 threads barely faster than 1 on an idle machine (the recipe's step 1.3x slower than with
  spinning threads).

A short spin, :data:`SPIN_COUNT` polls (a hundredth of libgomp's default), keeps the idle speed of spinning
threads and slows down by the fair share (~2x) beside another 2-thread job (``python -m
benchmarks.openmp_wait``; numbers in the README's "Shared cores").

libgomp reads these variables once, when it is loaded, i.e. at ``import torch``: call
:func:`limit_openmp_spinning` before that. This module imports nothing heavy.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

#: libgomp's (and Intel OpenMP's) wait-policy variable: ``ACTIVE`` or ``PASSIVE``.
WAIT_POLICY = "OMP_WAIT_POLICY"
#: libgomp's spin count: polls at a barrier before a thread sleeps.
SPIN_COUNT_VARIABLE = "GOMP_SPINCOUNT"
#: The spin count set by :func:`limit_openmp_spinning` (libgomp's default: 300,000).
SPIN_COUNT = 3000


def limit_openmp_spinning() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user chose a policy or a spin count.

    Call before ``import torch``.

    Returns:
        Whether the short spin will be in effect: ``False`` if the user set ``OMP_WAIT_POLICY`` or
        ``GOMP_SPINCOUNT`` (theirs is kept), or if torch was already imported (too late: the
        setting in effect is whatever the environment said then).

    Example:
        >>> import peftkit.threads
        >>> peftkit.threads.limit_openmp_spinning()  # doctest: +SKIP
        True

    """
    if "torch" in sys.modules:
        logger.debug("torch is already imported: its OpenMP spin count can no longer change")
        return False
    if WAIT_POLICY in os.environ or SPIN_COUNT_VARIABLE in os.environ:
        return False
    os.environ[SPIN_COUNT_VARIABLE] = str(SPIN_COUNT)
    return True


__all__ = ["SPIN_COUNT", "SPIN_COUNT_VARIABLE", "WAIT_POLICY", "limit_openmp_spinning"]
