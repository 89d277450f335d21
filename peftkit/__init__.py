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
"""

from __future__ import annotations

# Register the built-in methods first: importing the ``peftkit.methods`` package binds its name on
# ``peftkit``, and the ``methods()`` function imported below must take that name afterwards.
import peftkit.methods as _builtin_methods  # noqa: F401, I001
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
    NoTargetsMatchedError,
    NotWrappedError,
    PeftkitError,
    QuantizationError,
    TrainingError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)
from peftkit.io import base_fingerprint, fingerprints_match, load_adapter, read_adapter_dir, save_adapter
from peftkit.merge import combine_adapters, merge_adapter
from peftkit.quantization import describe_int8_paths, enable_fast_int8, load_base
from peftkit.registry import MethodSpec, get_method, method_specs, methods, register_method
from peftkit.state import adapter_state_dict
from peftkit.summary import Summary, summary
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
]
