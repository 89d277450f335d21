"""peftkit benchmarks: speed, memory and file-size measurements of the fine-tuning methods.

Run ``python -m benchmarks`` (or ``python benchmarks/run.py``); ``--quick`` for a run of a few
minutes, ``--dry`` for a seconds-long smoke run on a tiny random BERT. Results land in
``benchmarks/results/``: ``<machine>-<date>.json``, PNG plots and ``latest.md``.

Modules: :mod:`~benchmarks.settings` (what one run measures), :mod:`~benchmarks.machine`,
:mod:`~benchmarks.stats`, :mod:`~benchmarks.variants` (fp32 / 8-bit x methods),
:mod:`~benchmarks.measure` (interleaved timing), :mod:`~benchmarks.memory` (peak RSS in a fresh
process), :mod:`~benchmarks.flops` (GEMM peak, model FLOPs, MFU), :mod:`~benchmarks.goals`,
:mod:`~benchmarks.report` (Markdown + plots), :mod:`~benchmarks.profile_step` (torch.profiler),
:mod:`~benchmarks.openmp_wait` (OpenMP waiting on idle and shared cores).
"""

from peftkit.threads import limit_openmp_spinning

# Before anything imports torch: OpenMP threads spin briefly at barriers, then sleep, so timings
# taken while other jobs share the cores degrade with the load, not >10x (see peftkit/threads.py).
limit_openmp_spinning()
