"""Options of the ``"adalora"`` method."""

from __future__ import annotations

import dataclasses

from peftkit.errors import InvalidOptionError
from peftkit.methods.base import MethodConfig, check_dropout, check_positive, check_scale, require


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
        check_scale("alpha", self.alpha / self.init_r, "alpha / init_r")
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
