"""The live side of an AdaLoRA adapter: its budget schedule, regulariser and resumable state."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraModel

_SEP = "::"
#: The rank allocator's exponential moving averages (dicts of tensors keyed by parameter name).
_EMA_FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")
#: Elements of each adapter tensor compared between training forwards to notice an optimizer step.
_WATCHED_ELEMENTS = 64


class AdaLoraHandle:
    """Owns peft's AdaLoRA tuner for one adapter: the budget schedule and the regulariser hook.

    peft requires ``update_and_allocate(step)`` after every optimizer step; peftkit calls
    :meth:`on_optimizer_step` for you. The orthogonality regulariser that peft adds in
    ``AdaLoraModel.forward`` is added here by a forward hook, because the wrapped model keeps its
    own ``forward``. :meth:`training_state` exposes the allocator's sensitivity averages and the
    rank pattern, which live outside ``state_dict()``, so that a resumed run prunes exactly as an
    uninterrupted one.

    Training without those calls (``transformers.Trainer`` without ``PeftkitTrainerCallback``, a
    hand-written loop) would keep every rank at ``init_r`` in silence. Until the first call, each
    training forward compares a few elements of the adapter's weights with the previous training
    forward's: once they have changed (an optimizer step ran) while no call came, a warning says so,
    once, at the second optimizer step.
    """

    def __init__(
        self, tuner: AdaLoraModel, model: nn.Module, adapter_name: str, orth_reg_weight: float
    ) -> None:
        """Keep the tuner and register the orthogonality-regulariser hook on ``model``."""
        self.tuner = tuner
        self.adapter_name = adapter_name
        self.orth_reg_weight = orth_reg_weight
        self.last_step = 0
        self._stepped = False  # on_optimizer_step ran at least once
        self._warned = False
        self._seen: torch.Tensor | None = None
        self._hook = model.register_forward_hook(self._add_orthogonal_regulariser)

    @property
    def peft_config(self) -> AdaLoraConfig:
        """The live ``peft.AdaLoraConfig`` (its ``rank_pattern`` is filled in during training)."""
        return self.tuner.peft_config[self.adapter_name]

    def on_optimizer_step(self, global_step: int) -> None:
        """Run peft's ``update_and_allocate``; must see the gradients of the step just taken."""
        self._stepped, self._seen = True, None
        if getattr(self.tuner, "trainable_adapter_name", None) != self.adapter_name:
            return
        self.tuner.update_and_allocate(global_step)
        self.last_step = global_step

    def training_state(self) -> dict[str, Any]:
        """The allocator's moving averages (tensors), rank pattern and last step, for checkpoints."""
        allocator = self.tuner.rankallocator
        state: dict[str, Any] = {
            f"{name}{_SEP}{key}": tensor
            for name in _EMA_FIELDS
            for key, tensor in getattr(allocator, name).items()
        }
        pattern = self.peft_config.rank_pattern
        state["rank_pattern"] = (
            {
                k: [bool(v) for v in (m.view(-1).tolist() if isinstance(m, torch.Tensor) else m)]
                for k, m in pattern.items()
            }
            if pattern
            else pattern
        )
        state["last_step"] = self.last_step
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` returned (tensors already on the model's device)."""
        allocator = self.tuner.rankallocator
        allocator.reset_ipt()
        for key, value in state.items():
            name, sep, param = key.partition(_SEP)
            if sep and name in _EMA_FIELDS:
                getattr(allocator, name)[param] = value
        self.peft_config.rank_pattern = state.get("rank_pattern")
        if state.get("last_step") is not None:
            self.last_step = int(state["last_step"])

    def _notice_missing_budget_steps(self) -> None:
        """Warn once if the weights changed since the last training forward with no budget step between."""
        with torch.no_grad():
            seen = torch.cat(
                [p.detach().reshape(-1)[:_WATCHED_ELEMENTS].float() for p in self._adapter_weights()]
            )
        before, self._seen = self._seen, seen
        if before is None or before.shape != seen.shape or torch.equal(before, seen):
            return
        self._warned = True
        warnings.warn(
            f"AdaLoRA adapter {self.adapter_name!r} took an optimizer step but peftkit.on_optimizer_step was never "
            "called: its rank budget is not being reallocated (every rank stays at init_r) and no allocation is "
            "recorded. With transformers.Trainer pass callbacks=[peftkit.PeftkitTrainerCallback()]; in your own "
            "loop call peftkit.on_optimizer_step(model, step) after optimizer.step() and before zero_grad() "
            "(peftkit.training.train does it).",
            UserWarning,
            stacklevel=2,
        )

    def _adapter_weights(self) -> list[torch.Tensor]:
        weights = []
        for layer in self.tuner.model.modules():
            for attr in ("lora_A", "lora_B", "lora_E"):
                container = getattr(layer, attr, None)
                if isinstance(container, nn.ParameterDict) and self.adapter_name in container:
                    weights.append(container[self.adapter_name])
        return weights

    def remove(self) -> None:
        """Detach the regulariser hook from the model (after merging or deleting the adapter)."""
        self._hook.remove()

    def _add_orthogonal_regulariser(self, module: nn.Module, args: Any, outputs: Any) -> None:
        if not module.training:
            return
        from peftkit.state import get_state

        state = get_state(module)
        if state is None or state.active != self.adapter_name or not state.enabled:
            return
        if not (self._stepped or self._warned):
            self._notice_missing_budget_steps()
        loss = getattr(outputs, "loss", None)
        if self.orth_reg_weight == 0 or not isinstance(loss, torch.Tensor):
            return
        penalties = []
        for layer in self.tuner.model.modules():
            lora_a = getattr(layer, "lora_A", None)
            if not isinstance(lora_a, nn.ParameterDict) or self.adapter_name not in lora_a:
                continue
            a, b = lora_a[self.adapter_name], layer.lora_B[self.adapter_name]
            for cov in (a @ a.T, b.T @ b):
                identity = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                penalties.append(torch.linalg.matrix_norm(cov - identity))
        if penalties:
            outputs.loss = loss + self.orth_reg_weight * torch.stack(penalties).mean().to(loss.dtype)
