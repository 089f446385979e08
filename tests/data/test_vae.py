"""The VAE codec with a tiny config-built diffusers AutoencoderKL (no download): encode/decode shapes and scaling,
an image folder prepared through it, and posterior storage sampled by the loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the 'vae' extra (pip install 'afsweep[vae]')")

from alphaflow.data import get_codec, make_train_loader, prepare_image_folder, read_manifest  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1)
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d)
    return d


def test_vae_codec_encodes_scaled_posterior_means_and_decodes_to_uint8(vae_dir):
    codec = get_codec(f"vae:{vae_dir}")
    assert codec.name == f"vae:{vae_dir.resolve()}" and get_codec(codec.name) is codec   # loaded once
    imgs = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    lat = codec.encode(imgs)
    assert lat.shape == (3, 4, 8, 8) and lat.dtype == np.float32
    with torch.no_grad():
        mean = codec.vae.encode(torch.from_numpy(imgs).float() / 127.5 - 1).latent_dist.mean
    np.testing.assert_allclose(lat, ((mean - 0.1) * 0.5).numpy(), rtol=1e-5, atol=1e-6)
    post = codec.encode(imgs, store="posterior")
    assert post.shape == (3, 8, 8, 8)
    np.testing.assert_allclose(post[:, :4], lat, rtol=1e-5, atol=1e-6)
    out = codec.decode(torch.from_numpy(lat))
    assert out.shape == imgs.shape and out.dtype == np.uint8
    with torch.no_grad():
        ref = codec.vae.decode(mean).sample.numpy()
    expected = np.clip(np.rint((ref + 1) * 127.5), 0, 255)
    assert np.abs(out.astype(int) - expected).max() <= 1   # unscaling round-off may flip a rounding


@pytest.mark.parametrize("store", ["mean", "posterior"])
def test_image_folder_through_the_vae(vae_dir, tmp_path, store):
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    url = prepare_image_folder(str(tmp_path / "src"), str(tmp_path / "out"), resolution=16, vae=str(vae_dir),
                               store=store)
    m = read_manifest(url)
    assert m.codec == f"vae:{vae_dir.resolve()}" and m.image_shape == (4, 8, 8) and m.latent_store == store
    assert m.stored_shape == ((8 if store == "posterior" else 4), 8, 8)
    loader = make_train_loader(url, batch_size=6, mode="exact", seed=0)
    it = iter(loader)
    epochs = []
    for _ in range(2):          # 12 samples, 2 batches an epoch
        seen = {}
        for _ in range(2):
            x, _ = next(it)
            assert x.shape == (6, 4, 8, 8) and torch.isfinite(x).all()
            seen.update(zip(loader.last_keys, x))
        epochs.append(seen)
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(epochs[0]) == 12
    differs = [not torch.allclose(epochs[0][k], epochs[1][k]) for k in epochs[0]]
    assert all(differs) if store == "posterior" else not any(differs)   # posterior: z ~ N(mean, var) each read
