"""Names accepted by the merge and combine operations (standard library only: the CLI's parser uses them).

Task names (``--task``) are :data:`peftkit.models.TASKS`.
"""

from __future__ import annotations

#: ``dtype`` / ``--dtype`` values for merged weights.
DTYPE_NAMES = ("float32", "bfloat16", "float16")

#: Rules applied to full delta weights followed by a truncated SVD.
SVD_RULES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
#: Every value accepted for ``how`` / ``--how``.
COMBINATIONS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune") + SVD_RULES[1:]
#: Rules that need a ``density`` in (0, 1].
NEEDS_DENSITY = tuple(h for h in COMBINATIONS if h.startswith(("ties", "dare", "magnitude_prune")))
