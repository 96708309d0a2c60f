"""``benchmarks/gpu_check.py --device cpu --tiny`` runs every stage and writes the JSON a GPU session
reads: this keeps the one prepared GPU run from rotting between the rare sessions that have a GPU."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sdekit_diffusion as skd

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tests", "syncs", "brownian", "unet", "training", "distributed")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu_check") / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    env.pop("SDEKIT_TEST_DEVICE", None)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                             "--json", str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert path.is_file(), (f"no JSON written (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
                            f"{result.stderr[-3000:]}")
    return json.loads(path.read_text()), result


def test_every_stage_runs_and_succeeds_on_the_cpu(report):
    data, result = report
    assert tuple(data["stages"]) == STAGES
    problems = {name: stage.get("error", stage["status"]) for name, stage in data["stages"].items()
                if stage["status"] != "ok"}
    assert not problems, f"stages not ok: {problems}\n{result.stdout[-3000:]}"
    assert result.returncode == 0
    assert all(stage["seconds"] <= stage["limit_s"] + 5 for stage in data["stages"].values())
    # the one table names every stage
    for name in STAGES:
        assert any(line.startswith(name) for line in result.stdout.splitlines()), name


def test_the_tests_stage_ran_the_device_tests(report):
    tests = report[0]["stages"]["tests"]
    assert tests["passed"] > 0 and tests["failed"] == tests["errors"] == 0
    assert "SDEKIT_TEST_DEVICE=cpu" in tests["command"] and "tests/test_devices.py" in tests["command"]


def test_the_sync_stage_covers_every_fixed_step_solver_and_fixed_grid_sampler(report):
    import sdekit

    items = report[0]["stages"]["syncs"]["items"]
    for info in sdekit.solvers.available():
        if not info["adaptive"]:
            assert f"solve {info['name']}" in items
    for record in skd.samplers.records():
        if not record.adaptive:
            assert {f"sample {record.name} [vp]", f"sample {record.name} [ddpm]"} <= set(items)
    for label, item in items.items():
        # on the CPU the proxy's host reads are reported, not judged (the CUDA sync mode does not apply)
        assert item["status"] in ("ok", "host reads"), (label, item)
        assert item["error_mode"] == "not applicable on the CPU" and set(item["syncs"]) == {"8", "16"}
        assert (item["status"] == "ok") == (item["syncs_per_step"] == 0 and not item["loop_sites"])


def test_the_brownian_stage_compares_with_zero_difference_on_the_cpu(report):
    checks = report[0]["stages"]["brownian"]["checks"]
    assert len(checks) > 10 and all(check["max_abs"] == 0 for check in checks.values())


def test_the_unet_stage_times_the_samplers_and_diffusers(report):
    unet = report[0]["stages"]["unet"]
    for name in ("ddim", "dpm_solver++_2m", "euler_maruyama"):
        entry = unet["samplers"][name]
        assert entry["status"] == "ok" and entry["sampler_s"] > 0 and entry["network_s"] > 0
        assert entry["network_calls"] == entry["nfe"] and math.isfinite(entry["overhead"])
    if "unipc" not in skd.samplers.available():
        assert unet["samplers"]["unipc"]["status"] == "skipped"
    for name in ("ddim", "dpm_solver++_2m"):
        diffusers = unet["samplers"][name]["diffusers"]
        assert isinstance(diffusers, str) or diffusers["per_step_ms"] > 0


def test_the_training_stages_train_in_both_precisions_and_in_a_group(report):
    stages = report[0]["stages"]
    for label in ("float32", "bf16 autocast", "skd.Trainer"):
        entry = stages["training"]["results"][label]
        assert entry["status"] == "ok" and entry["steps_per_s"] > 0 and math.isfinite(entry["final_loss"])
    distributed = stages["distributed"]
    assert distributed["backend"] == "gloo" and distributed["world_size"] == 1
    assert distributed["all_reduce_ok"] and distributed["broadcast_ok"] and distributed["parameters_on"] == "cpu"
