"""Where a sweep keeps its state, and the checks that every part of a cluster can reach it.

Three places, each a spec setting (docs/spec.md#where-a-sweep-keeps-its-state):
- `run.storage`: Ray Tune's experiment state and Ray Train's checkpoints (default `<run_dir>/ray`; `s3://...` or
  any URI pyarrow's filesystems accept; S3 credentials from the standard AWS chain, `AWS_ENDPOINT_URL`);
- `search.storage`: the Optuna study (default `sqlite:///<run_dir>/optuna.db`; `postgresql://...` for a lab);
- `tracking.uri`: MLflow (default `sqlite:///<run_dir>/mlflow.db`).
A driver on another machine that is given the same three URLs can `status`, `best` and `resume` the sweep.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs
import ray
import sqlalchemy

from alphaflow.data import storage as data_storage
from alphaflow.errors import InputError, first_line

SPEC_COPY = "afsweep_spec.yaml"  # the frozen spec, in the sweep's storage folder: what `resume` rebuilds from


class PlaceError(RuntimeError, InputError):
    """A storage URL that cannot be used (unreachable, refused, wrong credentials): exit 2, before any trial."""


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def hide_secret(url: str) -> str:
    """A URL as it may be printed: a password in it becomes ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _join(root: str, *names: str) -> str:
    return "/".join([root.rstrip("/"), *names])


@dataclass(frozen=True)
class SweepPlaces:
    run_dir: Path      # local: the built-in data sets, the local stores' defaults
    storage: str       # Tune's storage_path: a local folder or a URI
    optuna_url: str    # an SQLAlchemy URL
    tracking_uri: str  # MLflow

    def sweep_dir(self, sweep: str) -> str:
        return _join(self.storage, sweep)

    def train_storage(self, sweep: str) -> str:
        return _join(self.storage, sweep, "train")

    def spec_copy(self, sweep: str) -> str:
        return _join(self.storage, sweep, SPEC_COPY)

    def local_parts(self) -> list[str]:
        """The places a process on another node cannot reach unless the run dir is on a shared filesystem."""
        out = []
        if not is_uri(self.storage):
            out.append(f"run.storage ({self.storage})")
        if self.optuna_url.startswith("sqlite:"):
            out.append(f"search.storage ({self.optuna_url})")
        if self.tracking_uri.startswith(("sqlite:", "file:", "/")):
            out.append(f"tracking.uri ({self.tracking_uri})")
        return out


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str | None, run_dir: Path) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)


def resolve_places(run_dir: Path, storage: str | None, optuna_url: str | None, tracking_uri: str | None
                   ) -> SweepPlaces:
    run_dir = Path(run_dir).resolve()
    local = storage or str(run_dir / "ray")
    if not is_uri(local):
        local = str(Path(local.removeprefix("file://")).resolve())
    return SweepPlaces(run_dir=run_dir, storage=local,
                       optuna_url=optuna_url or f"sqlite:///{run_dir / 'optuna.db'}",
                       tracking_uri=resolve_tracking_uri(tracking_uri, run_dir))


# --- the filesystem Ray Tune and Ray Train write through ----------------------------------------------------------

# pyarrow's S3 client gives up after ~1 s of a storage outage by default (3 attempts); 12 attempts of AWS's
# standard backoff wait out about two minutes (measured against a stopped SeaweedFS: 3 -> 1 s, 12 -> 130 s), so a
# restarted storage server pauses a checkpoint upload instead of failing the worker group
S3_ATTEMPTS = int(os.environ.get("AFSWEEP_STORAGE_S3_ATTEMPTS", "12"))


def storage_filesystem(location: str, patient: bool = True):
    """(filesystem, path in it) for Ray's `storage_filesystem` / `storage_path`; (None, location) for a folder.

    The S3 filesystem names no credentials: unpickled on a node, it reads that node's AWS chain. The endpoint
    and region are the driver's (`AWS_ENDPOINT_URL[_S3]`, `AWS_REGION` / `AWS_DEFAULT_REGION`), the same for
    every node of one cluster."""
    if not location.startswith("s3://"):
        return None, location
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs = {"endpoint_override": endpoint} if endpoint else {}
    if region:
        kwargs["region"] = region
    attempts = S3_ATTEMPTS if patient else 3  # the check before any trial answers at once
    return _patient_s3(kwargs, attempts), location[len("s3://"):]


def _patient_s3(options: dict, attempts: int):
    """An S3FileSystem whose retry strategy survives pickling: pyarrow's own pickle drops `retry_strategy`, so a
    copy sent to Ray Train's controller and workers would give up after ~1 s again (measured: 37 s of retries in
    the process that built it, 0.8 s in its unpickled copy)."""
    class PatientS3FileSystem(pafs.S3FileSystem):
        def __init__(self):
            super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts), **options)

        def __reduce__(self):
            return _patient_s3, (options, attempts)

    return PatientS3FileSystem()


# --- reading and writing small files in the storage -------------------------------------------------------------


def _fs(location: str, patient: bool = True):
    if location.startswith("s3://"):
        return storage_filesystem(location, patient)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def write_text(location: str, text: str, patient: bool = True) -> None:
    fs, path = _fs(location, patient)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(location: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, path = _fs(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


# --- checks before any trial ------------------------------------------------------------------------------------


def check_storage(location: str) -> None:
    """The storage answers and takes a write (a bucket that is missing or refuses the credentials fails here)."""
    if not is_uri(location):
        try:
            Path(location).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PlaceError(f"run.storage {location}: not writable: {e.strerror}") from None
        return
    probe = _join(location, ".afsweep-probe")
    try:
        write_text(probe, "ok", patient=False)
        fs, path = _fs(probe, patient=False)
        fs.delete_file(path)
    except Exception as e:  # pyarrow raises OSError/ArrowException with the service's message
        raise PlaceError(f"run.storage {hide_secret(location)}: not usable: {first_line(e)}") from None


def check_optuna_storage(url: str) -> None:
    """The study's database answers (a refused or unknown PostgreSQL URL fails here, its password hidden)."""
    if url.startswith("sqlite:"):
        return

    try:
        engine = sqlalchemy.create_engine(url, connect_args=_connect_timeout(url))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:
        message = first_line(e).replace(urlsplit(url).password or "\0", "***")
        raise PlaceError(f"search.storage {hide_secret(url)}: not usable: {message}") from None


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


# --- a cluster of several nodes ---------------------------------------------------------------------------------


def cluster_node_count() -> int:
    """Alive nodes of the connected Ray cluster."""
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def refuse_local_parts_on_a_cluster(places: SweepPlaces, manifest_url: str, shared_filesystem: bool) -> None:
    """Trials on other nodes cannot reach the head's run dir: refuse before any trial, saying what to set."""
    if shared_filesystem:
        return
    nodes = cluster_node_count()
    local = places.local_parts()
    if not is_uri(manifest_url):
        local.append(f"data.manifest ({manifest_url})")
    if nodes > 1 and local:
        raise PlaceError(
            f"a cluster of {nodes} nodes cannot reach this machine's local {', '.join(local)}: set run.storage "
            f"(s3://...), search.storage (postgresql://...), tracking.uri (http://MLFLOW:5000) and an s3:// "
            f"data.manifest, or ray.shared_filesystem: true if every node mounts the run dir")


def credentials_out_of_ray_env() -> str | None:
    """Ray Tune copies AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN from the driver's environment into
    each trial's runtime environment, which Ray writes in plain text to its session logs. Move them into a private
    credentials file (0600, in a 0700 folder) that the AWS chain reads through AWS_SHARED_CREDENTIALS_FILE, and out
    of the environment. Returns the file (removed when the driver exits), or None when there was nothing to move."""
    keys = {"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
            "AWS_SESSION_TOKEN": "aws_session_token", "AWS_SECURITY_TOKEN": "aws_security_token"}
    found = {name: os.environ[name] for name in keys if os.environ.get(name)}
    if not found:
        return None
    folder = tempfile.mkdtemp(prefix="afsweep-aws-")  # mkdtemp: 0700
    path = os.path.join(folder, "credentials")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[default]\n" + "".join(f"{keys[n]} = {v}\n" for n, v in found.items()))
    atexit.register(shutil.rmtree, folder, True)
    for name in found:
        del os.environ[name]
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = path
    os.environ.pop("AWS_PROFILE", None)  # the file holds the one profile: default

    data_storage.reset_clients()  # boto3 clients made before read the environment; new ones read the file
    return path
