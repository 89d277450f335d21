"""The live side of an AdaLoRA adapter: its budget schedule, regulariser and resumable state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraModel

_SEP = "::"
#: The rank allocator's exponential moving averages (dicts of tensors keyed by parameter name).
_EMA_FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


class AdaLoraHandle:
    """Owns peft's AdaLoRA tuner for one adapter: the budget schedule and the regulariser hook.

    peft requires ``update_and_allocate(step)`` after every optimizer step; peftkit calls
    :meth:`on_optimizer_step` for you. The orthogonality regulariser that peft adds in
    ``AdaLoraModel.forward`` is added here by a forward hook, because the wrapped model keeps its
    own ``forward``. :meth:`training_state` exposes the allocator's sensitivity averages and the
    rank pattern, which live outside ``state_dict()``, so that a resumed run prunes exactly as an
    uninterrupted one.
    """

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
                identity = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                penalties.append(torch.linalg.matrix_norm(cov - identity))
        if penalties:
            outputs.loss = loss + self.orth_reg_weight * torch.stack(penalties).mean().to(loss.dtype)
