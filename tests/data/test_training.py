"""Short data-parallel training from S3: 2 ranks (gloo) x 2 loader workers each, the alphaflow TrainState, the
worker's checkpoint-and-resume flow (rank 0 saves its loader position; every rank resumes from it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from alphaflow.data import make_train_loader, prepare_arrays, read_manifest
from tests.support.data_arrays import make_arrays
from tests.support.s3_fixtures import _free_ports

pytestmark = [pytest.mark.s3, pytest.mark.slow]

WORLD, WORKERS, BATCH = 2, 2, 8       # per-rank batch; an epoch of 256 samples = 16 steps
N_SAMPLES, EPOCH_STEPS, SAVE_AT = 256, 16, 6


def _rank_main(rank: int, url: str, port: int, out: str, steps: int, resume: bool) -> None:
    import torch.distributed as dist

    from alphaflow.config import apply_overrides
    from alphaflow.presets import get_preset
    from alphaflow.train_state import TrainState

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg = apply_overrides(get_preset("tiny-cpu"), {"model.size": "micro", "model.patch_size": 2,
                                                       "batch_size": BATCH * WORLD, "total_steps": 40})
        m = read_manifest(url)
        train_state = TrainState(cfg, image_shape=m.image_shape, num_classes=m.num_classes)
        ckpt = Path(out) / "model.pt"
        position = train_state.load_checkpoint(str(ckpt))["position"] if resume else None
        loader = make_train_loader(url, batch_size=BATCH, rank=rank, world_size=WORLD, seed=cfg.seed, mode="exact",
                                   num_workers=WORKERS, position=position)
        batches = iter(loader)
        keys, losses = [], []
        for _ in range(steps):
            x, y = next(batches)
            losses.append(train_state.train_step(x, y)["loss"])
            keys.append(loader.last_keys)
            if not resume and train_state.step == SAVE_AT and rank == 0:
                train_state.save_checkpoint(str(ckpt), extra={"position": loader.position()})
        tag = "resumed" if resume else "first"
        Path(out, f"{tag}-rank{rank}.json").write_text(json.dumps({"keys": keys, "losses": losses,
                                                                  "step": train_state.step}))
    finally:
        dist.destroy_process_group()


def _run(url: str, out: Path, steps: int, resume: bool) -> list[dict]:
    port = _free_ports(1)[0]
    mp.spawn(_rank_main, args=(url, port, str(out), steps, resume), nprocs=WORLD, join=True)
    tag = "resumed" if resume else "first"
    return [json.loads((out / f"{tag}-rank{r}.json").read_text()) for r in range(WORLD)]


def test_two_ranks_two_workers_train_from_s3_with_exact_coverage_and_resume(s3_env, tmp_path):
    make_arrays(tmp_path / "src.npz", n=N_SAMPLES)
    url = prepare_arrays(str(tmp_path / "src.npz"), s3_env.prefix("train"), shard_size_mb=0.02)
    assert len(read_manifest(url).shards) > 2 * WORLD * WORKERS
    assert make_train_loader(url, batch_size=BATCH, rank=0, world_size=WORLD, mode="exact",
                             num_workers=WORKERS).batches_per_epoch == EPOCH_STEPS

    first = _run(url, tmp_path, EPOCH_STEPS, resume=False)
    seen = [k for r in first for batch in r["keys"] for k in batch]
    assert len(seen) == len(set(seen)) == N_SAMPLES           # one epoch: every sample exactly once over the ranks
    assert all(r["step"] == EPOCH_STEPS for r in first)
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in first)

    resumed = _run(url, tmp_path, EPOCH_STEPS - SAVE_AT, resume=True)
    for r in range(WORLD):
        assert resumed[r]["keys"] == first[r]["keys"][SAVE_AT:]   # the same batches, in the same order
        assert resumed[r]["step"] == EPOCH_STEPS
