"""The config dataclasses shared by the training loop and the recipes (validated at construction)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from peftkit.errors import ConfigError, did_you_mean
from peftkit.registry import DEFAULT_METHOD


@dataclasses.dataclass
class TrainConfig:
    """Options of the shared training loop (:func:`peftkit.training.train`).

    Attributes:
        output_dir: Run directory: checkpoints go to ``<output_dir>/checkpoints/step-<N>``.
        seed: Seed of Python/NumPy/torch and of the data shuffling order.
        epochs: Passes over the training set.
        max_steps: Stop after this many optimizer steps (``None``: run all epochs).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        lr_schedule: ``"linear"`` (warm-up then linear decay to 0) or ``"constant"`` (after warm-up).
        warmup_ratio: Fraction of the optimizer steps used for linear warm-up.
        warmup_steps: Warm-up steps; overrides ``warmup_ratio`` when set.
        batch_size: Per-process training batch size.
        eval_batch_size: Per-process evaluation batch size (``None``: ``batch_size``).
        grad_accum: Micro-batches accumulated per optimizer step.
        max_grad_norm: Gradient clipping norm; 0 disables clipping (the norm is still checked).
        log_every: Log loss, learning rate and tokens/s every N optimizer steps.
        eval_every: Evaluate every N optimizer steps (0: at the end of every epoch only).
        checkpoint_every: Save a checkpoint every N optimizer steps (0: no periodic checkpoints).
        keep_checkpoints: How many of the newest checkpoints to keep.
        checkpoint_trainable_only: Store only trainable weights (plus optimizer etc.) in checkpoints.
        resume: Continue from the newest complete checkpoint in ``output_dir``.
        resume_from: Continue from this checkpoint directory.
        explode_factor: Stop when the loss exceeds this multiple of the first step's loss (0: off).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``.
        cpu: Force training on CPU even if an accelerator is present.

    """

    output_dir: str = "runs/peftkit"
    seed: int = 42
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 5e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    checkpoint_trainable_only: bool = True
    resume: bool = False
    resume_from: str | None = None
    explode_factor: float = 1000.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError` naming the field and a valid value."""
        _at_least(self, "epochs", 1, "3")
        _at_least(self, "batch_size", 1, "16")
        _at_least(self, "grad_accum", 1, "1")
        _at_least(self, "log_every", 1, "10")
        _at_least(self, "keep_checkpoints", 1, "2")
        for name, example in (("eval_every", "500"), ("checkpoint_every", "500"), ("weight_decay", "0.01")):
            _at_least(self, name, 0, example)
        for name, example in (("max_grad_norm", "1.0"), ("explode_factor", "1000")):
            _at_least(self, name, 0, example)
        for name, example in (("max_steps", "1000"), ("eval_batch_size", "32")):
            if getattr(self, name) is not None:
                _at_least(self, name, 1, example)
        if self.warmup_steps is not None:
            _at_least(self, "warmup_steps", 0, "100")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr={self.lr} must be > 0 and finite: pass e.g. --lr 5e-4.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed} must lie in [0, 2**32): pass e.g. --seed 42.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"warmup_ratio={self.warmup_ratio} must lie in [0, 1): pass e.g. --warmup-ratio 0.06."
            )
        _check_output_dir(self.output_dir)


@dataclasses.dataclass
class RecipeConfig(TrainConfig):
    """Options shared by the fine-tuning recipes: the training loop's plus model and data options.

    Attributes:
        model_path: Local directory of the base model (``None``: the recipe's default).
        method: Adapter method registered in peftkit (see ``peftkit methods``; plugins included).
        r: Rank: the method's ``r`` option, or the option its aliases map ``r`` to (AdaLoRA:
            ``target_r``); invalid for methods without a rank.
        alpha: Scaling numerator, for methods that have one (``None``: the method's default).
        dropout: Adapter dropout (``None``: the method's default).
        target_modules: Module-name suffixes to adapt (``None``: the architecture's defaults).
        method_options: Further method options passed to :func:`peftkit.wrap`.
        load_in_8bit: Load the base model's linear layers in 8 bits (bitsandbytes LLM.int8()).
        load_in_4bit: Load them in 4 bits (NF4, QLoRA's format) instead.
        base_dtype: Precision of the base's unquantised weights and of the activations (the compute
            dtype): ``float32``, ``bfloat16`` (halves what is not quantised: the memory-saving setting)
            or ``float16``; ``None``: float32, or bfloat16 for 4-bit bases.
        gradient_checkpointing: Recompute activations in the backward pass instead of keeping them
            (less memory, about a third more compute).
        max_length: Maximum tokens per training example.
        max_train_samples: Use only the first N training examples.
        max_eval_samples: Use only the first N evaluation examples.

    """

    model_path: str | None = None
    method: str = DEFAULT_METHOD
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] | None = None
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    base_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    gradient_checkpointing: bool = False
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    #: Values of ``method`` a recipe handles itself besides the registered methods (e.g. ``"full"``).
    extra_methods: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        """Check the training options, the method name and the sample limits."""
        super().validate()
        _at_least(self, "max_length", 1, "128")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _at_least(self, name, 1, "1000")
        if self.r is not None:
            _at_least(self, "r", 1, "8")
        if self.load_in_8bit and self.load_in_4bit:
            raise ConfigError(
                "load_in_8bit and load_in_4bit are both set: pass one of --load-in-8bit / --load-in-4bit."
            )
        import peftkit

        known = peftkit.methods()
        if self.method not in known and self.method not in self.extra_methods:
            extra = "".join(f"; or {name!r}: {meaning}" for name, meaning in self.extra_methods.items())
            raise ConfigError(
                f"method={self.method!r} is not a registered peftkit method; known: {', '.join(known)}{extra}."
                f"{did_you_mean(self.method, [*known, *self.extra_methods])}"
            )

    def wrap_options(self) -> dict[str, Any]:
        """Keyword options for :func:`peftkit.wrap` built from ``r``/``alpha``/``dropout``/``method_options``.

        A name the method's options lack maps through the method's aliases (AdaLoRA declares
        ``r`` -> ``target_r``).

        Raises:
            ConfigError: A generic option does not exist for the chosen method.

        """
        import peftkit

        config_cls = peftkit.get_method(self.method).config_cls
        fields = {f.name for f in dataclasses.fields(config_cls)}
        options: dict[str, Any] = {}
        for name, value in (("r", self.r), ("alpha", self.alpha), ("dropout", self.dropout)):
            if value is None:
                continue
            key = name if name in fields else config_cls.aliases.get(name)
            if key is None:
                raise ConfigError(
                    f"{name}={value} has no meaning for method {self.method!r} (its options: "
                    f"{', '.join(sorted(fields))}): remove it or set the option under method_options."
                )
            options[key] = value
        if self.target_modules is not None:
            options["target_modules"] = list(self.target_modules)
        options.update(self.method_options)
        return options


def _check_output_dir(output_dir: str) -> None:
    """Refuse an ``output_dir`` that is a file, or lies under one, before anything is loaded."""
    path = Path(output_dir).expanduser()
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if existing.is_dir():
            return
        if existing == path:
            raise ConfigError(
                f"output_dir={output_dir!r} is an existing file, not a directory: pass a directory path "
                "(it is created if missing), e.g. --output-dir runs/my-run."
            )
        raise ConfigError(
            f"output_dir={output_dir!r} cannot be created: {str(existing)!r} is a file. Pass a directory path "
            "elsewhere, e.g. --output-dir runs/my-run."
        )


def _at_least(cfg: object, name: str, minimum: float, example: str) -> None:
    value = getattr(cfg, name)
    if not value >= minimum or value == math.inf:  # NaN fails every comparison; inf is no setting
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{name}={value} must be >= {minimum} and finite: pass e.g. {flag} {example}.")
