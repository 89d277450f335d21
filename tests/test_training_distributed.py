"""The loop under a real two-process ``accelerate launch`` on CPU.

Note: ``accelerate launch --cpu --num_processes 2`` starts a *single* process in Accelerate 1.x
(its simple launcher only spawns several CPU processes through mpirun). Two CPU processes need
torchrun's launcher plus CPU mode: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2 script.py``. The script asserts that it really runs on two processes.

One script (written to a temporary file) trains a tiny LoRA BERT and evaluates it on 7
variable-length samples; every process writes what it saw to JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader, default_collate

    import peftkit
    from peftkit.config import TrainConfig
    from peftkit.training import build_accelerator, concat_padded, train
    from tests.test_training_evaluation import ner_step, pad_collate, ragged_samples
    from tests.tiny_models import make_batch, make_model

    out, mode = sys.argv[1], sys.argv[2]
    config = TrainConfig(output_dir=out, epochs=2, batch_size=2, lr=5e-3, log_every=1, seed=7,
                         checkpoint_every=100, resume=mode == "resume")
    accelerator = build_accelerator(config)
    assert accelerator.num_processes == 2, accelerator.state
    rank = accelerator.process_index
    batch = make_batch("bert", batch=14, seq=8, seed=1)
    data = [{k: v[i] for k, v in batch.items()} for i in range(14)]

    calls = {"n": 0}
    def collate(items):  # mode 'stop': only process 0 gets SIGTERM, while building its 6th batch
        calls["n"] += 1
        if mode == "stop" and rank == 0 and calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return default_collate(items)

    def metrics(outputs):
        labels, predictions = concat_padded(outputs["labels"]), concat_padded(outputs["predictions"])
        mask = labels != -100
        return {"ids": torch.cat(outputs["idx"]).tolist(), "tokens": int(mask.sum()),
                "accuracy": (predictions[mask] == labels[mask]).float().mean().item()}

    torch.manual_seed(0)
    model = peftkit.wrap(make_model("bert").train(), "lora")
    result = train(model, DataLoader(data, batch_size=2, shuffle=True, collate_fn=collate), config,
                   accelerator=accelerator, eval_step=ner_step, compute_metrics=metrics,
                   eval_dataloader=DataLoader(ragged_samples(), batch_size=2, collate_fn=pad_collate))
    weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, os.path.join(out, f"{mode}-rank{rank}.safetensors"))
    with open(os.path.join(out, f"{mode}-rank{rank}.json"), "w") as f:
        json.dump({"step": result.global_step, "eval": result.eval_metrics, "signal": result.stop_signal,
                   "tokens": sum(r.get("tokens", 0) for r in result.history)}, f)
    sys.exit(result.exit_code)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: Path, out: Path, mode: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["ACCELERATE_USE_CPU"] = "1"
    command = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script), str(out), mode,
    ]  # fmt: skip
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def outputs(out: Path, mode: str) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    return [
        (
            json.loads((out / f"{mode}-rank{r}.json").read_text()),
            load_file(out / f"{mode}-rank{r}.safetensors"),
        )
        for r in (0, 1)
    ]


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launch") / "two_process_train.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def full_run(script) -> Path:
    """One uninterrupted two-process run, shared by the tests of this module."""
    out = script.parent / "full"
    proc = launch(script, out, "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_processes_train_in_sync_and_evaluate_each_sample_once(full_run):
    (info0, weights0), (info1, weights1) = outputs(full_run, "full")
    # 14 samples in batches of 2 on 2 processes: 4 batches per process and epoch -> 8 steps.
    assert info0["step"] == info1["step"] == 8
    assert info0["eval"]["ids"] == info1["eval"]["ids"] == list(range(7))  # no duplicate, no loss
    assert info0["eval"] == info1["eval"]
    assert info0["tokens"] == info1["tokens"]  # counted over both processes
    for name, value in weights0.items():
        torch.testing.assert_close(weights1[name], value, rtol=0, atol=0)


@pytest.mark.slow
def test_two_processes_stop_together_on_one_signal_and_resume_exactly(tmp_path, script, full_run):
    out = tmp_path / "run"
    stopped = launch(script, out, "stop")
    assert stopped.returncode != 0  # 143: stopped by SIGTERM, after saving
    (s0, _), (s1, _) = outputs(out, "stop")
    assert s0["step"] == s1["step"] < 8 and s0["signal"] == s1["signal"] == "SIGTERM"
    assert "--resume" in stopped.stderr
    resumed = launch(script, out, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = outputs(full_run, "full")[0][1]
    for _, weights in outputs(out, "resume"):
        for name, value in weights.items():
            torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-6)


def test_a_cpu_launch_that_starts_one_of_two_processes_says_so_with_the_working_command(tmp_path):
    script = tmp_path / "count_processes.py"
    script.write_text(
        "import sys\n"
        "from peftkit.config import TrainConfig\n"
        "from peftkit.training import build_accelerator\n"
        "print('processes', build_accelerator(TrainConfig(output_dir=sys.argv[1])).num_processes, flush=True)\n"
    )
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script), str(tmp_path / "out"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("processes 1") == 1  # accelerate's --cpu launcher really started one
    assert "asked for 2 processes on CPU but started only this one" in done.stderr
    assert (
        "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 "
        f"{script} {tmp_path / 'out'}" in done.stderr
    )


def test_the_lost_processes_message_only_when_the_simple_launcher_lost_them():
    from peftkit.training.accelerator import lost_processes_message

    lost = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert "started only this one" in lost_processes_message(1, lost)
    assert lost_processes_message(2, lost) is None  # it did start them
    assert lost_processes_message(1, {**lost, "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) is None  # torchrun
    assert lost_processes_message(1, {"ACCELERATE_USE_CPU": "True"}) is None  # --num_processes 1
    assert lost_processes_message(1, {**lost, "ACCELERATE_USE_CPU": "False"}) is None
    assert lost_processes_message(1, {**lost, "PMI_SIZE": "2"}) is None  # mpirun
