"""NumericGuard and StopRequest in isolation (no training)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from peftkit.errors import TrainingError
from peftkit.training.faults import NumericGuard, StepReport
from peftkit.training.signals import StopRequest


def report(step: int = 1, loss: float = 2.0, grad_norm: float = 1.0, **extra) -> StepReport:
    return StepReport(step=step, loss=loss, grad_norm=grad_norm, epoch=0, batches=(4, 5), **extra)


@pytest.mark.parametrize(
    ("loss", "grad_norm", "what"),
    [(float("nan"), 1.0, "loss"), (float("inf"), 1.0, "loss"), (2.0, float("nan"), "gradient norm")],
)
def test_non_finite_values_name_step_batches_and_checkpoint(loss, grad_norm, what):
    guard = NumericGuard()
    with pytest.raises(TrainingError) as info:
        guard.check(report(7, loss, grad_norm), Path("out/checkpoints/step-6"))
    message = str(info.value)
    assert f"Non-finite {what}" in message and "optimizer step 7" in message and "batches 4-5" in message
    assert "out/checkpoints/step-6" in message and "--resume" in message


def test_known_bad_batch_and_missing_checkpoint_are_named():
    with pytest.raises(TrainingError, match=r"batch 5 of the epoch \(process 1\).*--checkpoint-every"):
        NumericGuard().check(report(loss=float("nan"), bad_batch=(1, 5)), lambda: None)


def test_explosion_is_relative_to_the_first_loss():
    guard = NumericGuard(explode_factor=1000)
    guard.check(report(1, loss=2.0), None)
    guard.check(report(2, loss=1999.0), None)  # below 1000 x 2.0
    with pytest.raises(TrainingError, match=r"exploded at optimizer step 3.*--lr 0.1\).*too high"):
        guard.check(report(3, loss=2001.0, peak_lr=0.1), None)


def test_tiny_first_loss_and_disabled_check():
    guard = NumericGuard(explode_factor=1000)
    guard.check(report(1, loss=1e-6), None)
    guard.check(report(2, loss=5.0), None)  # reference floored at 0.01: threshold 10
    off = NumericGuard(explode_factor=0)
    off.check(report(1, loss=1.0), None)
    off.check(report(2, loss=1e9), None)


def test_signals_become_a_stop_request_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERM never aborts
        assert stop.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # SIGINT after SIGTERM (accelerate launch + Ctrl-C) neither
    assert signal.getsignal(signal.SIGTERM) == before


def test_second_ctrl_c_aborts(python_sigint):
    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
