"""The recipes and the CLI hide bitsandbytes' notice about its 4-bit CPU kernel, and nothing else."""

from __future__ import annotations

import logging

from peftkit.notices import BNB_CPU_OPS_LOGGER, hide_unused_bnb_kernel_notice


def test_only_the_four_bit_kernel_notice_is_dropped(caplog):
    hide_unused_bnb_kernel_notice()
    hide_unused_bnb_kernel_notice()  # idempotent: one filter
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_OPS_LOGGER):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module")
        logger.warning("some other bitsandbytes problem")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes problem"]
