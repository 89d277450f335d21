"""``transformers.Trainer`` integration: run peftkit's per-step method hooks (AdaLoRA's budget).

Import it as ``peftkit.PeftkitTrainerCallback`` (or from ``peftkit.training``). Saves and resumes
need no callback: every wrapped model's ``save_pretrained`` writes the adapter, plus in
``checkpoint-<N>`` directories the trainable weights and the methods' training state that
``Trainer``'s resume loads back exactly (see :mod:`peftkit.pretrained`). Without the callback an
AdaLoRA adapter warns at its second optimizer step that its budget is not being reallocated.

In transformers 5.x ``Trainer`` fires ``on_optimizer_step`` right after ``optimizer.step()``,
*before* ``model.zero_grad()`` (so the gradients AdaLoRA scores are still there), and *before*
``state.global_step += 1``. The callback therefore passes ``state.global_step + 1``: the number
of optimizer steps taken so far, 1 after the first step, as :func:`peftkit.on_optimizer_step`
and :func:`peftkit.training.train` count them.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import peftkit


class PeftkitTrainerCallback(TrainerCallback):
    """Calls :func:`peftkit.on_optimizer_step` after every optimizer step of a ``Trainer``.

    Without it, an AdaLoRA model trained by ``Trainer`` never reallocates its rank budget (and
    warns once that it does not). The call is a no-op for other methods, so the callback can
    always be added.

    Example:
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds,  # doctest: +SKIP
        ...                   callbacks=[peftkit.PeftkitTrainerCallback()])

    """

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Run the method hooks of the model ``Trainer`` passes (its unwrapped ``self.model``)."""
        model = kwargs.get("model")
        if model is not None:
            peftkit.on_optimizer_step(model, state.global_step + 1)
