"""Data-parallel training and sharded sampling: two processes under torchrun (Gloo, CPU).

Run directly by torchrun as the worker: ``torchrun --nproc_per_node=2 test_distributed.py OUT``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAMPLES, SAMPLE_STEPS, SEED = 12, 10, 20, 3


def worker(out: Path) -> None:
    """One rank: train a few steps (checkpoints by rank 0), save its weights, sample a sharded batch."""
    import sdekit_diffusion as skd
    from sdekit_diffusion import data
    from sdekit_diffusion.distributed import DistributedTrainer, sample_sharded, shutdown
    from sdekit_diffusion.nets import MLP

    torch.set_num_threads(1)
    torch.manual_seed(1000 + int(os.environ["RANK"]))  # different initial weights: rank 0's must win
    trainer = DistributedTrainer(MLP(2, hidden=32, depth=2), skd.VPSDE(), lr=1e-2, device="cpu", progress=False,
                                 checkpoint_dir=out / "checkpoints", checkpoint_every=5)
    trainer.fit(data.moons(256), steps=STEPS, batch_size=16)
    torch.save({"net": trainer.net.state_dict(), "ema": trainer.ema.state_dict(), "losses": trainer.losses},
               out / f"rank{trainer.rank}.pt")
    samples = sample_sharded(trainer.sde, trainer.score_fn(), SAMPLES, (2,), seed=SEED, steps=SAMPLE_STEPS)
    torch.save(samples, out / f"samples{trainer.rank}.pt")
    # Improved DDPM's importance sampler sees every rank's terms, so the ranks keep one history
    from sdekit_diffusion.vlb import quantize
    vlb = DistributedTrainer(MLP(2, hidden=16, depth=1, learn_variance=True), skd.DiffusionSDE.from_betas(
        torch.linspace(0.01, 0.3, 8)), loss="vlb", importance_sampling=True, device="cpu", progress=False)
    vlb.fit(quantize(data.moons(256) / 3), steps=4, batch_size=8)
    sampler = vlb.objective.importance_sampler
    torch.save({"history": sampler.history, "counts": sampler.counts}, out / f"importance{vlb.rank}.pt")
    shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with Gloo is unavailable")
    pytest.importorskip("torch.distributed.run", reason="torchrun is unavailable")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return out


def test_ranks_end_with_identical_weights(two_ranks):
    ranks = [torch.load(two_ranks / f"rank{r}.pt") for r in (0, 1)]
    for key in ("net", "ema"):
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]), f"{key}.{name} differs between ranks"
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == STEPS
    names = sorted(p.name for p in (two_ranks / "checkpoints").glob("step_*.pt"))
    assert names == ["step_00000010.pt", "step_00000012.pt"]


def test_importance_histories_are_shared_by_the_ranks(two_ranks):
    ranks = [torch.load(two_ranks / f"importance{r}.pt") for r in (0, 1)]
    assert torch.equal(ranks[0]["history"], ranks[1]["history"]) and torch.equal(ranks[0]["counts"], ranks[1]["counts"])
    assert int(ranks[0]["counts"].sum()) == 2 * 8 * 4   # both ranks' batches of 8, four steps


def test_sharded_sampling_equals_single_process(two_ranks):
    from sdekit_diffusion.distributed import sample_sharded, seeded_sample
    from sdekit_diffusion.training import Trainer

    gathered = [torch.load(two_ranks / f"samples{r}.pt") for r in (0, 1)]
    assert torch.equal(gathered[0], gathered[1]) and gathered[0].shape == (SAMPLES, 2)
    trainer = Trainer.load(two_ranks / "checkpoints" / "step_00000012.pt", device="cpu")
    single = sample_sharded(trainer.sde, trainer.score_fn(), SAMPLES, (2,), seed=SEED, steps=SAMPLE_STEPS,
                            dtype=torch.float32)
    torch.testing.assert_close(single, gathered[0], rtol=1e-5, atol=1e-5)
    # a sample does not depend on the batch it is computed in
    alone = seeded_sample(trainer.sde, trainer.score_fn(), [7], (2,), seed=SEED, steps=SAMPLE_STEPS, dtype=torch.float32)
    torch.testing.assert_close(alone[0], single[7], rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
