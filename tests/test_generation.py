"""Text generation with adapters: ``model.generate`` on wrapped decoders (GPT-2 LM head, Llama).

The adapters must act on every decoding step, with and without the key/value cache, switch off
with ``adapters_disabled`` and survive a save / load round trip token for token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedModel

import peftkit
from peftkit import registry
from tests.test_io_support import METHOD_OPTIONS
from tests.tiny_models import VOCAB, make_config, make_model

DECODERS = ("gpt2", "llama")
#: Every built-in method (prefix tuning included: its prefix must follow generation's cache and positions).
METHODS = [ep.name for ep in registry.builtin_entry_points()]


def options(method: str) -> dict:
    return {**peftkit.get_method(method).example_options, **METHOD_OPTIONS.get(method, {})}


def make_lm(family: str, seed: int = 0) -> PreTrainedModel:
    """A tiny causal LM: GPT-2 with its tied LM head, or Llama."""
    if family == "llama":
        return make_model("llama", seed)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(make_config("gpt2")).eval()


def lm_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (4, 12), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}


def trained_lm(family: str, method: str) -> PreTrainedModel:
    model = peftkit.wrap(make_lm(family), method, **options(method)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    batch = lm_batch()
    for step in range(1, 7):
        model(**batch).loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()
    return model.eval()


def generate(model: PreTrainedModel, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of two fixed prompts: (token ids, per-step scores)."""
    prompt = lm_batch(seed=5)["input_ids"][:2, :6]
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=8,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", DECODERS)
def test_generation_uses_the_adapter_at_every_step_with_or_without_cache(
    family: str, method: str, tmp_path: Path
) -> None:
    base_tokens, base_scores = generate(make_lm(family))
    model = trained_lm(family, method)

    tokens, scores = generate(model)
    assert not torch.allclose(scores[0], base_scores[0], atol=1e-3), "the adapter did not act on generation"
    uncached_tokens, uncached_scores = generate(model, use_cache=False)
    assert torch.equal(tokens, uncached_tokens)
    torch.testing.assert_close(scores, uncached_scores, atol=1e-4, rtol=1e-4)

    with peftkit.adapters_disabled(model):
        off_tokens, off_scores = generate(model)
    assert torch.equal(off_tokens, base_tokens)
    torch.testing.assert_close(off_scores, base_scores)

    peftkit.save_adapter(model, tmp_path / "adapter")
    reloaded_tokens, reloaded_scores = generate(peftkit.load_adapter(make_lm(family), tmp_path / "adapter"))
    assert torch.equal(reloaded_tokens, tokens)
    torch.testing.assert_close(reloaded_scores, scores)


def test_lm_head_tied_to_the_embeddings_stays_frozen() -> None:
    model = trained_lm("gpt2", "lora")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.lm_head.weight.requires_grad
    torch.testing.assert_close(model.lm_head.weight, make_lm("gpt2").lm_head.weight)


@pytest.mark.parametrize("method", METHODS)
def test_generation_on_an_8bit_base_runs_the_fast_int8_path(method: str, tiny_model_dir) -> None:
    pytest.importorskip("bitsandbytes")
    from peftkit.quantization import describe_int8_paths, load_base

    directory = tiny_model_dir("llama")
    model = peftkit.wrap(
        load_base(directory, task="causal-lm", load_in_8bit=True, device_map="cpu"),  # the CPU path
        method,
        **options(method),
    )
    fp32 = peftkit.wrap(make_model("llama"), method, **options(method))
    tokens, scores = generate(model.eval())
    uncached_tokens, uncached_scores = generate(model, use_cache=False)
    paths = describe_int8_paths(model)
    assert paths["fast_int8"] == sum(paths.values()) > 0, paths  # CPU inference: every 8-bit layer
    assert torch.equal(tokens, uncached_tokens)
    torch.testing.assert_close(scores, uncached_scores, atol=1e-4, rtol=1e-4)
    _, fp32_scores = generate(fp32)  # 8-bit weights and 7/8-bit activations: close, not equal
    torch.testing.assert_close(scores[0], fp32_scores[0], atol=0.05, rtol=0.05)
