"""``peftkit inspect``: what an adapter directory holds, as a JSON-able dict or as text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftkit.errors import UnknownMethodError
from peftkit.io import WEIGHTS_FILE, describe_fingerprint, read_adapter_dir
from peftkit.merge.adapters import view_adapter
from peftkit.registry import get_method


def describe_adapter(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise an adapter directory (validated with :func:`peftkit.io.read_adapter_dir`).

    Returns:
        A JSON-serialisable dict: ``path``, ``method``, ``source``, ``mergeable``, ``peft_type``,
        ``options``, ``targets``, ``num_targets``, ``ranks`` (low-rank methods: ``nominal`` rank (r, init_r),
        ``min`` / ``max`` / ``total`` over modules and ``per_module``, the ranks actually stored, e.g.
        those AdaLoRA's budget kept; ``pruned`` if any is below the nominal rank), ``parameters`` (``total``, ``adapter``,
        ``heads``), ``file_size`` (weights file and whole directory, bytes), ``base`` (name,
        fingerprint digest and the full fingerprint), ``heads`` (modules, num_labels, labels),
        ``peftkit_version``, ``format_version``, ``versions``, ``combined_from``.

    Raises:
        AdapterFileError: The directory is missing or damaged.

    """
    files = read_adapter_dir(path)
    view = view_adapter(files)
    try:
        spec = get_method(files.method, plugin_hint=files.plugin)
        source, mergeable = spec.source, spec.mergeable
    except UnknownMethodError:
        source, mergeable = files.plugin or "not installed", None
    heads_meta = files.meta.get("heads") or {}
    head_params = sum(t.numel() for t in view.heads.values())
    ranks: dict[str, Any] | None = None
    if view.low_rank is not None and view.ranks:
        values = list(view.ranks.values())
        ranks = {
            "nominal": view.nominal_rank,
            "min": min(values),
            "max": max(values),
            "total": sum(values),
            "pruned": any(v < view.nominal_rank for v in values),
            "per_module": dict(sorted(view.ranks.items())),
        }
    fingerprint = files.fingerprint
    directory = Path(files.path)
    return {
        "path": str(directory),
        "method": files.method,
        "source": source,
        "mergeable": mergeable,
        "peft_type": files.peft_config.get("peft_type"),
        "options": files.options,
        "targets": files.targets,
        "num_targets": len(files.targets),
        "ranks": ranks,
        "parameters": {
            "total": files.num_parameters(),
            "adapter": files.num_parameters() - head_params,
            "heads": head_params,
        },
        "file_size": {
            "weights": (directory / WEIGHTS_FILE).stat().st_size,
            "directory": sum(p.stat().st_size for p in directory.iterdir() if p.is_file()),
        },
        "base": {
            "name": (fingerprint or {}).get("name_or_path")
            or files.peft_config.get("base_model_name_or_path"),
            "architecture": (fingerprint or {}).get("architecture"),
            "digest": (fingerprint or {}).get("digest"),
            "description": describe_fingerprint(fingerprint),
            "fingerprint": fingerprint,
        },
        "heads": {
            "modules": files.heads,
            "num_labels": heads_meta.get("num_labels") if files.heads else None,
            "id2label": heads_meta.get("id2label") if files.heads else None,
        },
        "peftkit_version": files.meta.get("peftkit_version"),
        "format_version": files.meta.get("format_version"),
        "versions": files.meta.get("versions"),
        "combined_from": files.meta.get("combined_from"),
    }


def format_description(info: dict[str, Any]) -> str:
    """Render :func:`describe_adapter`'s dict as aligned text."""
    mergeable = {True: "yes", False: "no", None: "unknown"}[info["mergeable"]]
    rows = [
        ("adapter", info["path"]),
        ("method", f"{info['method']} (from {info['source']}; mergeable: {mergeable})"),
        ("base", info["base"]["description"]),
        (
            "targets",
            f"{info['num_targets']} modules: {_shorten(info['targets'])}" if info["targets"] else "none",
        ),
    ]
    ranks = info["ranks"]
    if ranks:
        spread = str(ranks["min"]) if ranks["min"] == ranks["max"] else f"{ranks['min']}-{ranks['max']}"
        text = f"{spread} per module (nominal {ranks['nominal']}, total {ranks['total']})"
        if ranks["pruned"]:
            text += f"; rank pattern (module order): {list(ranks['per_module'].values())}"
        rows.append(("ranks", text))
    params = info["parameters"]
    rows.append(
        ("parameters", f"{params['total']:,} ({params['adapter']:,} adapter + {params['heads']:,} heads)")
    )
    rows.append(
        ("file size", f"{info['file_size']['weights']:,} bytes ({info['file_size']['directory']:,} in dir)")
    )
    heads = info["heads"]
    if heads["modules"]:
        labels = heads["id2label"]
        shown = f"; labels {list(labels.values())}" if labels else ""
        rows.append(("heads", f"{', '.join(heads['modules'])} (num_labels={heads['num_labels']}{shown})"))
    else:
        rows.append(("heads", "none"))
    options = {
        k: v for k, v in (info["options"] or {}).items() if k not in ("target_modules", "head_modules")
    }
    rows.append(("options", ", ".join(f"{k}={v}" for k, v in options.items())))
    if info["combined_from"]:
        combo = info["combined_from"]
        parts = ", ".join(f"{a['path']} x{a['weight']:g}" for a in combo["adapters"])
        rows.append(("combined", f"{combo['how']} of {parts}"))
    rows.append(("peftkit", str(info["peftkit_version"] or "unknown (not written by peftkit)")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _shorten(names: list[str], shown: int = 4) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f", ... (+{len(names) - shown})"
