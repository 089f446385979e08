"""DINOv2 from a local checkpoint. No DINOv2 weights exist offline here, so these tests use tiny random networks
saved in the layout of the released torch hub files; they check loading, config inference and the feature path,
not agreement with the released ViT-L/14 (that needs its weights: see docs/internals.md)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from alphaflow.metrics import MetricsError, compute_reference_stats, load_extractor
from alphaflow.metrics.dinov2 import DINOv2Extractor, DINOv2ViT, ViTConfig

torch.set_num_threads(1)

TINY = ViTConfig(patch_size=4, embed_dim=128, depth=2, num_heads=2, ffn_hidden=256, pos_grid=4, input_size=32)


def _random_state_dict(cfg: ViTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = DINOv2ViT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.state_dict()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("dino") / "dinov2_tiny_pretrain.pth"
    torch.save(_random_state_dict(TINY), path)
    return path


def test_parameter_names_follow_the_hub_checkpoints():
    cfg = ViTConfig(patch_size=14, embed_dim=64, depth=1, num_heads=1, ffn_hidden=256, pos_grid=37)
    names = set(DINOv2ViT(cfg).state_dict())
    block = {f"blocks.0.{n}" for n in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                         "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight",
                                         "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                                         "mlp.fc2.bias", "ls2.gamma")}
    assert names == {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                     "norm.weight", "norm.bias"} | block
    assert DINOv2ViT(cfg).pos_embed.shape == (1, 1 + 37 * 37, 64)   # the 518-px pretraining grid of patch 14


def test_config_is_inferred_from_the_checkpoint(tiny_ckpt):
    ext = load_extractor(f"dinov2:{tiny_ckpt}")
    assert ext.cfg == ViTConfig(patch_size=4, embed_dim=128, depth=2, num_heads=2, ffn_hidden=256, pos_grid=4,
                                input_size=224)
    assert ext.id == "dinov2-vit-d128-p4" and ext.dim == 128 and len(ext.sha256) == 64


def test_features_are_deterministic_and_independent_of_the_batch(tiny_ckpt):
    ext = DINOv2Extractor(tiny_ckpt, input_size=32)     # 8x8 patches instead of 56x56: fast on a CPU
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 1, 28, 28), dtype=np.uint8)
    f = ext.features(imgs)
    assert f.shape == (5, 128) and np.isfinite(f).all()
    np.testing.assert_allclose(ext.features(imgs[2:3]), f[2:3], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ext.features(imgs), f)
    # grey images are the same as their 3-channel copies
    np.testing.assert_allclose(ext.features(imgs.repeat(3, axis=1)), f, rtol=1e-5, atol=1e-6)
    assert not np.allclose(f[0], f[1])


def test_feature_path_is_resize_normalise_then_cls_token(tiny_ckpt):
    """With input_size equal to the pretraining grid, no positional interpolation happens: the features are the
    network's CLS output of the ImageNet-normalised, bicubically resized image."""
    sd = torch.load(tiny_ckpt, weights_only=True)
    net = DINOv2ViT(TINY)
    net.load_state_dict(sd)
    net.eval()
    ext = DINOv2Extractor(tiny_ckpt, input_size=16)     # 16 px / patch 4 = the 4x4 pretraining grid
    imgs = np.random.default_rng(1).integers(0, 256, size=(3, 3, 16, 16), dtype=np.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((torch.from_numpy(imgs).float() / 255 - mean) / std).numpy()
    np.testing.assert_allclose(ext.features(imgs), expected, rtol=1e-5, atol=1e-6)
    assert net._pos_embed(4, 4) is net.pos_embed
    assert net._pos_embed(7, 5).shape == (1, 1 + 35, 128)


def test_registers_swiglu_and_nested_checkpoints_load(tmp_path):
    cfg = ViTConfig(patch_size=4, embed_dim=64, depth=3, num_heads=1, ffn_hidden=96, ffn="swiglu",
                    num_registers=4, pos_grid=3)
    sd = _random_state_dict(cfg, seed=2)
    # a training checkpoint: the teacher's backbone, 3 blocks in 2 chunks ("blocks.<chunk>.<i>.")
    chunk = {0: 0, 1: 0, 2: 1}
    nested = {"teacher": {"backbone." + re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{chunk[int(m.group(1))]}."
                                                                             f"{m.group(1)}.", k): v
                          for k, v in sd.items()}}
    assert "backbone.blocks.1.2.norm1.weight" in nested["teacher"]
    torch.save(nested, tmp_path / "teacher.pth")
    ext = load_extractor(f"dinov2:{tmp_path / 'teacher.pth'}")
    assert ext.cfg.ffn == "swiglu" and ext.cfg.num_registers == 4 and ext.cfg.depth == 3
    assert ext.id == "dinov2-vit-d64-p4-reg4"
    for k, v in ext.net.state_dict().items():
        torch.testing.assert_close(v, sd[k])
    assert ext.features(np.zeros((2, 3, 12, 12), np.uint8)).shape == (2, 64)


def test_reference_statistics_in_dinov2_space(tiny_ckpt):
    ext = load_extractor(f"dinov2:{tiny_ckpt}")
    imgs = np.random.default_rng(3).integers(0, 256, size=(4, 1, 8, 8), dtype=np.uint8)
    ref = compute_reference_stats(imgs, ext, "random")
    assert ref.extractor_id == ext.id and ref.preprocess == "bicubic 224x224; imagenet mean/std"
    ref.check_compatible(ext)


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(MetricsError, match="give the checkpoint path"):
        load_extractor("dinov2")
    with pytest.raises(MetricsError, match="DINOv2 checkpoint not found"):
        load_extractor(f"dinov2:{tmp_path / 'absent.pth'}")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(MetricsError, match="not a DINOv2 checkpoint"):
        load_extractor(f"dinov2:{tmp_path / 'other.pth'}")
    sd = _random_state_dict(TINY)
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:10]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(MetricsError, match="tensors do not fit .*size mismatch for blocks.0.attn.qkv.weight"):
        load_extractor(f"dinov2:{tmp_path / 'cut.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(MetricsError, match="cannot read the DINOv2 checkpoint"):
        load_extractor(f"dinov2:{tmp_path / 'junk.pth'}")
