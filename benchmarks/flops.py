"""Model FLOP utilisation (MFU): FLOPs of a training step / its time / the machine's GEMM peak.

* **Peak**: the best of several square fp32 ``torch.mm`` calls (``2 n^3`` FLOPs each) with all
  of torch's threads: what this machine's BLAS achieves, not a datasheet number.
* **Step FLOPs**: counted with :class:`torch.utils.flop_counter.FlopCounterMode` over one
  forward + backward (matmuls and attention; elementwise ops and the optimizer are not
  counted, as usual for MFU). Autograd computes no weight gradient for frozen weights, so the
  count reflects what a PEFT step really does. It is counted on a batch of one sequence and
  multiplied by the batch size (FLOPs are linear in the batch at fixed length).
* **Analytic cross-check** (:func:`analytic_train_flops`): with ``N`` the weights of the
  matmuls a token passes through (encoder linears + head), ``T`` tokens, ``L`` layers, ``S``
  the sequence length and ``d`` the hidden size, a forward pass costs ``2 N T + 4 L S d T``
  (projections + attention scores and mixing). Full fine-tuning costs 3 forward passes
  (``6 N T + 12 L S d T``: forward, input gradients, weight gradients). A PEFT step needs no
  weight gradient for frozen weights: about ``4 N T + 12 L S d T + 6 N_trainable T``, i.e.
  ~2/3 of full fine-tuning; slightly less in practice since layers below the first adapter
  need no input gradient either.
* 8-bit variants do the same arithmetic in int8/dequantised form; their MFU uses the fp32
  count of the same method ("nominal" FLOPs) and the fp32 peak.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import Batch, Runner, synchronize
from benchmarks.stats import summarize


def gemm_peak(size: int, repeats: int, device: str) -> dict[str, float]:
    """Measured fp32 GEMM throughput (FLOP/s) of a ``size x size`` matmul: best and median."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)  # warm-up: threads, caches, BLAS kernels
    rates = []
    for _ in range(max(1, repeats)):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - start))
    stat = summarize(rates)
    return {
        "size": size,
        "best_flops": stat.max,
        "median_flops": stat.median,
        "threads": torch.get_num_threads(),
    }


def count_train_flops(runner: Runner, one_sequence: Batch, batch_size: int) -> int:
    """FLOPs of one forward + backward of ``runner`` on ``batch_size`` sequences (counted on one)."""
    with FlopCounterMode(display=False) as counter:
        runner.forward_backward(one_sequence)
    return int(counter.get_total_flops()) * batch_size


def matmul_weight_count(model: nn.Module) -> dict[str, int]:
    """Weights of frozen and trainable linear layers a token passes through (embeddings excluded)."""
    frozen = trainable = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or weight is None:
            continue
        count = module.in_features * module.out_features
        if weight.requires_grad:
            trainable += count
        else:
            frozen += count
    return {"frozen": frozen, "trainable": trainable}


def analytic_train_flops(model: nn.Module, batch: int, seq_len: int) -> int:
    """The formula in the module docstring for one training step of ``model`` (excluding the pooler)."""
    config = model.config
    weights = matmul_weight_count(model)
    pooler = getattr(getattr(model, "bert", None), "pooler", None)
    if pooler is not None:  # token classification never runs the pooler
        weights["frozen" if not pooler.dense.weight.requires_grad else "trainable"] -= (
            pooler.dense.in_features * pooler.dense.out_features
        )
    tokens = batch * seq_len
    attention = 12 * config.num_hidden_layers * seq_len * config.hidden_size * tokens
    return int(4 * weights["frozen"] * tokens + 6 * weights["trainable"] * tokens + attention)


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Achieved FLOP/s as a fraction of the peak."""
    return flops_per_step / seconds_per_step / peak_flops
