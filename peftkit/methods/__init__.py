"""Built-in adapter methods, one package each, and the options base class every method uses.

Packages: ``lora``, ``dora``, ``adalora``, ``ia3``, ``adapter``, ``parallel``, ``prefix``;
:mod:`~peftkit.methods.base` holds :class:`~peftkit.methods.base.MethodConfig`.

Importing this package registers nothing: the registry loads each method through its entry point
(:func:`peftkit.registry.builtin_entry_points`: every sub-package here), exactly as it loads
third-party plugins.
"""
