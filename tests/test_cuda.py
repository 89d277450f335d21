"""On a CUDA GPU: every built-in method x {fp32, bf16, 8-bit, 4-bit} x {bert, llama} trains, saves,
reloads onto its own and onto another precision, and merges into the full-precision base (where
mergeable); quantised bases run bf16 activations and log the CUDA path once, without per-matmul spam.

Marked ``cuda`` and skipped without a GPU (``bash .gpu/run.sh`` runs them in a step of their own).
The matrix cell is :func:`tests.quantized_support.train_save_move_merge`, the same function the CPU
tests' numbers were checked with. Two families (an encoder with a trained head, a decoder with its
frozen LM head) keep the cuda step within its two minutes; GPT-2's Conv1D layers are covered on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import peftkit
from tests.quantized_support import builtin_methods, train_save_move_merge
from tests.tiny_models import make_batch, model_device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "8bit", "4bit"])
@pytest.mark.parametrize("method", builtin_methods())
def test_every_method_and_precision_trains_saves_moves_and_merges_on_cuda(
    tiny_model_dir, tmp_path: Path, family: str, precision: str, method: str
) -> None:
    pytest.importorskip("bitsandbytes")
    train_save_move_merge(tiny_model_dir(family), family, precision, method, "cuda:0", tmp_path / "adapter")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_cuda_bases_run_bf16_activations_and_say_so_once(tiny_model_dir, caplog, bits: int) -> None:
    """No fp32 activations on a bf16 base, one line naming the CUDA kernels, no per-matmul warnings."""
    pytest.importorskip("bitsandbytes")
    from peftkit.notices import BNB_MATMUL_LOGGER
    from peftkit.quantization import describe_int8_paths

    options = {"load_in_8bit": True, "dtype": torch.bfloat16} if bits == 8 else {"load_in_4bit": True}
    for f in logging.getLogger(BNB_MATMUL_LOGGER).filters:
        getattr(f, "seen", set()).clear()
    with caplog.at_level("INFO"):
        model = peftkit.load_base(tiny_model_dir("llama"), task="causal-lm", **options)
        model = peftkit.wrap(model, "lora")
        assert model_device(model).type == "cuda"
        seen = []
        layer = model.model.layers[0].mlp.down_proj  # quantised, not adapted (LoRA: q_proj, v_proj)
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
        batch = make_batch("llama", device=model_device(model))
        model.train()
        for _ in range(3):
            model(**batch).loss.backward()
    assert set(seen) == {torch.bfloat16}
    runs = [r.getMessage() for r in caplog.records if "linear layers run" in r.getMessage()]
    assert len(runs) == 1 and "bitsandbytes CUDA kernels" in runs[0], runs
    casts = [r for r in caplog.records if "inputs will be cast" in r.getMessage()]
    assert len(casts) <= 1, f"{len(casts)} MatMul8bitLt cast warnings"
    if bits == 8:
        assert describe_int8_paths(model)["fast_int8"] == 0  # a CPU path: never on CUDA


def test_adalora_regulariser_is_built_on_the_parameters_device(tiny_model_dir) -> None:
    """The orthogonality penalty's identity used to be created on the CPU: AdaLoRA could not train on CUDA."""
    model = peftkit.load_base(tiny_model_dir("bert"), num_labels=5, device_map={"": "cuda:0"})
    model = peftkit.wrap(model, "adalora", total_step=10, orth_reg_weight=0.5)
    model.train()
    batch = make_batch("bert", device="cuda:0")
    with_penalty = model(**batch).loss
    without = peftkit.wrap(
        peftkit.load_base(tiny_model_dir("bert"), num_labels=5, device_map={"": "cuda:0"}),
        "adalora",
        total_step=10,
        orth_reg_weight=0.0,
    ).train()(**batch)
    assert with_penalty.device.type == "cuda" and with_penalty.item() > without.loss.item()
    with_penalty.backward()
