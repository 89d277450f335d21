"""An ``ArgumentParser`` that takes ``-1e-3``, ``-inf`` and ``nan`` as values (standard library only).

argparse treats an argument starting with ``-`` as an option unless it looks like ``-5`` or ``-.5``,
so ``--lr -1e-3`` fails with "expected one argument" (``--lr=-1e-3`` works). peftkit's parsers have
no option that looks like a number, so every float literal can be a value.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

#: Any float literal Python's ``float()`` accepts with a leading minus: -1, -1.5, -.5, -1e-3, -inf, -nan.
_NEGATIVE_NUMBER = re.compile(
    r"^-(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|inf(inity)?|nan)$", re.IGNORECASE
)


class NumberFriendlyParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` accepting negative numbers in scientific notation as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As ``argparse.ArgumentParser``."""
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER
