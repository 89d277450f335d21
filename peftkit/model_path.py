"""The first check of a base-model path, before transformers reads it (standard library only).

transformers answers a mistyped local path with a long traceback about Hub repository ids, and a
file or an adapter directory with errors from deep inside its loaders. :func:`model_path_problem`
tells these cases apart in one line each, with the fix; a name that could be a Hub repository id
(``org/name``) is left to transformers, unless the Hub is offline and the model is not cached.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from peftkit.errors import ModelPathError, did_you_mean

CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: A Hugging Face Hub repository id: ``name`` or ``org/name``.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|gguf|pt|pth|json)")


def check_model_path(
    path: str | os.PathLike[str],
    *,
    allow_gguf: bool = False,
    gguf_file: str | None = None,
    subfolder: str | None = None,
    needs_config: bool = True,
    name: str = "Model path",
) -> None:
    """Raise :class:`~peftkit.errors.ModelPathError` if ``path`` cannot hold a transformers model.

    Args:
        path: A local model directory (or a Hub repository id, left to transformers when online).
        allow_gguf: Accept a ``.gguf`` file itself (the causal-LM recipe's ``--model-path``).
        gguf_file: ``from_pretrained``'s ``gguf_file``: the directory must hold it (no config.json needed).
        subfolder: ``from_pretrained``'s ``subfolder``: config.json is looked for there.
        needs_config: Require ``config.json`` (``False`` when a config object is passed along).
        name: How the message names the path (e.g. ``"--model-path"``).

    Example:
        >>> check_model_path("/no/such/model")  # doctest: +SKIP
        ModelPathError: Model path '/no/such/model' does not exist. Pass the directory of a transformers ...

    """
    problem = model_path_problem(
        path,
        allow_gguf=allow_gguf,
        gguf_file=gguf_file,
        subfolder=subfolder,
        needs_config=needs_config,
        name=name,
    )
    if problem is not None:
        raise ModelPathError(problem)


def model_path_problem(
    path: str | os.PathLike[str],
    *,
    allow_gguf: bool = False,
    gguf_file: str | None = None,
    subfolder: str | None = None,
    needs_config: bool = True,
    name: str = "Model path",
) -> str | None:
    """What is wrong with ``path`` as a base model (see :func:`check_model_path`), or ``None``."""
    text = os.fspath(path)
    local = Path(text).expanduser()
    shown = f"{name} {text!r}"
    fix = "Pass the directory of a transformers model (the one holding config.json, as save_pretrained writes it)"
    if allow_gguf:
        fix += " or a .gguf file"
    if not local.exists():
        if _REPO_ID.fullmatch(text) and not text.startswith(".") and not _hub_unreachable(text):
            return None  # a Hub repository id: transformers resolves it
        if _REPO_ID.fullmatch(text) and not text.startswith("."):
            return (
                f"{shown} is not a local directory, and the Hugging Face Hub is offline (HF_HUB_OFFLINE) "
                f"with no cached copy of such a model. {fix}."
            )
        return f"{shown} does not exist.{_sibling_hint(local)} {fix}."
    if local.is_file():
        if allow_gguf and local.suffix == ".gguf":
            return None
        holder = local.parent
        if (holder / CONFIG_FILE).is_file() or _WEIGHT_FILE.fullmatch(local.name):
            return f"{shown} is a file; pass the model directory that holds it: {str(holder)!r}."
        return f"{shown} is a file, not a model directory. {fix}."
    directory = local / subfolder if subfolder else local
    if gguf_file is not None:
        if not (directory / gguf_file).is_file():
            return f"{shown} holds no GGUF file {gguf_file!r}. Pass the directory that holds it."
        return None
    if not needs_config or (directory / CONFIG_FILE).is_file():
        return None
    if (directory / ADAPTER_CONFIG_FILE).is_file():
        base = _adapter_base(directory)
        trained_on = f" (it was trained on {base!r})" if base else ""
        return (
            f"{shown} is an adapter directory ({ADAPTER_CONFIG_FILE}), not a base model: pass the base model it "
            f"was trained on{trained_on} and put the adapter on it with peftkit.load_adapter(model, {text!r})."
        )
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if ggufs and allow_gguf:
        return f"{shown} holds GGUF files but no {CONFIG_FILE}: pass the .gguf file itself, e.g. {str(directory / ggufs[0])!r}."
    return f"{shown} holds no {CONFIG_FILE}, so it is not a transformers model directory. {fix}."


def _sibling_hint(path: Path) -> str:
    parent = path.parent
    if not parent.is_dir():
        return ""
    try:
        names = [p.name for p in parent.iterdir() if not p.name.startswith(".")]
    except OSError:
        return ""
    return did_you_mean(path.name, names)


def _hub_unreachable(repo_id: str) -> bool:
    """True if the Hub is offline and ``repo_id``'s config is not in the local cache."""
    offline = any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if not offline:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, CONFIG_FILE)
    except Exception:  # an odd id or cache layout: let transformers report it
        return False
    return not isinstance(cached, str)


def _adapter_base(directory: Path) -> str | None:
    try:
        config = json.loads((directory / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None
