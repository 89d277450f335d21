"""``merge_adapter``: load a base, load an adapter onto it, fold it in, save a plain transformers model.

::

    base dir ─from_pretrained (class from the adapter's metadata, heads sized to its labels)─► model
    adapter dir ─load_adapter (fingerprint check; strict=False with --force)─► model + adapter
    ─► logits on a probe batch ─► fold_adapter (peft merge + unwrap; heads replaced) ─► logits again
    ─► cast dtype ─► save_pretrained + tokenizer files + peftkit_merge.json into a temp dir ─► rename
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from peftkit.errors import (
    AlreadyWrappedError,
    BaseModelMismatchError,
    InvalidOptionError,
    MergeError,
    QuantizationError,
)
from peftkit.io import AdapterFiles, describe_fingerprint, load_adapter, read_adapter_dir
from peftkit.io.files import MERGED_ADAPTERS_ATTR, follow_umask, remove_stale_temp_dirs, temp_dir_beside
from peftkit.io.paths import WEIGHTS_FILE
from peftkit.merge.fold import NOT_MERGEABLE_HINT, check_not_quantized, fold_adapter
from peftkit.merge.options import DTYPE_NAMES
from peftkit.model_path import model_path_problem
from peftkit.models import TASKS, is_encoder_decoder, task_of_class, task_of_peft_type
from peftkit.registry import get_method
from peftkit.state import PEFT_KEY_PREFIX, get_state, unwrap_model

logger = logging.getLogger(__name__)

#: ``dtype`` names -> torch dtypes.
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
#: Files copied from the base directory when present (tokenizers of the common model families).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
REPORT_FILE = "peftkit_merge.json"


def merge_adapter(
    base_path_or_model: str | os.PathLike[str] | nn.Module,
    adapter_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    strict: bool = True,
    task: str | None = None,
    head_only: bool | None = None,
    check: bool = True,
    progress: bool = False,
) -> nn.Module:
    """Fold a LoRA / AdaLoRA adapter (and its trained heads) into the base model.

    Args:
        base_path_or_model: Directory of the full-precision base, or a plain (unwrapped) base model,
            which is modified in place.
        adapter_dir: Adapter directory written by :func:`peftkit.save_adapter`.
        out_dir: If given, save the merged model there (safetensors, plus the base's tokenizer
            files and ``peftkit_merge.json``); written into a temp dir and renamed, so a failure
            leaves nothing behind. Must not exist yet.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` for the merged weights.
        strict: Refuse a base whose fingerprint differs from the adapter's (``False`` = warn).
        task: ``"token-classification"``, ``"sequence-classification"``, ``"causal-lm"`` or
            ``"question-answering"``; default: the architecture recorded in the adapter's fingerprint
            (for adapters written by peft: its ``task_type``, else the base's ``architectures``).
        head_only: Fold only the trained heads and drop the adapter layers (the result's outputs
            then differ from the adapter model's). ``None`` (default): only for adapters that cannot
            be folded (bottleneck), with a warning saying so; ``False`` refuses those instead.
        check: Compare the logits of the adapter model and of the merged model on a random probe
            batch and record the largest difference (logged, and written to ``peftkit_merge.json``).
        progress: Show a progress bar while folding.

    Returns:
        The merged plain transformers model (``model.peftkit_merge_report`` holds the check).

    Raises:
        MergeError: The method cannot be merged and ``head_only=False`` or the adapter has no
            trained head to save, or NaNs.
        QuantizationError: The base holds 8-bit weights.
        BaseModelMismatchError: The base is not the adapter's (``strict``).
        InvalidOptionError: Bad ``dtype`` / ``task``, or ``out_dir`` exists.

    Example:
        >>> merged = peftkit.merge_adapter("bert-base", "runs/ner-lora", "runs/ner-merged")  # doctest: +SKIP
        >>> AutoModelForTokenClassification.from_pretrained("runs/ner-merged")  # doctest: +SKIP

    """
    torch_dtype = _dtype(dtype)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidOptionError(
            f"Output directory {str(out)!r} already exists; remove it or pick another --out."
        )
    blocking = next((parent for parent in (out.parents if out else ()) if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InvalidOptionError(
            f"Cannot write the merged model to {str(out)!r}: {str(blocking)!r} is a file, not a directory. "
            "Pick another --out."
        )
    files = read_adapter_dir(adapter_dir)
    spec = get_method(files.method, plugin_hint=files.plugin)
    if not spec.mergeable:
        reason = (
            f"The {files.method!r} adapter in {str(files.path)!r} cannot be merged into the base weights: it is not "
            f"a linear update of existing weights ({spec.description or files.method})."
        )
        if head_only is False or not files.heads:
            why = "" if files.heads else " It has no trained task head to save either."
            raise MergeError(f"{reason}{why} {NOT_MERGEABLE_HINT}")
        if head_only is None:
            warnings.warn(
                f"{reason} Saving the base model with the trained task head ({', '.join(files.heads)}) only, "
                f"WITHOUT the adapter layers: load the adapter onto it with peftkit.load_adapter(model, "
                f"{str(files.path)!r}) to reproduce the adapter model, or mix several bottleneck adapters with "
                "`peftkit combine`.",
                UserWarning,
                stacklevel=2,
            )
        head_only = True
    head_only = bool(head_only)
    if isinstance(base_path_or_model, nn.Module):
        model, base_dir = unwrap_model(base_path_or_model), _source_dir(base_path_or_model)
        if get_state(model) is not None and get_state(model).adapters:
            raise AlreadyWrappedError(
                "merge_adapter needs a plain base model; this one already carries adapters."
            )
    else:
        base_dir = Path(base_path_or_model)
        model = load_base_for(base_dir, files, task, strict)
    check_not_quantized(model)
    model.eval()
    load_adapter(model, files.path, "default", strict=strict)
    probe = _probe_inputs(model) if check else None
    before = _logits(model, probe)
    fold_adapter(model, "default", head_only=head_only, progress=progress)
    from peftkit import __version__

    report: dict[str, Any] = {
        "adapter": str(files.path),
        "base": str(base_dir) if base_dir is not None else None,
        "method": files.method,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "head_only": head_only,
        "peftkit_version": __version__,
    }
    report["max_abs_logit_diff_fp32"] = _max_diff(before, _logits(model, probe))
    model.to(torch_dtype)
    if torch_dtype != torch.float32:
        report[f"max_abs_logit_diff_{report['dtype']}"] = _max_diff(before, _logits(model, probe))
    model.peftkit_merge_report = report
    if not head_only:  # a head-only merge still needs the adapter loaded on top
        _record_merged_adapter(model, files)
    logger.info("Merged %s adapter %s: %s", files.method, files.path, report)
    if out is not None:
        save_merged(model, out, base_dir, report)
    return model


def _record_merged_adapter(model: nn.Module, files: AdapterFiles) -> None:
    """Note the adapter's checksum in ``config.json`` so that it is never applied a second time.

    The merged model has the same fingerprint as its base (linear weights are not hashed), so
    :func:`peftkit.load_adapter` reads this list to refuse loading the same adapter on top.
    """
    checksum = ((files.meta or {}).get("files") or {}).get(WEIGHTS_FILE, {}).get("sha256")
    config = getattr(model, "config", None)
    if checksum and config is not None:
        merged = list(getattr(config, MERGED_ADAPTERS_ATTR, None) or [])
        setattr(config, MERGED_ADAPTERS_ATTR, [*merged, checksum])


def load_base_for(
    base_dir: Path, files: AdapterFiles, task: str | None = None, strict: bool = True
) -> nn.Module:
    """Load the full-precision base with the head class and label count the adapter was trained with.

    Raises:
        QuantizationError: The directory holds a pre-quantised (bitsandbytes) checkpoint.
        BaseModelMismatchError: The base's ``model_type`` differs from the adapter's (``strict``).
        InvalidOptionError: Unknown ``task`` or an architecture this transformers lacks.

    """
    problem = model_path_problem(base_dir, name="Base model directory")  # missing, a file, an adapter, ...
    if problem is not None:
        raise InvalidOptionError(
            f"{problem} peftkit merge needs the full-precision base the adapter was trained on."
        )
    config_path = base_dir / "config.json"
    if (
        not config_path.is_file()
    ):  # a Hub id model_path_problem leaves to transformers: merge needs a directory
        raise InvalidOptionError(
            f"Base model directory {str(base_dir)!r} has no config.json: pass the directory saved with "
            "save_pretrained (the full-precision base the adapter was trained on)."
        )
    base_config = json.loads(config_path.read_text(encoding="utf-8"))
    if base_config.get("quantization_config"):
        raise QuantizationError(
            f"{str(base_dir)!r} is a quantised checkpoint ({base_config['quantization_config'].get('quant_method')}): "
            "merging into 8-bit or 4-bit weights would round the update away. Merge into the original fp32/bf16 base "
            "and quantise the merged model at load time (peftkit.load_base(merged, load_in_8bit=True))."
        )
    model_cls = _model_class(files, task, base_config, strict)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    heads = files.meta.get("heads") or {}
    num_labels = heads.get("num_labels") or _head_rows(files)
    if files.heads and num_labels:
        kwargs.update(num_labels=int(num_labels), ignore_mismatched_sizes=True)
        if heads.get("id2label"):
            kwargs["id2label"] = {int(k): v for k, v in heads["id2label"].items()}
            kwargs["label2id"] = {v: int(k) for k, v in heads["id2label"].items()}
    logger.info("Loading base %s as %s", base_dir, model_cls.__name__)
    return model_cls.from_pretrained(str(base_dir), **kwargs)


def save_merged(model: nn.Module, out: Path, base_dir: Path | None, report: dict[str, Any]) -> Path:
    """Save the merged model atomically: temp dir next to ``out``, renamed into place when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        model.save_pretrained(str(tmp))
        if base_dir is not None and base_dir.is_dir():
            for name in TOKENIZER_FILES:
                if (base_dir / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(base_dir / name, tmp / name)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        follow_umask(tmp)  # transformers writes model.safetensors 0600; adapters follow the umask
        if out.exists():
            out.rmdir()  # empty (checked by merge_adapter)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_stale_temp_dirs(out)
    logger.info("Saved merged model to %s", out)
    return out


def _model_class(files: AdapterFiles, task: str | None, base_config: dict[str, Any], strict: bool) -> type:
    fingerprint = files.fingerprint or {}
    architecture = fingerprint.get("architecture")
    base_type = base_config.get("model_type")
    if strict and base_type and fingerprint.get("model_type") and base_type != fingerprint["model_type"]:
        raise BaseModelMismatchError(
            f"The adapter in {str(files.path)!r} was trained on a {fingerprint['model_type']!r} model "
            f"({describe_fingerprint(fingerprint)}), but the base directory holds a {base_type!r} model. Pass the "
            "base it was trained on (--force / strict=False tries anyway)."
        )
    if task is None and architecture and (base_type == fingerprint.get("model_type") or not base_type):
        model_cls = getattr(transformers, architecture, None)
        if model_cls is not None:
            return model_cls
    base_architecture = (base_config.get("architectures") or [None])[0]
    task = (
        task
        or task_of_class(architecture)
        or task_of_peft_type(files.peft_config.get("task_type"))  # adapters written by peft itself
        or task_of_class(base_architecture)
    )
    if task not in TASKS:
        raise InvalidOptionError(
            f"Cannot tell which model class to load the base with (adapter architecture {architecture!r}, "
            f"base architecture {base_architecture!r}, task={task!r}); pass task= one of {', '.join(TASKS)} (--task)."
        )
    return getattr(transformers, TASKS[task].auto_class)


def _head_rows(files: AdapterFiles) -> int | None:
    """Rows of the heads' last 2-D weight (e.g. ``classifier.out_proj.weight``): the number of labels."""
    heads = tuple(f"{PEFT_KEY_PREFIX}{h}." for h in files.heads)
    rows = [
        t.shape[0]
        for k, t in sorted(files.tensors.items())
        if k.startswith(heads) and k.endswith(".weight") and t.dim() == 2
    ]
    return int(rows[-1]) if rows else None


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidOptionError(
        f"dtype={dtype!r} is not supported for merged weights: use one of {', '.join(DTYPES)}."
    )


def _source_dir(model: nn.Module) -> Path | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(name) if name and Path(name).is_dir() else None


def _probe_inputs(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A fixed random batch for the merge check (encoder-decoder models get decoder inputs too)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        return None
    generator = torch.Generator(device="cpu").manual_seed(0)  # the same probe ids on every device
    ids = torch.randint(min(3, vocab - 1), vocab, (2, 16), generator=generator, device="cpu")
    device = next(model.parameters()).device
    probe = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}
    if is_encoder_decoder(model):
        probe["decoder_input_ids"] = ids[:, :8].to(device)
    return probe


@torch.no_grad()
def _logits(model: nn.Module, probe: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
    if probe is None:
        return None
    try:
        outputs = model(**probe)
    except Exception as exc:  # a model needing other inputs: skip the check, never fail the merge
        logger.warning("Skipping the merge check: probe forward failed (%s).", exc)
        return None
    logits = getattr(outputs, "logits", None)
    return logits.float().cpu() if isinstance(logits, torch.Tensor) else None


def _max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a - b).abs().max())
