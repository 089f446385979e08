"""The registered model's code, logged with it (MLflow models-from-code): an image generator from a trial's EMA
checkpoint. MLflow runs this file when the model is loaded; the `alphaflow` package travels in the model's `code/`
folder, so the model loads where afsweep is not installed.

    model = mlflow.pyfunc.load_model("models:/afsweep-fashion-mnist@best-fid1")
    images = model.predict(pd.DataFrame({"class_label": [0, 1, 2]}), params={"nfe": 1, "seed": 0})
    # -> uint8 array (N, C, H, W)
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pydantic
import torch

from alphaflow.checkpoint import load_generator
from alphaflow.config import config_from_dict, with_sampling
from alphaflow.evaluation import LatentDecoder
from alphaflow.sampling import sample
from alphaflow.train_state import sampling_guidance


class GenerateRequest(pydantic.BaseModel):
    """One image to generate: its class (0 .. num_classes - 1)."""
    class_label: int


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        # a sampling sweep's best settings, when this version was registered with them (sampling.json)
        chosen = {}
        if "sampling" in context.artifacts:
            with open(context.artifacts["sampling"]) as f:
                chosen = json.load(f)
        self.model, self.info = load_generator(context.artifacts["checkpoint"], ema=True,
                                               half_life=chosen.get("half_life"))
        self.model.eval()
        data = self.info["extra"]["data"]
        self.decode = LatentDecoder(data["codec"], data["mean"], data["std"])
        self.cfg = with_sampling(config_from_dict(self.info["config"]), chosen)
        self.settings = {"t_mid": self.cfg.sampling.t_mid, "two_nfe": self.cfg.sampling.two_nfe, **chosen}
        self.num_classes = int(self.info["num_classes"])

    def predict(self, context, model_input: list[GenerateRequest], params: dict[str, Any] | None = None):
        """uint8 images (N, C, H, W), one per request; params: nfe (1 or 2), seed."""
        params = params or {}
        nfe, seed = int(params.get("nfe", 1)), int(params.get("seed", 0))
        if nfe not in (1, 2):
            raise ValueError(f"nfe {nfe}: this model samples with 1 or 2 network calls")
        labels = np.array([r.class_label for r in model_input], dtype=np.int64)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(f"class_label {int(bad[0])}: out of range, this model has {self.num_classes} classes "
                             f"(0 to {self.num_classes - 1})")
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(labels), *self.info["image_shape"]), generator=g)
        with torch.no_grad():
            s = self.cfg.sampling
            z = sample(self.model, noise, torch.from_numpy(labels), nfe=nfe, two_nfe=s.two_nfe, t_mid=s.t_mid,
                       generator=g, g=sampling_guidance(self.cfg, len(labels), noise.device))
        return self.decode(z)


mlflow.models.set_model(GeneratorModel())
