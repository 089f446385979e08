"""The Ray cluster a sweep runs on: a local one on loopback, or an existing one; the dashboard's address."""

from __future__ import annotations

import math
import os
import socket

import ray

from alphaflow.errors import first_line
from orchestrator.platform.places import credentials_out_of_ray_env
from orchestrator.platform.ray_adapter import (
    keep_local_cluster_on_loopback,
    skip_unused_train_actors,
    use_token_auth_if_available,
)
from orchestrator.spec import SweepSpec
from orchestrator.sweep.errors import SweepError


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def dashboard_line(url: str) -> str:
    """How to open the dashboard: Ray 2.60 asks for its token (the browser prompts; the API wants a header)."""
    token = os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
    return (f"afsweep: Ray dashboard: {url}  (the page asks for the cluster's token: `ray get-auth-token`, "
            f"or the file {token}; API: curl -H \"Authorization: Bearer $(cat {token})\" {url}/api/jobs/)")


def start_ray(spec: SweepSpec, address: str | None, echo=print) -> str | None:
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the dashboard's Train tab
    os.environ.setdefault("OMP_NUM_THREADS", str(spec.train.threads_per_worker))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our reporter: the trial table with the searched parameters
    # Tune snapshots the sweep (trials, searcher) at most every 10 s by default; a driver that dies in between
    # loses the trials it started since. The state is small: snapshot every 2 s (resume reconciles the rest).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # checkpoint-only reports (train.checkpoint_every) carry no fid1: ASHA and our searcher skip them, and Tune must
    # not refuse them as results "without the metric"
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    skip_unused_train_actors()
    credentials_out_of_ray_env()  # before any Ray process starts: Tune would copy them into its logs
    if ray.is_initialized():
        return None
    address = address or spec.ray.address
    if address:
        use_token_auth_if_available()
        try:
            ctx = ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        except Exception as e:
            raise SweepError(f"Ray cluster at {address} is not reachable: {first_line(e)}") from None
    else:
        keep_local_cluster_on_loopback()
        per_trial = 1 + spec.train.workers * spec.train.cpus_per_worker
        num_cpus = spec.ray.num_cpus or int(math.ceil(spec.search.max_concurrent * per_trial))
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       _node_ip_address="127.0.0.1",  # a one-machine cluster talks over loopback only
                       dashboard_port=_free_port(spec.ray.dashboard_port), logging_level="WARNING")
    url = ctx.dashboard_url
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url


def shutdown_ray() -> None:
    ray.shutdown()
