"""``python -m benchmarks.openmp_wait`` on a few steps: each setting reaches its worker processes, results are written."""

from __future__ import annotations

import json

from benchmarks.openmp_wait import main


def test_settings_reach_fresh_workers_and_the_report_is_written(tmp_path, capsys):
    argv = [
        "--rounds",
        "1",
        "--steps",
        "2",
        "--scenarios",
        "idle",
        "pair",
        "--settings",
        "passive",
        "spin-3000",
    ]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    [result_file] = tmp_path.glob("openmp-wait-*.json")
    samples = json.loads(result_file.read_text())["samples"]
    assert [len(samples["idle"]["passive"]), len(samples["pair"]["passive"])] == [
        1,
        2,
    ]  # a pair: two processes
    for scenario in ("idle", "pair"):
        for sample in samples[scenario]["passive"]:
            assert sample["openmp"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}
        for sample in samples[scenario]["spin-3000"]:
            assert sample["openmp"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "3000"}
            assert sample["wall_ms"] > 0 and sample["cpu_ms"] > 0
    table = (tmp_path / result_file.name.replace(".json", ".md")).read_text()
    assert "| passive |" in table and "| spin-3000 |" in table and "pair" in table
