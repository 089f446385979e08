"""What a run came from, in MLflow's own terms: the data set as a dataset input (name, source URL, digest from the
manifest), the source commit and the command line as run tags."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag

from orchestrator.platform.command_line import command_line

COMMAND_TAG = "afsweep.command"
VERSION_TAG = "afsweep.version"
COMMIT_TAG = "mlflow.source.git.commit"   # MLflow's standard tag: the UI shows and links it
DIRTY_TAG = "afsweep.source.dirty"        # "true" when the checkout had uncommitted changes


def source_tags(argv: list[str] | None = None) -> dict[str, str]:
    """The command line, the afsweep version and, from a git checkout, its commit."""
    argv = command_line() if argv is None else argv
    tags = {COMMAND_TAG: shlex.join([Path(argv[0]).name, *argv[1:]])[:5000] if argv else "",
            "mlflow.source.type": "LOCAL", "mlflow.source.name": "afsweep"}
    try:
        tags[VERSION_TAG] = metadata.version("afsweep")
    except metadata.PackageNotFoundError:
        pass
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            tags[COMMIT_TAG] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            tags[DIRTY_TAG] = "true" if status.stdout.strip() else "false"
    except (OSError, subprocess.TimeoutExpired):  # no git here: an installed package has no commit to name
        pass
    return tags


def manifest_dataset(manifest) -> dict[str, Any]:
    """The data set of a manifest as MLflow dataset fields; the digest is over the shards' sha256 (what the data
    is, wherever it is stored)."""
    digest = hashlib.sha256("".join(s.sha256 for s in manifest.shards).encode()).hexdigest()[:16]
    return {"name": manifest.dataset_id, "digest": digest,
            "source_type": "s3" if manifest.url.startswith("s3://") else "local",
            "source": json.dumps({"uri": manifest.url}),
            "profile": json.dumps({"num_samples": manifest.num_samples, "num_classes": manifest.num_classes,
                                   "shards": len(manifest.shards), "latent_shape": list(manifest.image_shape),
                                   "codec": manifest.codec})}


def log_dataset_input(client, run_id: str, dataset: dict[str, Any], context: str = "train") -> None:
    client.log_inputs(run_id, datasets=[DatasetInput(Dataset(**dataset),
                                                     tags=[InputTag("mlflow.data.context", context)])])
