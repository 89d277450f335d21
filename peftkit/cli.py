"""The ``peftkit`` console script: ``merge``, ``combine``, ``inspect`` and ``methods``.

A thin layer over :mod:`peftkit.merge` and :mod:`peftkit.io`. Exit codes: 0 on success, 2 for
usage errors (argparse), 1 for a :class:`~peftkit.errors.PeftkitError` (its message on stderr,
no traceback unless ``--debug``), 130 when interrupted.

Examples::

    peftkit merge --base ./bert-base --adapter ./ner-lora --out ./bert-ner-merged
    peftkit combine ./a ./b --weights 0.7 0.3 --how svd --rank 8 --out ./mix
    peftkit inspect ./ner-lora --json
    peftkit methods
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from peftkit import __version__
from peftkit._argparse import NumberFriendlyParser
from peftkit.errors import PeftkitError
from peftkit.io.paths import META_FILE, check_adapter_dir
from peftkit.merge.options import COMBINATIONS, DTYPE_NAMES
from peftkit.models import TASKS
from peftkit.notices import hide_unused_bnb_kernel_notice

logger = logging.getLogger(__name__)

PROG = "peftkit"

MERGE_EXAMPLES = """\
examples:
  peftkit merge --base ./bert-base --adapter ./ner-lora --out ./bert-ner-merged
  peftkit merge --base ./gpt2 --adapter ./clm-adalora --out ./merged --dtype bfloat16
  peftkit merge --base ./other-copy --adapter ./ner-lora --out ./merged --force   # skip the base check

The merged directory is a plain transformers model (safetensors) plus the base's tokenizer
files: load it with AutoModelFor...from_pretrained, no peftkit needed. LoRA and AdaLoRA fold
into the weights; trained task heads replace the base's heads. An adapter trained on an
8-bit base merges into the full-precision base (same fingerprint); to run it in 8-bit,
quantise at load time: peftkit.load_base(out_dir, load_in_8bit=True).

Bottleneck adapters ("adapter") are non-linear and cannot be folded into weights: merge
says so (a warning on stderr) and writes the base with only the trained task head folded
in. Load the adapter onto that model with peftkit.load_adapter to get the adapter model's
outputs, or mix several bottleneck adapters with `peftkit combine`.
"""

COMBINE_EXAMPLES = """\
examples:
  peftkit combine ./ner-a ./ner-b --out ./ner-avg                         # average of the updates
  peftkit combine ./a ./b --weights 0.7 0.3 --how cat --out ./mix         # exact, rank r_a + r_b
  peftkit combine ./a ./b --how svd --rank 8 --out ./mix                  # truncated SVD of the sum
  peftkit combine ./a ./b ./c --how ties --density 0.5 --out ./mix
  peftkit combine ./a ./b --how dare_linear --density 0.3 --seed 1 --out ./mix

All adapters must share the method, the base model (fingerprint) and the target modules;
heads must have the same labels. LoRA / AdaLoRA updates are mixed with peft's rules
(linear and the pruning rules need equal ranks); heads and bottleneck adapters are averaged
with the normalised weights w_i / sum(w). The output is a normal adapter directory.
"""

INSPECT_EXAMPLES = """\
examples:
  peftkit inspect ./ner-lora
  peftkit inspect ./ner-lora --json | jq .ranks
"""

METHODS_EXAMPLES = """\
examples:
  peftkit methods
  peftkit methods --json

Lists the built-in methods and those registered by plugins (entry-point group
"peftkit.methods") as a feature matrix, from each method's registration:
  TARGETS    what it adapts by default (architecture roles; "none": adds no layer to targets)
  IDENTITY   a freshly wrapped model computes exactly what the base computes
  MERGEABLE  `peftkit merge` folds it into the base weights
  COMBINE    `peftkit combine`: low-rank (exact weighted sums), average (parameters), no
  PEFT       peft.PeftModel.from_pretrained loads its directories
Every method trains, saves, loads, resumes exactly and runs on 8-bit / 4-bit bases; tests/
test_method_matrix.py checks every row against these columns for the bert, gpt2 and llama families.
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with its four sub-commands."""
    common = NumberFriendlyParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress"
    )
    parser = NumberFriendlyParser(
        prog=PROG,
        description="Merge, combine and inspect peftkit adapters.",
        epilog=(
            "Run 'peftkit COMMAND --help' for the options and examples of each command.\n"
            "Exit status: 0 on success, 1 on an error (message on stderr; --debug adds the traceback), "
            "2 on a usage error."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    merge = add(
        "merge", "Fold an adapter into its base model and save a plain transformers model.", MERGE_EXAMPLES
    )
    merge.add_argument("--base", required=True, metavar="PATH", help="base model directory (full precision)")
    merge.add_argument(
        "--adapter", required=True, metavar="DIR", help="adapter directory (save_adapter output)"
    )
    merge.add_argument("--out", required=True, metavar="DIR", help="output directory for the merged model")
    merge.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="float32",
        help="dtype of the saved weights",
    )
    merge.add_argument(
        "--task",
        choices=tuple(TASKS),
        help="model head to load the base with (default: inferred from the adapter's metadata)",
    )
    merge.add_argument(
        "--force", action="store_true", help="merge even if the base fingerprint does not match"
    )
    merge.add_argument(
        "--head-only",
        action="store_true",
        help="for adapters that cannot be merged (bottleneck): save the base with only the trained head "
        "folded in, without the warning (this is what merge does for them anyway; LoRA/AdaLoRA always "
        "merge fully)",
    )
    merge.add_argument(
        "--no-check",
        action="store_true",
        help="skip comparing adapter-model and merged-model logits on a probe batch",
    )
    merge.set_defaults(handler=_cmd_merge)

    combine = add(
        "combine", "Combine several adapters of one method and base into one adapter.", COMBINE_EXAMPLES
    )
    combine.add_argument("adapters", nargs="+", metavar="DIR", help="adapter directories (two or more)")
    combine.add_argument("--out", required=True, metavar="DIR", help="output adapter directory")
    combine.add_argument(
        "--weights", nargs="+", type=float, metavar="W", help="one weight per adapter (default: 1/N each)"
    )
    combine.add_argument(
        "--how",
        default=None,
        choices=COMBINATIONS,
        metavar="RULE",
        help=f"one of {', '.join(COMBINATIONS)}. Default: cat for LoRA/AdaLoRA (the exact weighted sum "
        "of the updates: equal weights average them), linear (parameter averaging) for bottleneck "
        "adapters. For LoRA, linear is peft's rule: it mixes the A and B factors separately, which is "
        "cheap and keeps the rank but is not the sum of the updates",
    )
    combine.add_argument(
        "--rank", type=int, metavar="R", help="output rank of the svd rules (default: max rank)"
    )
    combine.add_argument(
        "--density", type=float, metavar="D", help="fraction kept by ties/dare/magnitude_prune"
    )
    combine.add_argument("--seed", type=int, default=0, help="random seed of the dare rules (default: 0)")
    combine.set_defaults(handler=_cmd_combine)

    inspect = add("inspect", "Describe an adapter directory.", INSPECT_EXAMPLES)
    inspect.add_argument("adapter", metavar="DIR", help="adapter directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(handler=_cmd_inspect)

    methods = add("methods", "List the registered adapter methods (plugins included).", METHODS_EXAMPLES)
    methods.add_argument("--json", action="store_true", help="print JSON instead of a table")
    methods.set_defaults(handler=_cmd_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (also used by the console script).

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    hide_unused_bnb_kernel_notice()
    logging.basicConfig(
        level=logging.DEBUG
        if debug
        else logging.INFO
        if getattr(args, "verbose", False)
        else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args, parser) or 0)
    except PeftkitError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a library below failed (unreadable base model, I/O): still one line
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug shows the traceback)"
        print(f"{PROG} {args.command}: error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1


def _cmd_merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    check_adapter_dir(args.adapter)  # a mistyped path fails before the heavy imports
    _quiet_libraries(args)
    from peftkit.merge import merge_adapter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = merge_adapter(
            args.base,
            args.adapter,
            args.out,
            dtype=args.dtype,
            strict=not args.force,
            task=args.task,
            head_only=True if args.head_only else None,
            check=not args.no_check,
            progress=True,
        )
    for warning in caught:
        if issubclass(warning.category, UserWarning) and "peftkit" in str(warning.filename):
            print(f"{PROG} merge: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    report = getattr(model, "peftkit_merge_report", {})
    print(
        f"Merged the {report.get('method', '')} adapter {args.adapter} into {args.base} -> {args.out} ({args.dtype})"
    )
    for key, value in sorted(report.items()):
        if key.startswith("max_abs_logit_diff") and value is not None:
            print(
                f"  {key.replace('_', ' ')}: {value:.3g} (adapter model vs merged model, random probe batch)"
            )
    if report.get("head_only"):
        print(
            "  NOTE: only the trained task head was folded in; the adapter layers were NOT merged. "
            f"Load {args.adapter} onto the base with peftkit.load_adapter to reproduce the adapter model."
        )
    return 0


def _cmd_combine(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if len(args.adapters) < 2:
        parser.error("combine needs at least two adapter directories")
    if args.weights is not None and len(args.weights) != len(args.adapters):
        parser.error(
            f"--weights has {len(args.weights)} values for {len(args.adapters)} adapters: give one each"
        )
    for directory in args.adapters:
        check_adapter_dir(directory)
    _quiet_libraries(args)
    from peftkit.merge import combine_adapters

    out = combine_adapters(
        args.adapters,
        args.weights,
        args.how,
        args.out,
        rank=args.rank,
        density=args.density,
        seed=args.seed,
        progress=True,
    )
    from peftkit.io.files import read_json

    # the rule actually used (the default depends on the method): from the metadata, not the weights
    how = read_json(out / META_FILE).get("combined_from", {}).get("how", args.how)
    print(f"Combined {len(args.adapters)} adapters ({how}) -> {out}")
    return 0


def _cmd_inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    check_adapter_dir(args.adapter)
    from peftkit.merge.describe import describe_adapter, format_description

    info = describe_adapter(args.adapter)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_description(info))
    return 0


def _cmd_methods(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from peftkit.registry import load_plugins, method_specs

    failed = load_plugins()
    rows = [_method_row(spec) for spec in method_specs()]
    if args.json:
        print(json.dumps({"methods": rows, "failed_plugins": failed}, indent=2))
        return 0
    print(
        _table(rows, ("name", "targets", "identity", "mergeable", "combine", "peft", "source", "description"))
    )
    for name, error in failed.items():
        print(f"plugin {name!r} failed to load: {error}", file=sys.stderr)
    return 0


def _method_row(spec: Any) -> dict[str, Any]:
    """One row of the feature matrix (see METHODS_EXAMPLES)."""
    roles = getattr(spec.default_targets, "roles", None)
    if not spec.uses_targets:
        targets = "none"
    elif spec.default_targets is None:
        targets = "attention"
    else:
        targets = "+".join(roles) if roles else "custom"
    return {
        "name": spec.name,
        "source": spec.source,
        "targets": targets,
        "identity": spec.starts_at_identity,
        "mergeable": spec.mergeable,
        "combine": spec.combine_kind,
        "peft": spec.interop is not None and spec.interop.peft_loads,
        "peft_type": spec.peft_type,
        "description": spec.description,
    }


def _quiet_libraries(args: argparse.Namespace) -> None:
    """Hide transformers' per-file loading bars and info logs (``--verbose`` / ``--debug`` keep them)."""
    if getattr(args, "verbose", False) or getattr(args, "debug", False):
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
