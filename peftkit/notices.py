"""Hide third-party log notices that do not apply to peftkit's use of its dependencies.

On CPUs with AVX-512 BF16, ``import bitsandbytes`` (which ``import peft`` triggers) logs a warning
that its optional 4-bit CPU kernel could not be fetched and asks for ``pip install kernels``.
peftkit quantises to 8 bits only, and the kernel would come from the Hugging Face Hub, so the advice
is both irrelevant and impossible offline. The recipes and the ``peftkit`` command line install
:func:`hide_unused_bnb_kernel_notice`; a program importing peftkit as a library keeps its own
logging untouched.
"""

from __future__ import annotations

import logging

#: The bitsandbytes logger that reports the missing 4-bit CPU kernel.
BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"


class _DropFourBitKernelNotice(logging.Filter):
    """Drops the "Failed to load CPU gemm_4bit_forward" record, lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "gemm_4bit_forward" not in record.getMessage()


def hide_unused_bnb_kernel_notice() -> None:
    """Stop bitsandbytes' notice about its optional 4-bit CPU kernel from reaching the logs.

    Idempotent; must run before bitsandbytes is first imported (the notice is logged at import).
    Other bitsandbytes warnings still show.
    """
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    if not any(isinstance(f, _DropFourBitKernelNotice) for f in logger.filters):
        logger.addFilter(_DropFourBitKernelNotice())
