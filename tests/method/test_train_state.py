"""TrainState: a step, checkpoints (atomic, weights_only, resume), NonFiniteLossError, presets, 2-rank gloo sync."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alphaflow.checkpoint import load_generator, load_state
from alphaflow.config import apply_overrides
from alphaflow.presets import PRESETS, get_preset
from alphaflow.train_state import NonFiniteLossError, TrainState

torch.set_num_threads(1)
SHAPE = (1, 8, 8)


def small_cfg(**over):
    base = {"model.size": "micro", "model.patch_size": 2, "total_steps": 6, "batch_size": 8,
            "alpha.k_s": 0.0, "alpha.k_e": 1.0, "diagnostics_every": 2, "ema.extra_half_lives": [1.0], "ema.ramp": 1.0}
    return apply_overrides(get_preset("tiny-cpu"), {**base, **over})


def data(step, n=8):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_train_step_logs_and_moves_weights():
    tr = TrainState(small_cfg(), SHAPE, 10)
    before = [p.detach().clone() for p in tr.model.parameters()]
    logs = tr.train_step(*data(0))
    assert tr.step == 1
    for key in ("loss", "alpha", "ratio_fm", "lr", "grad_norm", "beta_mean", "cfg_scale", "l_tfm", "l_tcc"):
        assert math.isfinite(logs[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    out = tr.sample(torch.randn(3, *SHAPE), torch.arange(3), nfe=2)
    assert out.shape == (3, *SHAPE) and out.dtype == torch.float32


def test_all_stages_run_and_grad_cos_appears():
    tr = TrainState(small_cfg(total_steps=8, **{"alpha.k_s": 0.1, "alpha.k_e": 0.6}), SHAPE, 10)
    seen = []
    for i in range(8):
        logs = tr.train_step(*data(i))
        seen.append(logs["alpha"])
        if i % 2 == 0 and logs["alpha"] < 1:
            assert -1 <= logs["grad_cos"] <= 1
    assert seen[0] == 1.0 and seen[-1] == 0.0 and any(0 < a < 1 for a in seen)


def test_checkpoint_round_trip_and_resume_gives_identical_next_step(tmp_path):
    path = str(tmp_path / "ck" / "model.pt")
    a = TrainState(small_cfg(), SHAPE, 10)
    for i in range(3):
        a.train_step(*data(i))
    a.save_checkpoint(path, extra={"best": {"fid1": 1.5}, "position": [1, 2]})
    assert os.listdir(tmp_path / "ck") == ["model.pt"]          # no temporary file left behind
    state = torch.load(path, weights_only=True)                 # plain containers and tensors only
    assert state["step"] == 3 and state["num_classes"] == 10

    b = TrainState(small_cfg(), SHAPE, 10)
    assert b.load_checkpoint(path) == {"best": {"fid1": 1.5}, "position": [1, 2]}
    assert b.step == 3
    la, lb = a.train_step(*data(3)), b.train_step(*data(3))
    assert la == lb
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    noise = torch.randn(2, *SHAPE)
    assert torch.equal(a.sample(noise, torch.arange(2)), b.sample(noise, torch.arange(2)))

    model, info = load_generator(path)
    assert info["image_shape"] == SHAPE and info["num_classes"] == 10 and info["extra"]["best"]["fid1"] == 1.5
    assert info["config"]["model"]["size"] == "micro"
    model1, _ = load_generator(path, half_life=1.0)       # a second EMA, evaluable on its own
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), model1.parameters()))


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_state(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint") as e:
        load_state(str(bad))
    assert "\n" not in str(e.value)
    tr = TrainState(small_cfg(), SHAPE, 10)
    tr.save_checkpoint(str(tmp_path / "ok.pt"))
    other = TrainState(small_cfg(), SHAPE, 5)
    with pytest.raises(ValueError, match="classes"):
        other.load_checkpoint(str(tmp_path / "ok.pt"))


def test_non_finite_loss_raises_before_the_weights_change():
    tr = TrainState(small_cfg(), SHAPE, 10)
    tr.train_step(*data(0))
    before = [p.detach().clone() for p in tr.model.parameters()]
    opt_before = {k: v["exp_avg"].clone() for k, v in tr.optimizer.state_dict()["state"].items()}
    x, y = data(1)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1: "):
        tr.train_step(x, y)
    assert tr.step == 1
    for p, q in zip(before, tr.model.parameters()):
        assert torch.equal(p, q)
    for k, v in tr.optimizer.state_dict()["state"].items():
        assert torch.equal(v["exp_avg"], opt_before[k])


def test_presets():
    assert set(PRESETS) == {"tiny-cpu", "alphaflow-B2", "alphaflow-B2-cfg", "alphaflow-XL2-cfg", "meanflow-B2",
                            "meanflow-XL2", "meanflow-minsnr-beta-B4", "imf-B2"}
    xl = get_preset("alphaflow-XL2-cfg")
    assert xl.total_steps == 1_200_000 and xl.alpha.k_s * xl.total_steps == 600_000
    assert round(xl.alpha.k_e * xl.total_steps) == 1_000_000
    assert (xl.guidance.omega, xl.guidance.kappa, xl.guidance.t_max) == (0.2, 0.92, 0.75)
    for name in PRESETS:
        c = get_preset(name)
        if name != "tiny-cpu":
            assert (c.batch_size, c.optim.lr, c.optim.warmup_steps, c.ema.half_life, c.precision) == \
                (256, 1e-4, 10_000, 6931.0, "bf16")
    assert get_preset("meanflow-B2").alpha.kind == "constant" and get_preset("meanflow-B2").alpha.start == 0.0
    imf = get_preset("meanflow-minsnr-beta-B4")
    assert imf.model.patch_size == 4 and imf.loss.beta and imf.loss.minsnr_gamma > 0
    tiny = get_preset("tiny-cpu")
    assert tiny.model.size == "tiny" and tiny.guidance.omega == 1.0 and tiny.guidance.kappa == 0.0
    get_preset("tiny-cpu").total_steps = 1
    assert get_preset("tiny-cpu").total_steps == tiny.total_steps        # fresh copies
    with pytest.raises(KeyError, match="known: tiny-cpu"):
        get_preset("nope")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, out_dir, kernels="fast", precision="auto"):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # different seeds: the broadcast must align the weights
        cfg = small_cfg(seed=rank, kernels=kernels, precision=precision)
        tr = TrainState(cfg, SHAPE, 10)
        losses = []
        for i in range(4):
            x, y = data(10 * rank + i)             # each rank its own data
            losses.append(tr.train_step(x, y)["loss"])
        flat = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
        torch.save({"params": flat, "losses": losses, "rank": tr.rank, "world": tr.world_size},
                   os.path.join(out_dir, f"{kernels}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_gloo_keeps_ranks_in_sync(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"fast-rank{i}.pt") for i in range(2))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert torch.equal(r0["params"], r1["params"])
    assert r0["losses"] == r1["losses"]           # the all-reduced mean loss
    single = TrainState(small_cfg(seed=0), SHAPE, 10)
    single.train_step(*data(0))
    flat = torch.cat([p.detach().flatten() for p in single.model.parameters()])
    assert not torch.equal(flat, r0["params"])    # the other rank's gradients did count


@pytest.mark.slow
def test_two_rank_flat_all_reduce_equals_the_per_tensor_one(tmp_path):
    """The fast path all-reduces its flat gradient buffer (the loss in its last slot); kernels: reference
    concatenates per-tensor gradients. Same weights and losses after 4 two-rank steps (fp32)."""
    for kernels in ("fast", "reference"):
        mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), kernels, "fp32"), nprocs=2, join=True)
    fast, ref = (torch.load(tmp_path / f"{k}-rank0.pt") for k in ("fast", "reference"))
    assert float((fast["params"] - ref["params"]).abs().max() / ref["params"].abs().max()) <= 1e-5
    assert fast["losses"] == pytest.approx(ref["losses"], rel=1e-5)


def _flat(tr):
    return torch.cat([p.detach().flatten() for p in tr.model.parameters()])


def _fp32(kernels):
    return small_cfg(kernels=kernels, precision="fp32", diagnostics_every=0)


def test_fast_path_keeps_parameters_gradients_and_ema_in_flat_buffers():
    fast, ref = TrainState(_fp32("fast"), SHAPE, 10), TrainState(_fp32("reference"), SHAPE, 10)
    assert fast.flat is not None and ref.flat is None and fast.flat.is_intact()
    for i in range(3):
        fast.train_step(*data(i))
        ref.train_step(*data(i))
    assert fast.flat.is_intact()   # autograd accumulated into the views; Adam updated the flat buffer in place
    assert torch.equal(fast.flat.param.detach(), _flat(fast))
    assert torch.equal(fast.flat.param.grad, torch.cat([p.grad.flatten() for p in fast.model.parameters()]))
    assert float((_flat(fast) - _flat(ref)).abs().max() / _flat(ref).abs().max()) <= 1e-5
    for h in fast.ema.half_lives:   # one lerp over the flat average == per-tensor lerps
        a = torch.cat([s.flatten() for s in fast.ema._shadow(h)])
        b = torch.cat([s.flatten() for s in ref.ema._shadow(h)])
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-5


@pytest.mark.parametrize("writer,reader", [("fast", "reference"), ("reference", "fast"), ("fast", "fast")])
def test_checkpoints_keep_the_per_parameter_optimizer_layout(tmp_path, writer, reader):
    """A checkpoint holds Adam's state per parameter whichever kernels wrote it, so a run resumes under either."""
    path = str(tmp_path / "model.pt")
    a = TrainState(_fp32(writer), SHAPE, 10)
    for i in range(3):
        a.train_step(*data(i))
    a.save_checkpoint(path)
    opt = load_state(path)["optimizer"]
    assert len(opt["state"]) == len(list(a.model.parameters())) == len(opt["param_groups"][0]["params"])
    assert all(opt["state"][i]["exp_avg"].shape == p.shape for i, p in enumerate(a.model.parameters()))
    b = TrainState(_fp32(reader), SHAPE, 10)
    b.load_checkpoint(path)
    a.train_step(*data(3))
    b.train_step(*data(3))
    assert float((_flat(a) - _flat(b)).abs().max() / _flat(a).abs().max()) <= 1e-5


def test_gradients_set_to_none_between_steps_are_put_back():
    """zero_grad()'s default (set_to_none=True) detaches the gradients from the flat buffer; the next train step
    reattaches them, so Adam still sees them and the step equals the reference's."""
    fast, ref = TrainState(_fp32("fast"), SHAPE, 10), TrainState(_fp32("reference"), SHAPE, 10)
    for i in range(2):
        fast.model.zero_grad()
        fast.optimizer.zero_grad()
        fast.train_step(*data(i))
        ref.train_step(*data(i))
    assert fast.flat.is_intact()
    assert float((_flat(fast) - _flat(ref)).abs().max() / _flat(ref).abs().max()) <= 1e-5
