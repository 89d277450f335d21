"""Shared fixtures: tiny random BERT / GPT-2 / Llama models built from configs, offline, seeded."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from peftkit.threads import limit_openmp_spinning  # noqa: E402

limit_openmp_spinning()  # before torch: OpenMP threads spin briefly, then sleep (shared CI cores)

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import FAMILIES, make_batch, make_model, save_tiny_model  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each tiny model family in turn: 'bert', 'gpt2', 'llama'."""
    return request.param


@pytest.fixture
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``tiny_model_dir(family, seed=0)`` saves a tiny base model and returns its directory."""

    def _make(family: str, seed: int = 0) -> str:
        path = tmp_path_factory.mktemp(f"tiny-{family}-{seed}")
        save_tiny_model(family, path, seed=seed)
        return str(path)

    return _make


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate's process-wide state reset before and after the test (each training builds its own)."""
    from peftkit.training import reset_accelerate_state

    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture
def python_sigint():
    """SIGINT handled as Python does by default (KeyboardInterrupt), restored afterwards.

    A test runner started in the background (``nohup ... &``, some CI agents) inherits SIGINT as
    *ignored*; Ctrl-C tests need the interactive default to start from.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["make_model", "make_batch"]
