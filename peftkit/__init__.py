"""peftkit: parameter-efficient fine-tuning of transformer backbones.

Public API::

    import peftkit
    model = peftkit.load_base(path, task="token-classification", num_labels=9, load_in_8bit=True)
    model = peftkit.wrap(model, "lora")          # or "adalora", "adapter", a plugin
    peftkit.methods()                            # ['adalora', 'adapter', 'lora', ...]
    print(peftkit.summary(model))
    peftkit.save_adapter(model, "runs/ner")      # safetensors + JSON, a few MB, never the base
    model = peftkit.load_adapter(base, "runs/ner")  # refuses a different base model
    peftkit.merge_adapter(base_dir, "runs/ner", "merged/")  # plain transformers model
    peftkit.on_optimizer_step(model, step)       # AdaLoRA budget; the training helpers call it
    Trainer(..., callbacks=[peftkit.PeftkitTrainerCallback()])  # the same under transformers.Trainer
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftkit import _lazy
from peftkit.errors import (
    AdapterFileError,
    AdapterWriteError,
    AlreadyWrappedError,
    BaseModelMismatchError,
    CheckpointWriteError,
    ConfigError,
    DataError,
    InvalidOptionError,
    MergeError,
    ModelPathError,
    NoTargetsMatchedError,
    NotWrappedError,
    PeftkitError,
    QuantizationError,
    TrainingError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)

# Public name -> defining module, imported on first use (torch, transformers and peft take seconds
# to import; ``peftkit --help`` needs none of them). Built-in methods register when the registry is
# first consulted.
_EXPORTS = {
    **dict.fromkeys(
        ("base_fingerprint", "fingerprints_match", "load_adapter", "read_adapter_dir", "save_adapter"),
        "peftkit.io",
    ),
    **dict.fromkeys(("combine_adapters", "merge_adapter"), "peftkit.merge"),
    **dict.fromkeys(("describe_int8_paths", "enable_fast_int8", "load_base"), "peftkit.quantization"),
    **dict.fromkeys(
        ("MethodSpec", "get_method", "method_specs", "methods", "register_method"), "peftkit.registry"
    ),
    "adapter_state_dict": "peftkit.state",
    "PeftkitTrainerCallback": "peftkit.training.callbacks",
    **dict.fromkeys(("Summary", "summary"), "peftkit.summary"),
    **dict.fromkeys(
        (
            "active_adapter",
            "adapters_disabled",
            "add_adapter",
            "disable_adapters",
            "enable_adapters",
            "on_optimizer_step",
            "set_active",
            "wrap",
        ),
        "peftkit.wrap",
    ),
}
__getattr__, __dir__ = _lazy.install(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from peftkit.io import base_fingerprint, fingerprints_match, load_adapter, read_adapter_dir, save_adapter
    from peftkit.merge import combine_adapters, merge_adapter
    from peftkit.quantization import describe_int8_paths, enable_fast_int8, load_base
    from peftkit.registry import MethodSpec, get_method, method_specs, methods, register_method
    from peftkit.state import adapter_state_dict
    from peftkit.summary import Summary, summary
    from peftkit.training.callbacks import PeftkitTrainerCallback
    from peftkit.wrap import (
        active_adapter,
        adapters_disabled,
        add_adapter,
        disable_adapters,
        enable_adapters,
        on_optimizer_step,
        set_active,
        wrap,
    )

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "wrap",
    "add_adapter",
    "set_active",
    "active_adapter",
    "disable_adapters",
    "enable_adapters",
    "adapters_disabled",
    "on_optimizer_step",
    "PeftkitTrainerCallback",
    "register_method",
    "methods",
    "method_specs",
    "get_method",
    "MethodSpec",
    "summary",
    "Summary",
    "save_adapter",
    "load_adapter",
    "read_adapter_dir",
    "base_fingerprint",
    "fingerprints_match",
    "merge_adapter",
    "combine_adapters",
    "load_base",
    "enable_fast_int8",
    "describe_int8_paths",
    "adapter_state_dict",
    "PeftkitError",
    "UnknownMethodError",
    "InvalidOptionError",
    "UnsupportedArchitectureError",
    "NoTargetsMatchedError",
    "AlreadyWrappedError",
    "NotWrappedError",
    "AdapterFileError",
    "AdapterWriteError",
    "CheckpointWriteError",
    "ConfigError",
    "DataError",
    "TrainingError",
    "BaseModelMismatchError",
    "QuantizationError",
    "MergeError",
    "ModelPathError",
]
