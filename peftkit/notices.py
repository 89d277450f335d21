"""Hide third-party log notices that do not apply to peftkit's use of its dependencies, or repeat endlessly.

* On CPUs with AVX-512 BF16, ``import bitsandbytes`` (which ``import peft`` triggers) tries to fetch
  an optional 4-bit CPU kernel from the Hugging Face Hub through the ``kernels`` package, and logs
  two notices about it: ``kernels`` says it skips the publisher trust check of
  ``kernels-community/...`` because the Hub is offline, then bitsandbytes says the kernel could not
  be loaded and asks for ``pip install kernels``. The kernel would come from the Hub at run time:
  impossible offline, and peftkit's 4-bit bases run bitsandbytes' built-in CPU path without it. The
  recipes and the ``peftkit`` command line install :func:`hide_unused_bnb_kernel_notice`; a program
  importing peftkit as a library keeps its own logging untouched there.
* bitsandbytes' int8 matmul (CUDA, and its CPU inference path) logs ``MatMul8bitLt: inputs will be
  cast from torch.float32 to float16 during quantization`` at *every* call that is not fp16: 20,000
  lines for one 8-bit NER run. :func:`quiet_repeated_bnb_casts`, installed by
  :func:`peftkit.load_base` for quantised bases, lets the first of each through and drops the repeats.
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


#: The bitsandbytes logger of the int8 matmul's per-call "inputs will be cast" warning.
BNB_MATMUL_LOGGER = "bitsandbytes.autograd._functions"


class _OncePerMessage(logging.Filter):
    """Lets the first record of each "MatMul8bitLt: inputs will be cast" message through, drops repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "inputs will be cast" not in message:
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_repeated_bnb_casts() -> None:
    """Show bitsandbytes' per-matmul "MatMul8bitLt: inputs will be cast ..." warning once per dtype, not per call.

    Idempotent. The cast itself is harmless (bitsandbytes quantises activations from fp16); the
    message names the dtype once, so nothing is lost by dropping its repeats.
    """
    logger = logging.getLogger(BNB_MATMUL_LOGGER)
    if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
        logger.addFilter(_OncePerMessage())
