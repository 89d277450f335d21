"""A random Llama of TinyLlama-1.1B's shape (or a tiny one), built cheaply and saved once for ``load_base``.

Random weights are all a memory or speed benchmark needs. The real size is built in bf16 without
transformers' initialisation: on the meta device, then ``to_empty`` and one ``normal_`` pass per
tensor on the CPU (seconds, not minutes), or directly on the GPU (``with torch.device("cuda")``).
The checkpoint is written to a scratch directory (default under ``/tmp``) and reused while its
``config.json`` matches; it is never part of the repository.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: TinyLlama-1.1B's architecture (1,100,048,384 parameters, LM head untied).
TINYLLAMA_1B: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

#: A Llama of about half a billion parameters (471M: TinyLlama's vocabulary and grouped attention,
#: hidden 1280, 22 layers): the step-speed check of :mod:`benchmarks.gpu` (issue #21's 0.5B model).
LLAMA_05B: dict[str, Any] = {
    **TINYLLAMA_1B,
    "hidden_size": 1280,
    "intermediate_size": 3584,
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
}

#: The same architecture, tiny: for ``--dry`` runs and tests.
TINY: dict[str, Any] = {
    **TINYLLAMA_1B,
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}

#: The only file this module writes next to the checkpoint: the shape it was built with.
_MARKER = "peftkit-bench-shape.json"


def default_directory(shape: dict[str, Any]) -> Path:
    """Scratch directory of the checkpoint of ``shape`` (in the temp dir, never in the repository)."""
    name = "tinyllama-1.1b-shape-bf16" if shape == TINYLLAMA_1B else "tiny-llama-bf16"
    return Path(tempfile.gettempdir()) / "peftkit-bench" / name


def llama_config(shape: dict[str, Any]) -> Any:
    """A ``LlamaConfig`` of ``shape`` (bf16, token ids 1 and 2 as BOS / EOS)."""
    from transformers import LlamaConfig

    return LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, dtype="bfloat16")


def build_random_llama(shape: dict[str, Any], device: str = "cpu", seed: int = 0) -> Any:
    """A ``LlamaForCausalLM`` of ``shape`` with random bf16 weights on ``device``.

    On CUDA the model is created (and initialised) directly on the GPU. On the CPU it is created on
    the meta device and every tensor then drawn once from N(0, 0.02) (norm weights 1): transformers'
    own initialisation of 1.1B parameters takes minutes on two cores.
    """
    from transformers import LlamaForCausalLM

    config = llama_config(shape)
    torch.manual_seed(seed)
    if torch.device(device).type != "cpu":
        with torch.device(device):
            return LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    rotary = model.model.rotary_emb  # its buffers were left uninitialised by to_empty
    model.model.rotary_emb = type(rotary)(config=config)
    return model.eval()


def ensure_checkpoint(
    shape: dict[str, Any], directory: str | Path | None = None, device: str = "cpu"
) -> Path:
    """Directory of a saved random Llama of ``shape`` (built on ``device`` unless already there)."""
    target = Path(directory) if directory else default_directory(shape)
    marker = target / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == shape and any(target.glob("*.safetensors")):
        return target
    logger.info(
        "building a random Llama (hidden %d, %d layers) in %s",
        shape["hidden_size"],
        shape["num_hidden_layers"],
        target,
    )
    model = build_random_llama(shape, device)
    target.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(str(target))  # initialised where it was built; written from host memory
    marker.write_text(json.dumps(shape))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target


def parameter_count(shape: dict[str, Any]) -> int:
    """Parameters of a Llama of ``shape`` (without building it)."""
    h, m, v, n = (
        shape["hidden_size"],
        shape["intermediate_size"],
        shape["vocab_size"],
        shape["num_hidden_layers"],
    )
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h
    return n * layer + 2 * v * h + h
