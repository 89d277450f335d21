"""Built-in adapter methods. Importing this package registers them."""

from peftkit.methods import adalora, adapter, lora  # noqa: F401
