"""The DiT: shapes, sizes, zero init, the two attention paths, EMA and samplers on top of it."""

import pytest
import torch

from alphaflow.config import ModelConfig
from alphaflow.ema import EMA
from alphaflow.model import MODEL_SIZES, build_model, math_attention
from alphaflow.sampling import sample, sample_n_step

torch.set_num_threads(1)


def inputs(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g), torch.rand(b, generator=g) * 0.5,
            torch.rand(b, generator=g) * 0.5 + 0.5, torch.randint(0, 10, (b,), generator=g))


@pytest.mark.parametrize("shape,patch", [((1, 28, 28), 4), ((1, 28, 28), 2), ((1, 8, 8), 2), ((4, 16, 8), 8)])
def test_output_shape_matches_input(shape, patch):
    model = build_model(ModelConfig(size="micro", patch_size=patch), shape[0], shape[1:], 10)
    x, r, t, y = inputs(3, *shape)
    assert model(x, r, t, y).shape == x.shape


def test_zero_init_outputs_zero_and_null_class_row():
    model = build_model(ModelConfig(size="micro", patch_size=2), 1, 8, 10)
    x, r, t, y = inputs(2, 1, 8, 8)
    assert torch.count_nonzero(model(x, r, t, y)) == 0          # adaLN-Zero + zero final layer
    assert model.y_embed.num_embeddings == 11                     # the null class is row num_classes


def test_math_attention_matches_fused_and_restores():
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="micro", patch_size=2), 1, 8, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, r, t, y = inputs(2, 1, 8, 8)
    fused = model(x, r, t, y)
    with math_attention(model):
        assert all(b.attn.use_math for b in model.blocks)
        explicit = model(x, r, t, y)
    assert not any(b.attn.use_math for b in model.blocks)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)
    assert fused.abs().max() > 1e-3


def test_sizes_and_bad_inputs():
    assert MODEL_SIZES["B"] == (12, 768, 12) and MODEL_SIZES["XL"] == (28, 1152, 16)
    assert MODEL_SIZES["S"] == (12, 384, 6) and MODEL_SIZES["L"] == (24, 1024, 16)
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        build_model(ModelConfig(size="micro", patch_size=8), 1, 28, 10)
    with pytest.raises(ValueError, match="size"):  # refused where the config is made, before any model
        ModelConfig(size="huge", patch_size=2)


def test_ema_ramp_and_several_half_lives():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, [10.0, 2.0], ramp=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)                     # ramped half-life 0: a copy
    assert ema.shadows[repr(10.0)][0].item() == 1.0
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model, step=100)                   # min(10, 50) = 10 -> decay 0.5 ** 0.1
    assert ema.shadows[repr(10.0)][0].item() == pytest.approx(0.5 ** 0.1)
    assert ema.shadows[repr(2.0)][0].item() == pytest.approx(0.5 ** 0.5)
    with ema.swapped(model, 2.0):
        assert model.weight.item() == pytest.approx(0.5 ** 0.5)
    assert model.weight.item() == 0.0
    state = ema.state_dict(model)
    other = EMA(model, [10.0, 2.0])
    other.load_state_dict(model, state)
    assert other.shadows[repr(2.0)][0].item() == pytest.approx(0.5 ** 0.5)
    with pytest.raises(KeyError, match="half-life"):
        ema.copy_to(model, 3.0)


class Affine(torch.nn.Module):
    """u(z, r, t) = a z + b t + c r: samplers can be checked by hand."""

    def forward(self, z, r, t, y):
        return 0.5 * z + t.view(-1, 1) - 2 * r.view(-1, 1)


def test_samplers_follow_the_formulas():
    m, eps, y = Affine(), torch.tensor([[1.0], [2.0]]), torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(sample(m, eps, y, nfe=1), eps - (0.5 * eps + 1))
    z = eps - 0.5 * (0.5 * eps + 1 - 2 * 0.5)
    torch.testing.assert_close(sample(m, eps, y, nfe=2, two_nfe="ode", t_mid=0.5), z - 0.5 * (0.5 * z + 0.5))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1 = eps - (0.5 * eps + 1)
    fresh = torch.randn(eps.shape, generator=g2)
    zc = 0.45 * x1 + 0.55 * fresh
    torch.testing.assert_close(sample(m, eps, y, nfe=2, two_nfe="consistency", t_mid=0.55, generator=g1),
                               zc - 0.55 * (0.5 * zc + 0.55))
    z = eps
    for tc, tn in ((1.0, 0.5), (0.5, 0.0)):
        z = z - (tc - tn) * (0.5 * z + tc - 2 * tc)
    torch.testing.assert_close(sample_n_step(m, eps, y, 2), z)
    with pytest.raises(ValueError, match="nfe"):
        sample(m, eps, y, nfe=3)
