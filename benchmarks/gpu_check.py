"""One prepared run that checks and measures sdekit on a device: everything a short GPU lease needs.

    python benchmarks/gpu_check.py --device cuda --json runs/gpu_check.json   # < 8 minutes on an H200
    python benchmarks/gpu_check.py --device cpu --tiny --json /tmp/check.json  # CI (tests/test_gpu_check.py)

Stages, each timed, bounded by its own time limit inside a total budget (``--budget``), and failing on
its own (the error text goes to the JSON and the run goes on):

1. ``tests``: the test suite's CUDA tests and the device tests (``-k "cuda or devices"``:
   ``tests/test_devices.py``, ``tests/plugins/test_devices_plugin.py`` and the ``cuda``-marked tests)
   in a pytest subprocess with ``SDEKIT_TEST_DEVICE`` set to the device.
2. ``syncs``: host-device synchronisations in the loops of fixed-step ``sdekit.solve`` (every
   fixed-step core solver) and of every fixed-grid sampler of the registry, on a VP and a discrete
   (DDPM) schedule. Each case is warmed up once, then run at 8 and 16 steps with
   ``torch.cuda.set_sync_debug_mode("warn")``, each warning's Python stack recorded: the syncs that
   grow with the steps are the loop's (both step counts fit in one chunk of ``sdekit.solve``, so its
   one designed sync per chunk counts as set-up). Then the 16-step run again with the mode
   ``"error"`` from the model's second evaluation to its last, which names the first sync inside
   the loop. On the CPU the CUDA mode does not apply (the stage is not judged there); the same
   stacks are collected, and reported, for the calls a GPU would have to wait for (``item``,
   ``bool``, ``float``, ``tolist``, ``nonzero``, boolean masks, tensors built from host data with
   ``device=``) by a ``TorchFunctionMode``.
3. ``brownian``: ``sdekit.BrownianTree`` (full-batch and per-sample queries, with Lévy area) and
   ``sdekit.brownian.PerSampleNoise`` on the device against the CPU for the same seed, and the integer
   stage of the counter-based normals bit for bit.
4. ``unet``: the 32x32 diffusers-config U-Net of google/ddpm-cifar10-32 (random weights; the project's
   ``skd.nets.UNet`` of the same shape when diffusers is absent) at batch 256 (``--tiny``: a tiny
   config, batch 4): for ``ddim``, ``dpm_solver++_2m``, ``unipc`` (when registered) and
   ``euler_maruyama``, the sampler's time beyond the network's own time on the very inputs the
   sampler gave it (target at most 5 %), and the time per step beside diffusers' ``DDIMScheduler``
   and ``DPMSolverMultistepScheduler`` loops on the same model.
5. ``training``: the digits U-Net of ``benchmarks/train_digits.py`` (``--tiny``: base 8) for a fixed
   number of steps in float32 and in bf16 autocast (an explicit loop with ``skd.dsm_loss``: the
   Trainer has no precision option, it autocasts bf16 on CUDA), and through ``skd.Trainer``
   (steps/s, final loss).
6. ``distributed``: a one-process NCCL group (Gloo on the CPU) through
   ``sdekit_diffusion.distributed.DistributedTrainer``, in a subprocess with torchrun's variables.

Writes one JSON (after every stage, so a killed run leaves what it had) and prints one table. Exits 1
when a stage ended in error, timeout or failure.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "plugins", ROOT):   # the checkout's packages, installed or not
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

import sdekit  # noqa: E402
import sdekit_diffusion as skd  # noqa: E402
from sdekit.brownian import BrownianTree, PerSampleNoise, counter_words  # noqa: E402

TOTAL_BUDGET = 450.0          # seconds: the whole run stays under 8 minutes on an H200
RESERVE = 8.0                 # kept back for the JSON and the table
SYNC_STEPS = (8, 16)          # both inside one chunk of sdekit.solve (CHUNK = 32)
OVERHEAD_TARGET = 0.05        # issue 14: a sampler adds at most 5 % to the network's time
BENCH_SAMPLERS = ("ddim", "dpm_solver++_2m", "unipc", "euler_maruyama")
DIFFUSERS_LOOPS = {"ddim": "DDIMScheduler", "dpm_solver++_2m": "DPMSolverMultistepScheduler"}
# google/ddpm-cifar10-32: its scheduler's betas and its UNet2DModel configuration
DDPM_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
CIFAR10_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
TINY_UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
# the project's U-Net of the same shape (levels, blocks, attention at 16x16) when diffusers is absent
PROJECT_UNET = dict(channels=3, base=128, channel_mults=(1, 2, 2, 2), attention_resolutions=(16,),
                    num_res_blocks=2, time_scale=1e-3)
PROJECT_TINY_UNET = dict(channels=3, base=16, channel_mults=(1, 2), attention_resolutions=(4,),
                         time_scale=1e-3)
DIGITS_UNET = dict(channels=1, base=32, channel_mults=(1, 2), attention_resolutions=(4,))  # train_digits.py
DIGITS_TINY_UNET = dict(DIGITS_UNET, base=8)   # bf16 autocast on a CPU is ~8x slower than float32 at base 32


@dataclass(frozen=True)
class Sizes:
    unet_batch: int
    unet_steps: int
    repeats: int
    train_steps: int
    train_batch: int
    distributed_steps: int


DEFAULT_SIZES = Sizes(unet_batch=256, unet_steps=10, repeats=3, train_steps=200, train_batch=128,
                      distributed_steps=20)
TINY_SIZES = Sizes(unet_batch=4, unet_steps=3, repeats=1, train_steps=4, train_batch=16,
                   distributed_steps=2)


class StageTimeout(BaseException):
    """A stage ran past its limit (a BaseException, so that no ``except Exception`` swallows it)."""


@dataclass
class Run:
    device: torch.device
    tiny: bool
    sizes: Sizes
    scratch: Path
    limit: float = 0.0     # seconds the current stage may take


Row = tuple[str, str, str, str]   # stage, item, status, result


# ---------------------------------------------------------------------------------------------
# helpers

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls (seconds), the device synchronised around each."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def site(frames) -> str:
    """``path:line in function`` of the innermost frame outside torch and the warnings machinery
    (the line of sdekit, or of the score function, that asked for the sync), from a list of
    ``traceback.FrameSummary``."""
    skipped = (str(Path(torch.__file__).resolve().parent), str(Path(warnings.__file__).resolve()))
    chosen = next((f for f in reversed(frames) if not str(Path(f.filename).resolve()).startswith(skipped)),
                  frames[-1])
    path = Path(chosen.filename).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"{shown}:{chosen.lineno} in {chosen.name}"


def error_text(error: BaseException) -> str:
    """The exception and the last frames of its traceback, for the JSON."""
    frames = traceback.extract_tb(error.__traceback__)[-3:]
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
    return f"{type(error).__name__}: {error}" + (f" (at {where})" if where else "")


def subprocess_env(**extra: str) -> dict:
    path = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise StageTimeout(f"stopped at its time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# 1. the test suite's CUDA tests and the device tests

def device_test_files() -> list[Path]:
    """The device tests and every test file that mentions CUDA (``-k "cuda or devices"`` picks the
    tests inside them)."""
    files = {ROOT / "tests" / "test_devices.py", ROOT / "tests" / "plugins" / "test_devices_plugin.py"}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name != "test_gpu_check.py" and "cuda" in path.read_text(encoding="utf-8"):
            files.add(path)
    return sorted(files)


def junit_summary(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "problems": []}
    if not path.is_file():
        return counts
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]
        counts[key] += 1
        if key != "skipped":
            counts["problems"].append(f"{name}: {(outcome.get('message') or '')[:400]}")
    return counts


def stage_tests(run: Run, record: dict) -> list[Row]:
    junit = run.scratch / "tests.xml"
    files = [str(path.relative_to(ROOT)) for path in device_test_files()]
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-k", "cuda or devices",
               f"--junitxml={junit}", *files]
    record["command"] = f"SDEKIT_TEST_DEVICE={run.device} " + " ".join(command[1:])
    try:
        result = subprocess.run(command, cwd=ROOT, env=subprocess_env(SDEKIT_TEST_DEVICE=str(run.device)),
                                capture_output=True, text=True, timeout=max(run.limit - 3, 1))
    except subprocess.TimeoutExpired as expired:
        record["output_tail"] = (expired.stdout or b"")[-3000:].decode("utf-8", "replace") \
            if isinstance(expired.stdout, bytes) else (expired.stdout or "")[-3000:]
        raise StageTimeout(f"pytest ran past {expired.timeout:.0f} s") from None
    record.update(junit_summary(junit))
    record["returncode"] = result.returncode
    record["output_tail"] = (result.stdout + result.stderr)[-3000:]
    ok = result.returncode == 0 and record["passed"] > 0
    record["status"] = "ok" if ok else "failed"
    summary = (f"{record['passed']} passed, {record['failed']} failed, {record['errors']} errors, "
               f"{record['skipped']} skipped")
    rows = [("tests", f"pytest -k 'cuda or devices' on {run.device}", record["status"], summary)]
    rows += [("tests", "  " + problem.split(":")[0][:60], "failed", problem[:100])
             for problem in record["problems"][:8]]
    return rows


# ---------------------------------------------------------------------------------------------
# 2. host-device syncs in the fixed-step loops

class Window:
    """Counts the model's evaluations and calls ``on`` as the ``first`` one starts and ``off`` as
    the ``last`` one ends (the loop's span, past the first evaluation's one-time checks)."""

    def __init__(self, first: int = 0, last: int = 0, on: Callable = lambda: None, off: Callable = lambda: None):
        self.first, self.last, self.on, self.off = first, last, on, off
        self.calls = 0

    def enter(self) -> None:
        self.calls += 1
        if self.calls == self.first:
            self.on()

    def leave(self) -> None:
        if self.calls == self.last:
            self.off()

    def wrap(self, function: Callable) -> Callable:
        def watched(t, x):
            self.enter()
            value = function(t, x)
            self.leave()
            return value
        return watched


class WatchedDecay(sdekit.ODE):
    """dx/dt = -x, its evaluations counted by a :class:`Window`."""

    def __init__(self, window: Window):
        self.drift = window.wrap(lambda t, x: -x)


class WatchedOrnsteinUhlenbeck(sdekit.SDE):
    """dx = -x dt + 0.5 dW (additive noise) with the score of its stationary law N(0, 1/8)."""

    noise_type = "additive"

    def __init__(self, window: Window):
        self.drift = window.wrap(lambda t, x: -x)
        self.score = window.wrap(lambda t, x: -8.0 * x)

    def diffusion(self, t, x):
        return torch.full_like(x, 0.5)


class CudaSyncs:
    """``torch.cuda.set_sync_debug_mode``: ``"warn"`` to count syncs (each warning's Python stack
    gives its site), ``"error"`` to stop at the first one inside a :class:`Window`."""

    method = ("torch.cuda.set_sync_debug_mode: 'warn' over a whole run, every warning's site taken from its "
              "Python stack; 'error' from the model's 2nd evaluation to its last")
    can_raise = True

    def __init__(self, set_mode: Callable[[str], None] | None = None):
        self.set_mode = set_mode or torch.cuda.set_sync_debug_mode

    def count(self, function: Callable[[], object]) -> Counter:
        sites: Counter = Counter()

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                sites[site(traceback.extract_stack()[:-1])] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            self.set_mode("warn")
            try:
                function()
            finally:
                self.set_mode("default")
        return sites

    def first_error(self, function: Callable[[Window], object], first: int, last: int) -> dict:
        window = Window(first, last, on=lambda: self.set_mode("error"), off=lambda: self.set_mode("default"))
        try:
            function(window)
        except RuntimeError as error:
            if "synchroniz" not in str(error):
                raise
            return {"raised": True, "site": site(traceback.extract_tb(error.__traceback__)),
                    "at_evaluation": window.calls, "window": [first, last]}
        finally:
            self.set_mode("default")
        return {"raised": False, "window": [first, last], "evaluations": window.calls}


class HostReads:
    """The CPU's stand-in for :class:`CudaSyncs`: a ``TorchFunctionMode`` counting, with their sites,
    the calls that make a GPU wait (a device value read on the host, a size known only from the data,
    a tensor built from host data for a ``device=``)."""

    method = ("CPU proxy (torch.cuda.set_sync_debug_mode is not applicable on the CPU): a TorchFunctionMode "
              "counts item, tolist, bool/float/int/index/format of tensors, nonzero, unique, masked_select, "
              "boolean-mask indexing and tensors built from host data with device=, each with its Python stack")
    can_raise = False
    READS = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__",
                       "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount",
                       "numpy"})
    CREATIONS = frozenset({"tensor", "as_tensor", "new_tensor"})

    def count(self, function: Callable[[], object]) -> Counter:
        from torch.overrides import TorchFunctionMode

        sites: Counter = Counter()
        reads, creations = self.READS, self.CREATIONS

        def masked(args) -> bool:
            index = args[1] if len(args) > 1 else None
            indices = index if isinstance(index, tuple) else (index,)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", "")
                if (name in reads or (name == "__getitem__" and masked(args))
                        or (name in creations and "device" in kwargs and args
                            and not isinstance(args[0], torch.Tensor))):
                    sites[site(traceback.extract_stack()[:-1])] += 1
                return func(*args, **kwargs)

        with Mode():
            function()
        return sites


def check_loop(watcher, run: Callable[[int, Window], object], calls_per_step: int) -> dict:
    """Syncs of ``run(steps, window)`` at the two step counts of :data:`SYNC_STEPS` (after a warm-up),
    the sites whose count grows with the steps, and (on CUDA) the first sync inside the loop."""
    n1, n2 = SYNC_STEPS
    run(n1, Window())
    first = watcher.count(lambda: run(n1, Window()))
    second = watcher.count(lambda: run(n2, Window()))
    per_step = (sum(second.values()) - sum(first.values())) / (n2 - n1)
    growing = {s: (second[s] - first[s]) / (n2 - n1) for s in set(first) | set(second) if second[s] != first[s]}
    result = {"syncs": {str(n1): sum(first.values()), str(n2): sum(second.values())},
              "syncs_per_step": per_step, "loop_sites": growing, "sites": dict(first.most_common(8))}
    clean = per_step == 0 and not growing
    if watcher.can_raise:
        result["error_mode"] = watcher.first_error(lambda window: run(n2, window), 2, n2 * calls_per_step)
        clean = clean and not result["error_mode"]["raised"]
    else:
        result["error_mode"] = "not applicable on the CPU"
    result["status"] = "ok" if clean else ("sync" if watcher.can_raise else "host reads")
    return result


def sync_cases(device: torch.device):
    """``(label, run(steps, window), model evaluations per step)`` for every fixed-step core solver
    and every fixed-grid sampler of the registry (on a VP and a discrete DDPM schedule)."""
    x0 = torch.linspace(-1.0, 1.0, 32, device=device).reshape(4, 8)
    for info in sdekit.solvers.available():
        if info["adaptive"]:
            continue
        solver = sdekit.solvers.get(info["name"])
        per_step = info["evals_per_step"] + (getattr(solver, "n_corrector_steps", 0) if solver.needs_score else 0)
        is_sde = info["kind"] == "sde"
        trees = (False, True) if info["name"] == "euler_maruyama" else (False,)
        for tree in trees:
            def run(steps, window, name=info["name"], is_sde=is_sde, tree=tree):
                problem = WatchedOrnsteinUhlenbeck(window) if is_sde else WatchedDecay(window)
                brownian = (BrownianTree(0.0, 1.0, tuple(x0.shape), seed=0, dtype=x0.dtype, device=device)
                            if tree else None)
                return sdekit.solve(problem, x0, 0.0, 1.0, solver=name, steps=steps, brownian=brownian)
            yield f"solve {info['name']}" + (" + BrownianTree" if tree else ""), run, per_step
    sdes = {"vp": skd.VPSDE(), "ddpm": skd.DiffusionSDE.from_betas(torch.linspace(1e-4, 0.02, 1000))}
    means = torch.linspace(-1.0, 1.0, 16, device=device).reshape(2, 8)
    mixture = skd.GaussianMixture(torch.tensor([0.3, 0.7], device=device), means,
                                  torch.tensor([0.3, 0.5], device=device))
    for record in skd.samplers.records():
        if record.adaptive:
            continue
        for label, sde in sdes.items():
            score = mixture.score_fn(sde)

            def run(steps, window, name=record.name, sde=sde, score=score):
                return skd.sample(sde, window.wrap(score), (4, 8), solver=name, steps=steps, seed=0,
                                  device=device, dtype=torch.float32)
            yield f"sample {record.name} [{label}]", run, record.calls_per_step({})
    for name in ("ddim", "euler_maruyama"):   # with a callback: the core samplers then solve step by step
        sde = sdes["vp"]
        score = mixture.score_fn(sde)

        def run(steps, window, name=name, sde=sde, score=score):
            return skd.sample(sde, window.wrap(score), (4, 8), solver=name, steps=steps, seed=0, device=device,
                              dtype=torch.float32, callback=lambda i, x, t, denoised: None)
        yield f"sample {name} [vp] + callback", run, skd.samplers.get(name).calls_per_step({})


def stage_syncs(run: Run, record: dict) -> list[Row]:
    watcher = CudaSyncs() if run.device.type == "cuda" else HostReads()
    record["method"] = watcher.method
    record["sync_debug_mode"] = "used" if run.device.type == "cuda" else "not applicable on the CPU"
    record["steps"] = list(SYNC_STEPS)
    items = record["items"] = {}
    rows: list[Row] = []
    for label, case, per_step in sync_cases(run.device):
        try:
            items[label] = check_loop(watcher, case, per_step)
        except Exception as error:
            items[label] = {"status": "error", "error": error_text(error)}
        item = items[label]
        if item["status"] == "error":
            rows.append(("syncs", label, "error", item["error"][:100]))
        elif item["status"] != "ok":   # the clean cases are counted in the summary row
            result = f"{item['syncs_per_step']:g}/step in the loop"
            if item["loop_sites"]:
                ranked = sorted(item["loop_sites"].items(), key=lambda pair: (-pair[1], pair[0]))
                result += ": " + ", ".join(f"{s} x{n:g}" for s, n in ranked[:3])
                result += ", ..." if len(ranked) > 3 else ""
            if isinstance(item["error_mode"], dict) and item["error_mode"]["raised"]:
                result += f"; error mode stopped at {item['error_mode']['site']}"
            rows.append(("syncs", label, item["status"], result))
    statuses = [item["status"] for item in items.values()]
    if "error" in statuses:
        record["status"] = "error"
    elif "sync" in statuses:
        record["status"] = "failed"
    else:   # on the CPU the sync check does not apply: the proxy's host reads are reported, not judged
        record["status"] = "ok"
    record["counts"] = dict(Counter(statuses))
    clean = [label for label, item in items.items() if item["status"] == "ok"]
    setup = max((items[label]["syncs"][str(SYNC_STEPS[0])] for label in clean), default=0)
    what = "sync" if watcher.can_raise else "host read"
    rows.insert(0, ("syncs", f"{len(clean)} of {len(items)} loops without a {what}", record["status"],
                    f"{record['method'].split(':')[0]}; the clean ones: at most {setup} {what}s per run, "
                    "in set-up and final checks"))
    return rows


# ---------------------------------------------------------------------------------------------
# 3. Brownian noise: device against CPU

def difference(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    """Largest absolute difference, and relative to the largest expected value."""
    actual = actual.detach().cpu().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    absolute = (actual - expected).abs().max().item()
    return {"max_abs": absolute, "max_rel": absolute / max(expected.abs().max().item(), 1e-300)}


def holds(condition: bool) -> dict:
    """A yes/no check in the shape of :func:`difference` (0 when it holds, infinite otherwise)."""
    return {"max_abs": 0.0 if condition else math.inf, "max_rel": 0.0 if condition else math.inf}


def stage_brownian(run: Run, record: dict) -> list[Row]:
    cpu, device = torch.device("cpu"), run.device
    record["note"] = ("device against CPU" if device != cpu else
                      "the device is the CPU: compares the CPU with itself (differences must be 0)")
    # float32 log/cos/sin round differently on CPU and GPU by an ulp or two (the tree's normals are
    # float32 Box-Muller for every dtype): ~1e-7 relative
    tolerance = 1e-5
    record["tolerance_rel"] = tolerance
    shape = (16, 3, 8, 8)
    ts = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.93, 1.0], dtype=torch.float64)
    ta = torch.linspace(0.0, 0.5, shape[0], dtype=torch.float64)
    tb = ta + torch.linspace(0.05, 0.5, shape[0], dtype=torch.float64)
    checks = record["checks"] = {}
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).replace("torch.", "")
        make = lambda on: BrownianTree(0.0, 1.0, shape, seed=11, dtype=dtype, device=on, sample_offset=5)
        tree, reference = make(device), make(cpu)
        dW, H = tree.increments(ts.to(device), levy_area=True)
        dW_cpu, H_cpu = reference.increments(ts, levy_area=True)
        checks[f"tree dW {name}"], checks[f"tree H {name}"] = difference(dW, dW_cpu), difference(H, H_cpu)
        dW, H = tree.increments_per_sample(ta.to(device), tb.to(device))
        dW_cpu, H_cpu = reference.increments_per_sample(ta, tb)
        checks[f"tree per-sample dW {name}"] = difference(dW, dW_cpu)
        checks[f"tree per-sample H {name}"] = difference(H, H_cpu)
        make = lambda on: PerSampleNoise(shape, seed=5, sample_offset=3, dtype=dtype, device=on)
        noise, reference = make(device), make(cpu)
        for draw in range(2):
            dW, H = noise.increments(ts.flip(0).to(device=device, dtype=dtype), levy_area=True)
            dW_cpu, H_cpu = reference.increments(ts.flip(0).to(dtype), levy_area=True)
            checks[f"per-sample noise dW {name} (call {draw + 1})"] = difference(dW, dW_cpu)
            checks[f"per-sample noise H {name} (call {draw + 1})"] = difference(H, H_cpu)
        checks[f"outputs on {device.type} in {name}"] = holds(dW.device.type == device.type and dW.dtype == dtype)
    keys = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 + 5, 2**62 + 3], dtype=torch.int64)
    words = counter_words(123456789, keys.to(device), 64)
    checks["counter words (bit-exact)"] = holds(torch.equal(words.cpu(), counter_words(123456789, keys, 64)))
    rows = []
    for label, values in checks.items():
        values["status"] = "ok" if values["max_rel"] <= tolerance else "failed"
        if values["status"] != "ok":
            rows.append(("brownian", label, "failed",
                         f"max |diff| {values['max_abs']:.2g} (rel {values['max_rel']:.2g})"))
    record["status"] = "ok" if not rows else "failed"
    worst = max(checks.items(), key=lambda item: item[1]["max_rel"])
    rows.insert(0, ("brownian", f"tree, per-sample noise, counter words: {len(checks)} checks", record["status"],
                    f"{record['note']}; largest rel. difference {worst[1]['max_rel']:.2g} ({worst[0]}), "
                    f"tolerance {tolerance:g}"))
    return rows


# ---------------------------------------------------------------------------------------------
# 4. sampler overhead on the CIFAR-10 U-Net

def import_diffusers():
    """diffusers, or ``None`` and the reason."""
    try:
        import diffusers
        return diffusers, None
    except Exception as error:   # absent, or broken by its own dependencies
        return None, error_text(error)


def cifar_model(run: Run, record: dict):
    """``(model, sde, score_fn, diffusers or None)`` for the 32x32 U-Net (random weights)."""
    diffusers, why = import_diffusers()
    torch.manual_seed(0)
    if diffusers is not None:
        model = diffusers.UNet2DModel(**(TINY_UNET if run.tiny else CIFAR10_UNET))
        scheduler = diffusers.DDPMScheduler(**DDPM_BETAS)
        record["model"] = f"diffusers {diffusers.__version__} UNet2DModel " + ("(tiny config)" if run.tiny else
                                                                              "(google/ddpm-cifar10-32 config)")
        model = model.to(run.device).eval()
        if hasattr(skd.adapters, "from_diffusers"):
            sde, score_fn = skd.adapters.from_diffusers(model, scheduler)
            record["wrapper"] = "skd.adapters.from_diffusers"
        else:
            sde = skd.DiffusionSDE.from_alphas_cumprod(scheduler.alphas_cumprod)
            score_fn = skd.as_score(model, sde, "eps", model_time=sde.schedule.model_time)
            record["wrapper"] = "skd.DiffusionSDE.from_alphas_cumprod + skd.as_score"
    else:
        config = PROJECT_TINY_UNET if run.tiny else PROJECT_UNET
        model = skd.nets.UNet(**config).to(run.device).eval()
        sde = skd.DiffusionSDE.from_betas(torch.linspace(DDPM_BETAS["beta_start"], DDPM_BETAS["beta_end"],
                                                         DDPM_BETAS["num_train_timesteps"], dtype=torch.float64))
        score_fn = skd.as_score(model, sde, "eps")
        record["model"] = f"skd.nets.UNet({config}) (diffusers unavailable: {why})"
        record["wrapper"] = "skd.as_score"
    record["parameters"] = sum(p.numel() for p in model.parameters())
    return model, sde, score_fn, diffusers


def diffusers_loop(diffusers, kind: str, model, x_T: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
    """diffusers' own sampling loop with the scheduler ``kind`` on ``model``."""
    options = dict(DDPM_BETAS, timestep_spacing="trailing")
    if kind == "DDIMScheduler":
        scheduler = diffusers.DDIMScheduler(**options, clip_sample=False, set_alpha_to_one=False)
    else:
        scheduler = diffusers.DPMSolverMultistepScheduler(**options, algorithm_type="dpmsolver++", solver_order=2)

    def loop() -> torch.Tensor:
        scheduler.set_timesteps(steps, device=x_T.device)
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x).prev_sample
        return x
    return loop


def bench_sampler(name: str, sde, score_fn, model, diffusers, x_T: torch.Tensor, run: Run) -> tuple[dict, str]:
    """Time ``name`` on the model and the network alone on the inputs it gave the model; count its
    syncs; time diffusers' own loop beside it. Returns the JSON entry and the table's text."""
    sizes, device = run.sizes, run.device

    def sample():
        return skd.sample(sde, score_fn, x_T=x_T, solver=name, steps=sizes.unet_steps, time_grid="trailing", seed=0)

    inputs = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: inputs.append((args, kwargs)),
                                           with_kwargs=True)
    try:
        nfe = sample().nfe   # also the warm-up
    finally:
        hook.remove()
    sites = (CudaSyncs() if device.type == "cuda" else HostReads()).count(sample)
    sampler_seconds = best_time(sample, device, sizes.repeats)
    network_seconds = best_time(lambda: [model(*args, **kwargs) for args, kwargs in inputs], device, sizes.repeats)
    overhead = sampler_seconds / network_seconds - 1
    entry = dict(nfe=nfe, network_calls=len(inputs), sampler_s=sampler_seconds, network_s=network_seconds,
                 overhead=overhead, per_step_ms=1e3 * sampler_seconds / sizes.unet_steps,
                 network_per_call_ms=1e3 * network_seconds / len(inputs), meets_target=overhead <= OVERHEAD_TARGET,
                 syncs_per_run=sum(sites.values()), sync_sites=dict(sites.most_common(6)), status="ok")
    target = f"{'within' if entry['meets_target'] else 'above'} {100 * OVERHEAD_TARGET:.0f}%"
    text = (f"{entry['per_step_ms']:.3g} ms/step, net {entry['network_per_call_ms']:.3g} ms/call, overhead "
            f"{100 * overhead:+.1f}% ({target}), {entry['syncs_per_run']} syncs/run")
    if name in DIFFUSERS_LOOPS:
        if diffusers is None:
            entry["diffusers"] = "diffusers unavailable"
        else:
            kind = DIFFUSERS_LOOPS[name]
            loop = diffusers_loop(diffusers, kind, model, x_T, sizes.unet_steps)
            loop()
            loop_seconds = best_time(loop, device, sizes.repeats)
            entry["diffusers"] = {"scheduler": kind, "loop_s": loop_seconds,
                                  "per_step_ms": 1e3 * loop_seconds / sizes.unet_steps}
            text += f"; diffusers {kind} {entry['diffusers']['per_step_ms']:.3g} ms/step"
    return entry, text


def stage_unet(run: Run, record: dict) -> list[Row]:
    sizes, device = run.sizes, run.device
    model, sde, score_fn, diffusers = cifar_model(run, record)
    size = (TINY_UNET if run.tiny else CIFAR10_UNET)["sample_size"]
    record.update(batch=sizes.unet_batch, steps=sizes.unet_steps, repeats=sizes.repeats, time_grid="trailing",
                  dtype="float32", target_overhead=OVERHEAD_TARGET,
                  method="min over repeats of the sampler's wall time against the same network's wall time on "
                         "the inputs the sampler gave it (recorded by a forward pre-hook); overhead = "
                         "sampler / network - 1; syncs counted as in the syncs stage, over one whole run")
    x_T = torch.randn((sizes.unet_batch, 3, size, size), generator=torch.Generator(device).manual_seed(0),
                      device=device)
    samplers = record["samplers"] = {}
    rows: list[Row] = [("unet", f"{record['parameters'] / 1e6:.1f}M-parameter U-Net, batch {sizes.unet_batch}",
                        "info", record["model"][:100])]
    with torch.no_grad():
        for name in BENCH_SAMPLERS:
            if name not in skd.samplers.available():
                samplers[name] = {"status": "skipped", "reason": "not registered"}
                rows.append(("unet", name, "skipped", "not registered in sdekit_diffusion.samplers"))
                continue
            try:
                samplers[name], text = bench_sampler(name, sde, score_fn, model, diffusers, x_T, run)
                rows.append(("unet", name, "ok", text))
            except Exception as error:
                samplers[name] = {"status": "error", "error": error_text(error)}
                rows.append(("unet", name, "error", error_text(error)[:100]))
    record["status"] = "error" if any(entry["status"] == "error" for entry in samplers.values()) else "ok"
    return rows


# ---------------------------------------------------------------------------------------------
# 5. training the digits U-Net: float32, bf16 autocast, the Trainer

def trainer_precision_options() -> list[str]:
    """Parameters of ``skd.Trainer`` that look like a precision switch (none: it autocasts bf16 on
    CUDA, float32 elsewhere, per ``Trainer.loss``)."""
    import inspect

    names = inspect.signature(skd.Trainer).parameters
    return [name for name in names if any(word in name for word in ("autocast", "precision", "amp", "dtype"))]


def stage_training(run: Run, record: dict) -> list[Row]:
    sizes, device = run.sizes, run.device
    images = skd.data.digits()
    data = images.to(device)
    sde = skd.VPSDE()
    config = DIGITS_TINY_UNET if run.tiny else DIGITS_UNET
    record.update(net=f"skd.nets.UNet({config})", steps=sizes.train_steps, batch=sizes.train_batch,
                  data=f"digits {tuple(images.shape)}", trainer_precision_options=trainer_precision_options())
    rows: list[Row] = []
    results = record["results"] = {}
    warmup = 1 if run.tiny else 3
    for precision in ("float32", "bf16 autocast"):
        try:
            torch.manual_seed(0)
            net = skd.nets.UNet(**config).to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
            generator = torch.Generator(device).manual_seed(0)
            autocast = precision != "float32"

            def step() -> torch.Tensor:
                index = torch.randint(0, data.shape[0], (sizes.train_batch,), generator=generator, device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = skd.dsm_loss(sde, net, data[index], generator=generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
                return loss.detach()

            for _ in range(warmup):
                step()
            synchronize(device)
            start = time.perf_counter()
            losses = [step() for _ in range(sizes.train_steps)]
            synchronize(device)
            seconds = time.perf_counter() - start
            final = torch.stack(losses[-min(20, len(losses)):]).float().mean().item()
            results[precision] = dict(steps_per_s=sizes.train_steps / seconds, seconds=seconds, final_loss=final,
                                      finite=math.isfinite(final), status="ok" if math.isfinite(final) else "failed")
        except Exception as error:
            results[precision] = {"status": "error", "error": error_text(error)}
    try:
        torch.manual_seed(0)
        trainer = skd.Trainer(skd.nets.UNet(**config), sde, lr=2e-3, device=device, progress=False, seed=0)
        trainer.fit(images, steps=warmup, batch_size=sizes.train_batch)
        synchronize(device)
        start = time.perf_counter()
        losses = trainer.fit(images, steps=warmup + sizes.train_steps, batch_size=sizes.train_batch)
        synchronize(device)
        seconds = time.perf_counter() - start
        final = sum(losses[-20:]) / len(losses[-20:])
        results["skd.Trainer"] = dict(steps_per_s=sizes.train_steps / seconds, seconds=seconds, final_loss=final,
                                      finite=math.isfinite(final), status="ok" if math.isfinite(final) else "failed",
                                      precision="bf16 autocast on CUDA, float32 elsewhere (Trainer.loss)")
    except Exception as error:
        results["skd.Trainer"] = {"status": "error", "error": error_text(error)}
    for label, entry in results.items():
        if entry["status"] == "error":
            rows.append(("training", label, "error", entry["error"][:100]))
        else:
            rows.append(("training", label, entry["status"],
                         f"{entry['steps_per_s']:.3g} steps/s, final loss {entry['final_loss']:.4g} "
                         f"({sizes.train_steps} steps, batch {sizes.train_batch})"))
    statuses = {entry["status"] for entry in results.values()}
    record["status"] = "ok" if statuses == {"ok"} else ("error" if "error" in statuses else "failed")
    return rows


# ---------------------------------------------------------------------------------------------
# 6. a one-process group through the distributed trainer

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def distributed_worker(path: Path, device: torch.device, tiny: bool) -> None:
    """The subprocess of :func:`stage_distributed` (run with torchrun's variables set)."""
    import torch.distributed as dist
    from sdekit_diffusion.distributed import DistributedTrainer, shutdown

    backend = "nccl" if device.type == "cuda" else "gloo"
    start = time.perf_counter()
    torch.manual_seed(0)
    sizes = TINY_SIZES if tiny else DEFAULT_SIZES
    net = skd.nets.UNet(**(DIGITS_TINY_UNET if tiny else DIGITS_UNET))
    trainer = DistributedTrainer(net, skd.VPSDE(), lr=2e-3, progress=False, seed=0, backend=backend,
                                 device="auto" if device.type == "cuda" else "cpu")   # auto: cuda:LOCAL_RANK
    joined = time.perf_counter() - start
    start = time.perf_counter()
    losses = trainer.fit(skd.data.digits(), steps=sizes.distributed_steps, batch_size=sizes.train_batch)
    trained = time.perf_counter() - start
    probe = torch.full((4,), 2.0, device=trainer.device)
    dist.all_reduce(probe)
    ranks = torch.arange(3.0, device=trainer.device) + dist.get_rank()
    dist.broadcast(ranks, src=0)
    result = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "rank": dist.get_rank(),
              "local_rank": trainer.context.local_rank, "trainer_device": str(trainer.device),
              "parameters_on": str(next(trainer.net.parameters()).device), "steps": trainer.step,
              "final_loss": losses[-1], "all_reduce_ok": bool((probe == 2.0 * dist.get_world_size()).all()),
              "broadcast_ok": bool(torch.equal(ranks, torch.arange(3.0, device=trainer.device))),
              "join_s": joined, "train_s": trained,
              "note": "DistributedTrainer all-reduces gradients and losses only when world_size > 1 "
                      "(Context.distributed); with one process the collectives above exercise the backend"}
    shutdown()
    path.write_text(json.dumps(result, indent=2))


def stage_distributed(run: Run, record: dict) -> list[Row]:
    out = run.scratch / "distributed.json"
    port = free_port()
    env = subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    command = [sys.executable, str(Path(__file__).resolve()), "--distributed-worker", str(out),
               "--device", str(run.device)] + (["--tiny"] if run.tiny else [])
    record["env"] = {key: env[key] for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=max(run.limit - 3, 1))
    except subprocess.TimeoutExpired as expired:
        raise StageTimeout(f"the worker ran past {expired.timeout:.0f} s") from None
    record["returncode"] = result.returncode
    if result.returncode != 0 or not out.is_file():
        record["status"] = "error"
        record["error"] = (result.stdout + result.stderr)[-3000:]
        return [("distributed", "one-process group", "error", record["error"].strip().splitlines()[-1][:100]
                 if record["error"].strip() else f"exit code {result.returncode}")]
    record.update(json.loads(out.read_text()))
    ok = (record["all_reduce_ok"] and record["broadcast_ok"] and math.isfinite(record["final_loss"])
          and record["steps"] == run.sizes.distributed_steps)
    record["status"] = "ok" if ok else "failed"
    collectives = "ok" if record["all_reduce_ok"] and record["broadcast_ok"] else "WRONG"
    text = (f"join {record['join_s']:.1f} s, {record['steps']} steps in {record['train_s']:.1f} s, "
            f"loss {record['final_loss']:.4g}, all-reduce and broadcast {collectives}")
    return [("distributed", f"{record['backend']}, world size {record['world_size']}, {record['parameters_on']}",
             record["status"], text)]


# ---------------------------------------------------------------------------------------------
# driver

# name, function, budget (s), time kept for it while earlier stages run (s)
STAGES = (("tests", stage_tests, 150.0, 60.0), ("syncs", stage_syncs, 90.0, 30.0),
          ("brownian", stage_brownian, 30.0, 10.0), ("unet", stage_unet, 150.0, 45.0),
          ("training", stage_training, 60.0, 20.0), ("distributed", stage_distributed, 90.0, 45.0))


def environment(device: torch.device, tiny: bool, budget: float) -> dict:
    info = {"argv": sys.argv[1:], "device": str(device), "tiny": tiny, "budget_s": budget,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    diffusers, why = import_diffusers()
    info["diffusers"] = diffusers.__version__ if diffusers is not None else f"unavailable ({why})"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except Exception:
        info["commit"] = None
    return info


def print_table(rows: list[Row]) -> None:
    header = ("stage", "item", "status", "result")
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(3)]
    line = lambda row: "  ".join(str(cell).ljust(widths[i]) if i < 3 else str(cell) for i, cell in enumerate(row))
    print(line(header))
    print("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    for row in rows:
        print(line(row))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI on the CPU: well under a minute)")
    parser.add_argument("--json", default=str(ROOT / "runs" / "gpu_check.json"), help="default: %(default)s")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET,
                        help="total seconds for all stages (default: %(default)s)")
    parser.add_argument("--stages", default=",".join(name for name, *_ in STAGES),
                        help="comma-separated stages to run (default: all)")
    parser.add_argument("--distributed-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    sizes = TINY_SIZES if args.tiny else DEFAULT_SIZES
    if device.type == "cpu":
        torch.set_num_threads(1)   # small tensors: one thread avoids oversubscription (tests/conftest.py)
    if args.distributed_worker:
        distributed_worker(Path(args.distributed_worker), device, args.tiny)
        return 0
    chosen = args.stages.split(",")
    unknown = sorted(set(chosen) - {name for name, *_ in STAGES})
    if unknown:
        parser.error(f"unknown stages {unknown}; known: {[name for name, *_ in STAGES]}")
    started = time.monotonic()
    deadline = started + args.budget
    report = {"config": environment(device, args.tiny, args.budget), "sizes": asdict(sizes), "stages": {},
              "table": []}
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    stages = [stage for stage in STAGES if stage[0] in chosen]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        run = Run(device, args.tiny, sizes, Path(scratch))
        for index, (name, function, budget, _) in enumerate(stages):
            kept = sum(stage[3] for stage in stages[index + 1:])
            run.limit = min(budget, deadline - time.monotonic() - RESERVE - kept)
            record = report["stages"][name] = {"limit_s": round(run.limit, 1)}
            start = time.perf_counter()
            if run.limit < 1:
                record.update(status="skipped", error="no time left in the run's budget")
                stage_rows = [(name, "", "skipped", record["error"])]
            else:
                try:
                    with time_limit(run.limit):
                        stage_rows = function(run, record)
                    record.setdefault("status", "ok")
                except StageTimeout as timeout:
                    record.update(status="timeout", error=str(timeout))
                    stage_rows = [(name, "", "timeout", str(timeout))]
                except Exception as error:
                    record.update(status="error", error=error_text(error))
                    stage_rows = [(name, "", "error", record["error"][:100])]
                finally:
                    if device.type == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
                        torch.cuda.empty_cache()
            record["seconds"] = round(time.perf_counter() - start, 2)
            print(f"[gpu_check] {name}: {record['status']} in {record['seconds']:.1f} s", file=sys.stderr, flush=True)
            rows.append((name, f"({record['seconds']:.1f} s)", record["status"], ""))
            rows.extend(stage_rows)
            report["table"] = rows
            report["total_s"] = round(time.monotonic() - started, 2)
            json_path.write_text(json.dumps(report, indent=2, default=str))
    print_table(rows)
    print(f"total {report['total_s']:.1f} s; JSON: {json_path}")
    bad = [name for name, record in report["stages"].items() if record["status"] in ("error", "timeout", "failed")]
    if bad:
        print(f"stages not ok: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
