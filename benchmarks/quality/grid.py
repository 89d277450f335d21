"""The grid: tasks, methods (as recipe options), bases and seeds, and the cells they make.

A method is named in the grid by a string: ``lora``, ``adapter-pfeiffer``, ``lora@int8``. The part
before ``@`` selects recipe options (:func:`method_args`); a name this module does not know but
peftkit has registered (a new method, a plugin) runs as ``--method NAME`` with the task's adapter
settings. The part after ``@`` selects the base model (:data:`BASES`).

Hyper-parameters: each recipe's defaults (``recipes/configs``), which were tuned for LoRA on NER
and the Houlsby adapter on sentiment; full fine-tuning at the usual lower learning rates; DoRA and
AdaLoRA with LoRA's rank and targets (AdaLoRA's final budget equals LoRA's r); DoRA at LoRA's
learning rate, AdaLoRA at the CLM recipe's 5e-3.

Size: by default every cell trains at the task's *budget* size (:attr:`Task.budget`: one epoch
on the first 5,000 training sentences), so that the 40 cells take about 1.4 CPU-hours
(measured 2026-12-05); ``--recipe-size`` runs each recipe at its own default size (all its epochs over the whole
training set: an estimated 10-15 CPU-hours for the grid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from peftkit.errors import ConfigError

DEFAULT_METHODS = (
    "full", "lora", "dora", "adalora", "ia3", "adapter-houlsby", "adapter-pfeiffer", "parallel",
    "lora@int8", "lora@int4",
)  # fmt: skip
DEFAULT_TASKS = ("ner", "sentiment")
DEFAULT_SEEDS = (42, 7)
#: Base-model variants: recipe options that load the base.
BASES: dict[str, list[str]] = {"fp32": [], "int8": ["--load-in-8bit"], "int4": ["--load-in-4bit"]}

# The sentiment recipe trains the [CLS] pooler with the head (see recipes/configs/sentiment_adapter.yaml).
_SENTIMENT_HEADS = "head_modules: [classifier, bert.pooler]"
_LORA_TARGETS = ["--target-modules", "query", "key", "value", "dense"]


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the grid.

    Attributes:
        name: Short name used in cell keys.
        recipe: Script under ``recipes/``.
        metric: Key of ``metrics.json``'s ``test``/``valid`` entries used as the score.
        label: Human-readable name for tables.
        adapter_lr: Learning rate of adapter methods the recipe's config was not tuned for.
        full_lr: Learning rate of full fine-tuning.
        steps: Optimizer steps of a run at the recipe's default size.
        budget: Recipe options of a budget-size run (the grid's default size).
        budget_steps: Optimizer steps of a budget-size run.

    """

    name: str
    recipe: str
    metric: str
    label: str
    adapter_lr: float
    full_lr: float
    steps: int
    budget: tuple[str, ...]
    budget_steps: int

    def schedule_steps(self, budget: bool) -> int:
        """Optimizer steps of a run at the budget size or the recipe's size (AdaLoRA's schedule)."""
        return self.budget_steps if budget else self.steps


TASKS: dict[str, Task] = {
    "ner": Task(
        "ner",
        "ner_lora.py",
        "f1",
        "CoNLL-2003 NER, test entity F1",
        2e-3,
        1e-4,
        3512,
        budget=("--max-train-samples", "5000", "--epochs", "1", "--batch-size", "32"),
        budget_steps=157,
    ),
    "sentiment": Task(
        "sentiment",
        "sentiment_adapter.py",
        "accuracy",
        "Rotten Tomatoes, test accuracy",
        2e-3,
        5e-5,
        957,
        budget=("--max-train-samples", "5000", "--epochs", "1"),
        budget_steps=157,
    ),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One recipe run: ``method`` (grid name, without ``@base``) on ``task`` from ``base`` with ``seed``."""

    task: str
    method: str
    base: str
    seed: int

    @property
    def key(self) -> str:
        """Key in the results file, e.g. ``ner/lora/fp32/seed42``."""
        return f"{self.task}/{self.method}/{self.base}/seed{self.seed}"

    @property
    def variant(self) -> str:
        """The method as named in the grid: ``lora`` or ``lora@int8``."""
        return self.method if self.base == "fp32" else f"{self.method}@{self.base}"


def parse_variant(name: str) -> tuple[str, str]:
    """``"lora@int8"`` -> ``("lora", "int8")``; ``"lora"`` -> ``("lora", "fp32")``.

    Raises:
        ConfigError: Unknown base.

    """
    method, _, base = name.partition("@")
    base = base or "fp32"
    if base not in BASES:
        raise ConfigError(
            f"Unknown base {base!r} in {name!r}: use one of {', '.join(BASES)} (e.g. lora@int8)."
        )
    return method, base


def build_cells(methods: Sequence[str], tasks: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """All cells, task by task, seed by seed, in the order of ``methods``.

    Raises:
        ConfigError: An unknown task, base or method (the message lists the known ones).

    """
    for task in tasks:
        if task not in TASKS:
            raise ConfigError(f"Unknown task {task!r}: choose from {', '.join(TASKS)}.")
    parsed = [parse_variant(name) for name in methods]
    for method, _ in parsed:
        method_args(method, TASKS[tasks[0]] if tasks else TASKS["ner"])  # validates the name
    return [Cell(task, method, base, seed) for task in tasks for seed in seeds for method, base in parsed]


def method_args(method: str, task: Task, budget: bool = True) -> list[str]:
    """Recipe options that select and configure ``method`` for ``task``.

    ``budget`` says whether the run has the task's budget size (it sets AdaLoRA's schedule).

    Raises:
        ConfigError: ``method`` is neither a grid method nor a registered peftkit method.

    """
    sentiment = task.name == "sentiment"
    heads = [_SENTIMENT_HEADS] if sentiment else []
    if method == "full":
        return ["--method", "full", "--lr", str(task.full_lr)]
    if method in ("lora", "dora"):
        if method == "lora" and not sentiment:
            return ["--method", "lora"]  # the NER recipe's defaults are LoRA's
        return ["--method", method, "--r", "16", "--alpha", "32", *_LORA_TARGETS, "--lr", "1e-3",
                "--method-options", "{" + ", ".join(heads) + "}"]  # fmt: skip
    if method == "adalora":
        # AdaLoRA paper: start at 1.5x the final rank, which equals LoRA's r (the same final budget);
        # pruning from 10% to 80% of the run. Learning rate 5e-3, as the CLM recipe's: its singular
        # values start at zero, and at LoRA's 1e-3 it scored 48.6 / 72.4 here (2026-12-04).
        steps = task.schedule_steps(budget)
        schedule = f"init_r: 24, tinit: {steps // 10}, tfinal: {steps // 5}, delta_t: 10"
        options = "{" + ", ".join([schedule, *heads]) + "}"
        return ["--method", "adalora", "--r", "16", "--alpha", "32", *_LORA_TARGETS,
                "--lr", "5e-3", "--method-options", options]  # fmt: skip
    if method.startswith("adapter-"):
        placement = method.removeprefix("adapter-")
        if placement not in ("houlsby", "pfeiffer"):
            raise ConfigError(
                f"Unknown adapter placement in {method!r}: use adapter-houlsby or adapter-pfeiffer."
            )
        options = "{" + ", ".join([f"placement: {placement}", "reduction_factor: 16", *heads]) + "}"
        return ["--method", "adapter", "--lr", str(task.adapter_lr), "--method-options", options]
    import peftkit

    if method not in peftkit.methods():
        known = ["full", "lora", "dora", "adalora", "adapter-houlsby", "adapter-pfeiffer"]
        extra = [m for m in peftkit.methods() if m not in known]
        raise ConfigError(f"Unknown method {method!r}: choose from {', '.join(known + extra)}.")
    options = "{" + ", ".join(heads) + "}"
    return ["--method", method, "--lr", str(task.adapter_lr), "--method-options", options]
