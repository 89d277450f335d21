"""AdaLoRA, backed by peft's implementation, with its budget schedule run automatically.

::

    x ──► W (frozen) ─────────────────────────────┐
    └──► dropout ─► A (r×in) ─► ⊙E (r) ─► B (out×r) ─► ×(alpha/r) ─► (+) ─► y

AdaLoRA starts every target at ``init_r`` and prunes singular values down to an average of
``target_r`` per target between steps ``tinit`` and ``total_step - tfinal``. peft requires a call
to ``update_and_allocate(step)`` after every optimizer step; peftkit does it for you through
:func:`peftkit.on_optimizer_step` (called by :mod:`peftkit.training` and by
``PeftkitTrainerCallback``). The orthogonality regulariser that peft adds in
``AdaLoraModel.forward`` is added here by a forward hook, because the wrapped model keeps its
own ``forward``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftkit.errors import InvalidOptionError
from peftkit.methods.base import MethodConfig, check_dropout, check_positive, require
from peftkit.methods.lora import uses_conv1d
from peftkit.registry import register_method

if TYPE_CHECKING:
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraModel


@dataclasses.dataclass
class AdaLoraOptions(MethodConfig):
    """Options of the ``"adalora"`` method.

    Attributes:
        total_step: Number of optimizer steps of the whole training run (required).
        target_r: Average rank per target after pruning.
        init_r: Rank every target starts with (``>= target_r``).
        alpha: Scaling numerator.
        dropout: Dropout on the adapter branch, in [0, 1).
        tinit: Warm-up steps before pruning starts.
        tfinal: Steps at the end with the final budget fixed.
        delta_t: Steps between two budget allocations.
        beta1: EMA factor of the sensitivity.
        beta2: EMA factor of the uncertainty.
        orth_reg_weight: Weight of the orthogonality regulariser added to the loss in training.

    """

    total_step: int | None = None
    target_r: int = 8
    init_r: int = 12
    alpha: float = 32.0
    dropout: float = 0.05
    tinit: int = 0
    tfinal: int = 0
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5

    method_name = "adalora"
    aliases = {
        "deltaT": "delta_t",
        "lora_alpha": "alpha",
        "lora_dropout": "dropout",
        "r": "target_r",
        "rank": "target_r",
    }

    def validate(self) -> None:
        """Check ranks, probabilities and that the schedule leaves a budgeting phase."""
        if self.total_step is None:
            raise InvalidOptionError(
                "AdaLoRA needs total_step, the number of optimizer steps of the whole run "
                "(len(train_dataloader) * epochs / grad_accum): pass peftkit.wrap(model, 'adalora', total_step=N)."
            )
        check_positive("total_step", self.total_step, "1000")
        check_positive("target_r", self.target_r)
        check_positive("init_r", self.init_r, "12")
        require(self.target_r <= self.init_r, f"target_r={self.target_r} must be <= init_r={self.init_r}.")
        check_positive("alpha", self.alpha, "32")
        check_dropout("dropout", self.dropout)
        check_positive("delta_t", self.delta_t, "1")
        require(
            self.tinit >= 0 and self.tfinal >= 0, f"tinit={self.tinit} and tfinal={self.tfinal} must be >= 0."
        )
        require(
            self.tinit < self.total_step - self.tfinal,
            f"total_step={self.total_step} leaves no budgeting phase after the warm-up tinit={self.tinit} and "
            f"before the final phase tfinal={self.tfinal}: AdaLoRA needs total_step > tinit + tfinal. Increase "
            "total_step (the number of optimizer steps of the run) or lower tinit/tfinal.",
        )
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"{name}={value} must lie in [0, 1) (e.g. 0.85).")
        require(self.orth_reg_weight >= 0, f"orth_reg_weight={self.orth_reg_weight} must be >= 0 (e.g. 0.5).")


class AdaLoraHandle:
    """Owns peft's AdaLoRA tuner for one adapter: the budget schedule and the regulariser hook."""

    def __init__(
        self, tuner: AdaLoraModel, model: nn.Module, adapter_name: str, orth_reg_weight: float
    ) -> None:
        """Keep the tuner and register the orthogonality-regulariser hook on ``model``."""
        self.tuner = tuner
        self.adapter_name = adapter_name
        self.orth_reg_weight = orth_reg_weight
        self.last_step = 0
        self._hook = model.register_forward_hook(self._add_orthogonal_regulariser)

    @property
    def peft_config(self) -> AdaLoraConfig:
        """The live ``peft.AdaLoraConfig`` (its ``rank_pattern`` is filled in during training)."""
        return self.tuner.peft_config[self.adapter_name]

    def on_optimizer_step(self, global_step: int) -> None:
        """Run peft's ``update_and_allocate``; must see the gradients of the step just taken."""
        if getattr(self.tuner, "trainable_adapter_name", None) != self.adapter_name:
            return
        self.tuner.update_and_allocate(global_step)
        self.last_step = global_step

    def remove(self) -> None:
        """Detach the regulariser hook from the model (after merging or deleting the adapter)."""
        self._hook.remove()

    def _add_orthogonal_regulariser(self, module: nn.Module, args: Any, outputs: Any) -> None:
        loss = getattr(outputs, "loss", None)
        if not module.training or self.orth_reg_weight == 0 or not isinstance(loss, torch.Tensor):
            return
        from peftkit.state import get_state

        state = get_state(module)
        if state is None or state.active != self.adapter_name or not state.enabled:
            return
        penalties = []
        for layer in self.tuner.model.modules():
            lora_a = getattr(layer, "lora_A", None)
            if not isinstance(lora_a, nn.ParameterDict) or self.adapter_name not in lora_a:
                continue
            a, b = lora_a[self.adapter_name], layer.lora_B[self.adapter_name]
            for cov in (a @ a.T, b.T @ b):
                eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                penalties.append(torch.linalg.matrix_norm(cov - eye))
        if penalties:
            outputs.loss = loss + self.orth_reg_weight * torch.stack(penalties).mean()


def to_peft_adalora_config(
    config: AdaLoraOptions, targets: list[str] | str, model: nn.Module
) -> AdaLoraConfig:
    """Translate peftkit options into a ``peft.AdaLoraConfig``."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        total_step=config.total_step,
        target_r=config.target_r,
        init_r=config.init_r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        tinit=config.tinit,
        tfinal=config.tfinal,
        deltaT=config.delta_t,
        beta1=config.beta1,
        beta2=config.beta2,
        orth_reg_weight=config.orth_reg_weight,
        target_modules=targets,
        fan_in_fan_out=uses_conv1d(model, targets),
    )


@register_method(
    "adalora", config_cls=AdaLoraOptions, mergeable=True, peft_type="ADALORA", source="peftkit (peft AdaLoRA)"
)
def build_adalora(
    model: nn.Module, config: AdaLoraOptions, adapter_name: str, targets: list[str] | str
) -> AdaLoraHandle:
    """SVD-parametrised LoRA whose rank budget is reallocated during training."""
    from peft.tuners.adalora import AdaLoraModel

    tuner = AdaLoraModel(model, to_peft_adalora_config(config, targets, model), adapter_name)
    return AdaLoraHandle(tuner, model, adapter_name, config.orth_reg_weight)
