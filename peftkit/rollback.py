"""Undo a half-finished adapter injection, so a failed ``wrap`` or ``load_adapter`` leaves the model unchanged."""

from __future__ import annotations

import copy

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from peftkit.state import _STATE_ATTR, PeftkitState, unwrap_model

_TREE_ATTRS = ("_modules", "_parameters", "_buffers")


class ModelSnapshot:
    """Shallow record of a model's module tree, parameter flags, hooks and peftkit state.

    Injection only replaces child modules, adds entries to ``ModuleDict`` / ``ParameterDict``
    containers, edits the book-keeping attributes of existing adapter layers (active adapter,
    ranks, scalings), registers forward hooks (on the model) and pre-hooks (on any module) and edits the
    peftkit state; restoring the
    recorded dicts undoes all of that without copying any tensor.
    """

    def __init__(self, model: nn.Module) -> None:
        """Record ``model``'s current structure."""
        self.model = unwrap_model(model)
        self.modules = [(m, dict(m._modules), dict(m._parameters)) for m in self.model.modules()]
        self.layer_attrs = [
            (m, {k: copy.copy(v) for k, v in m.__dict__.items() if k not in _TREE_ATTRS})
            for m in self.model.modules()
            if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))
        ]
        self.requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        self.forward_hooks = dict(self.model._forward_hooks)
        self.pre_hooks = [
            (m, dict(m._forward_pre_hooks), dict(m._forward_pre_hooks_with_kwargs))
            for m in self.model.modules()
        ]
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
        for module, attrs in self.layer_attrs:
            module.__dict__.update(attrs)
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)
        self.model._forward_hooks.clear()
        self.model._forward_hooks.update(self.forward_hooks)
        for module, hooks, with_kwargs in self.pre_hooks:
            module._forward_pre_hooks.clear()
            module._forward_pre_hooks.update(hooks)
            module._forward_pre_hooks_with_kwargs.clear()
            module._forward_pre_hooks_with_kwargs.update(with_kwargs)
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
