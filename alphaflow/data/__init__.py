"""The latent data path: sources -> codec -> WebDataset shards + Parquet manifest -> training batches.

    url = prepare_builtin("fashion-mnist", "data/fmnist")          # or an s3://bucket/prefix
    m = read_manifest(url)
    loader = make_train_loader(url, batch_size=64, rank=0, world_size=2, seed=0, mode="exact")
    x, y = next(iter(loader)); state = loader.position()
"""

from alphaflow.data.codecs import IdentityCodec, VAECodec, get_codec
from alphaflow.data.errors import DataError, DataInputError
from alphaflow.data.loader import SlotPlan, TrainLoader, make_train_loader
from alphaflow.data.manifest import Manifest, read_manifest
from alphaflow.data.prepare import prepare_arrays, prepare_builtin, prepare_image_folder, write_dataset
from alphaflow.data.storage import register_gopen

__all__ = [
    "DataError", "DataInputError", "IdentityCodec", "Manifest", "SlotPlan", "TrainLoader", "VAECodec", "get_codec",
    "make_train_loader", "prepare_arrays", "prepare_builtin", "prepare_image_folder", "read_manifest",
    "register_gopen", "write_dataset",
]
