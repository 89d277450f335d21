"""Undo a half-finished adapter injection, so a failed ``load_adapter`` leaves the model unchanged."""

from __future__ import annotations

from torch import nn

from peftkit.state import _STATE_ATTR, PeftkitState, unwrap_model


class ModelSnapshot:
    """Shallow record of a model's module tree, parameter flags, hooks and peftkit state.

    Injection only replaces child modules, adds entries to ``ModuleDict`` / ``ParameterDict``
    containers, registers forward hooks and edits the peftkit state; restoring the recorded
    ``_modules`` / ``_parameters`` dicts undoes all of that without copying any tensor.
    """

    def __init__(self, model: nn.Module) -> None:
        """Record ``model``'s current structure."""
        self.model = unwrap_model(model)
        self.modules = [(m, dict(m._modules), dict(m._parameters)) for m in self.model.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        self.forward_hooks = dict(self.model._forward_hooks)
        self.training = [(m, m.training) for m in self.model.modules()]
        self.extra = {k: self.model.__dict__[k] for k in ("peft_config",) if k in self.model.__dict__}
        state: PeftkitState | None = self.model.__dict__.get(_STATE_ATTR)
        self.state = None if state is None else (state, dict(state.adapters), state.active, state.enabled)

    def restore(self) -> None:
        """Put the recorded structure back (adapter layers created since are dropped)."""
        for module, children, params in self.modules:
            module._modules.clear()
            module._modules.update(children)
            module._parameters.clear()
            module._parameters.update(params)
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)
        self.model._forward_hooks.clear()
        self.model._forward_hooks.update(self.forward_hooks)
        for module, mode in self.training:
            module.training = mode
        self.model.__dict__.pop("peft_config", None)
        self.model.__dict__.update(self.extra)
        if self.state is None:
            self.model.__dict__.pop(_STATE_ATTR, None)
            return
        state, adapters, active, enabled = self.state
        self.model.__dict__[_STATE_ATTR] = state
        state.adapters = adapters
        state.active, state.enabled = active, enabled
        _resync_active(self.model, active, enabled)


def _resync_active(model: nn.Module, active: str | None, enabled: bool) -> None:
    """Point every adapter layer back at the previously active adapter (flags were restored already)."""
    from peftkit.wrap import disable_adapters, set_active

    flags = [(p, p.requires_grad) for p in model.parameters()]
    if active is not None:
        set_active(model, active)
    if not enabled:
        disable_adapters(model)
    for param, flag in flags:
        param.requires_grad_(flag)
