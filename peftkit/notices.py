"""Hide third-party log notices that do not apply to peftkit's use of its dependencies.

On CPUs with AVX-512 BF16, ``import bitsandbytes`` (which ``import peft`` triggers) tries to fetch an
optional 4-bit CPU kernel from the Hugging Face Hub through the ``kernels`` package, and logs two
notices about it: ``kernels`` says it skips the publisher trust check of
``kernels-community/...`` because the Hub is offline, then bitsandbytes says the kernel could not be
loaded and asks for ``pip install kernels``. peftkit quantises to 8 bits only, and the kernel would
come from the Hub, so both are irrelevant (and the second impossible offline). The recipes and the
``peftkit`` command line install :func:`hide_unused_bnb_kernel_notice`; a program importing
peftkit as a library keeps its own logging untouched.
"""

from __future__ import annotations

import logging

#: The bitsandbytes logger that reports the missing 4-bit CPU kernel.
BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
#: The ``kernels`` logger that reports skipping the publisher trust check while offline.
KERNELS_HUB_LOGGER = "kernels._internals.hf_hub"


class _DropFourBitKernelNotice(logging.Filter):
    """Drops the notices about bitsandbytes' 4-bit kernel, lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "gemm_4bit_forward" in message:
            return False
        return not (message.startswith("Skipping publisher trust check") and "'kernels-community/" in message)


def hide_unused_bnb_kernel_notice() -> None:
    """Stop the notices about bitsandbytes' optional 4-bit CPU kernel from reaching the logs.

    Idempotent; must run before bitsandbytes is first imported (the notices are logged at import).
    Other bitsandbytes and ``kernels`` warnings still show, and so does the trust-check notice for
    any repository outside ``kernels-community``.
    """
    for name in (BNB_CPU_OPS_LOGGER, KERNELS_HUB_LOGGER):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFourBitKernelNotice) for f in logger.filters):
            logger.addFilter(_DropFourBitKernelNotice())
