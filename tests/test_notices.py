"""The recipes and the CLI hide bitsandbytes' notice about its 4-bit CPU kernel, and nothing else."""

from __future__ import annotations

import logging

from peftkit.notices import BNB_CPU_OPS_LOGGER, KERNELS_HUB_LOGGER, hide_unused_bnb_kernel_notice


def test_only_the_four_bit_kernel_notice_is_dropped(caplog):
    hide_unused_bnb_kernel_notice()
    hide_unused_bnb_kernel_notice()  # idempotent: one filter
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_OPS_LOGGER):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module")
        logger.warning("some other bitsandbytes problem")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes problem"]


def test_the_offline_trust_check_notice_of_the_bnb_kernel_is_dropped(caplog):
    hide_unused_bnb_kernel_notice()
    hide_unused_bnb_kernel_notice()
    logger = logging.getLogger(KERNELS_HUB_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=KERNELS_HUB_LOGGER):
        logger.warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging "
            "Face Hub is in offline mode."
        )
        logger.warning(
            "Skipping publisher trust check for 'someone/other-kernel' because Hugging Face Hub is offline."
        )
        logger.warning("another kernels problem")
    assert [r.getMessage() for r in caplog.records] == [
        "Skipping publisher trust check for 'someone/other-kernel' because Hugging Face Hub is offline.",
        "another kernels problem",
    ]
