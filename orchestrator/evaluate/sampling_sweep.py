"""Sampling sweeps: sampling-time knobs of one trained generator, scored without retraining (`afsweep sample-sweep`).

Knobs (docs/platform.md#sampling-sweeps): `guidance`, `guidance_t_min`, `guidance_t_max` (guidance-conditioned
models), `t_mid` and `two_nfe` (2-NFE sampling), `half_life` (which EMA of the checkpoint), `probe_steps` (Euler
steps of the u(z, t, t) probe, scored as `fid_probe`). A grid takes every combination of the listed values;
`--optuna N` draws N points with a seeded TPE (lists are categorical, LOW:HIGH ranges continuous).

Each point is a nested MLflow run under the trial's run (params: the knobs, extractor, N; metrics: fid1, fid2, and
fid_probe with probe_steps); the trial's run gets the fid-vs-knob plot and a JSON summary under
`sampling_sweep/<id>/`. `register` logs the model again with its best settings packaged (`sampling.json`: the
loaded pyfunc samples with them by default) and points a registry alias at that version.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
import ray
import torch
from mlflow.entities import Metric, Param

from alphaflow.checkpoint import load_generator, load_state
from alphaflow.config import config_from_dict, with_sampling
from alphaflow.errors import InputError
from alphaflow.evaluation import LatentDecoder, score_sampler
from alphaflow.metrics import ReferenceStats, load_extractor
from alphaflow.sampling import sample, sample_n_step
from alphaflow.train_state import EVAL_NOISE_SEED, sampling_guidance
from orchestrator.evaluate.run_eval import download_checkpoint, reference_for, resolve_run_id
from orchestrator.spec.trial_config import DOMAIN_EXTRACTOR
from orchestrator.tracking.generator_model import global_tracking_uri, log_generator_model
from orchestrator.tracking.registry import create_version, registered_model_of

KNOBS: dict[str, type] = {"guidance": float, "guidance_t_min": float, "guidance_t_max": float, "t_mid": float,
                          "two_nfe": str, "half_life": float, "probe_steps": int}
GUIDANCE_KNOBS = ("guidance", "guidance_t_min", "guidance_t_max")
POINT_KIND = "sampling-point"


class SamplingSweepError(RuntimeError):
    """A one-line failure of a sampling sweep."""


class SamplingSweepInputError(SamplingSweepError, InputError):
    """A knob or option that names nothing usable (exit 2)."""


@dataclass
class Knob:
    name: str
    values: list[Any] | None = None          # a list: grid values or categorical choices
    low: float | None = None                  # a range: Optuna only
    high: float | None = None


def parse_knob(text: str) -> Knob:
    """NAME=V1,V2,... or NAME=LOW:HIGH."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise SamplingSweepInputError(f"--knob {text!r}: expected NAME=V1,V2,... or NAME=LOW:HIGH")
    if name not in KNOBS:
        raise SamplingSweepInputError(f"--knob {text!r}: unknown knob {name!r}; known: {', '.join(KNOBS)}")
    kind = KNOBS[name]
    try:
        if ":" in rest and kind is not str:
            low, high = (float(v) for v in rest.split(":", 1))
            if not low < high:
                raise ValueError("LOW must be below HIGH")
            return Knob(name, low=low, high=high)
        return Knob(name, values=[kind(v.strip()) for v in rest.split(",") if v.strip()])
    except ValueError as e:
        raise SamplingSweepInputError(f"--knob {text!r}: {e}") from None


def grid_points(knobs: list[Knob]) -> list[dict[str, Any]]:
    ranged = [k.name for k in knobs if k.values is None]
    if ranged:
        raise SamplingSweepInputError(f"--knob {ranged[0]}: a LOW:HIGH range needs --optuna N (a grid lists values)")
    return [dict(zip([k.name for k in knobs], combo)) for combo in itertools.product(*(k.values for k in knobs))]


# --- one point -------------------------------------------------------------------------------------------------


@dataclass
class Generator:
    """A checkpoint loaded for sampling, one model per EMA half-life asked for."""
    path: str
    models: dict[Any, Any] = field(default_factory=dict)
    info: dict | None = None

    def model(self, half_life: float | None):
        if half_life not in self.models:
            self.models[half_life], self.info = load_generator(self.path, ema=True, half_life=half_life)
        return self.models[half_life]


def check_knobs(knobs: list[Knob], info: dict, ema_keys: list[str]) -> None:
    cfg = config_from_dict(info["config"])
    names = {k.name for k in knobs}
    if names & set(GUIDANCE_KNOBS) and not cfg.guidance.conditioned:
        raise SamplingSweepInputError(
            f"--knob {sorted(names & set(GUIDANCE_KNOBS))[0]}: this model was not trained with guidance as a "
            f"condition (guidance.conditioned false); its guidance is fixed at training time")
    for k in knobs:
        if k.name == "half_life":
            kept = {float(v) for v in ema_keys}
            for v in k.values or []:
                if float(v) not in kept:
                    raise SamplingSweepInputError(f"--knob half_life={v:g}: the checkpoint keeps EMAs with "
                                                  f"half-lives {', '.join(f'{h:g}' for h in sorted(kept))}")
        if k.name == "two_nfe":
            for v in k.values or []:
                if v not in ("ode", "consistency"):
                    raise SamplingSweepInputError(f"--knob two_nfe={v}: not one of ode, consistency")


def score_point(gen: Generator, settings: dict[str, Any], extractor, reference, n: int, nfes: tuple[int, ...],
                seed: int, batch_size: int) -> dict[str, float]:
    """fid1 / fid2 (and fid_probe with probe_steps) of the generator sampled with `settings`."""
    model = gen.model(settings.get("half_life"))
    info = gen.info
    cfg = config_from_dict(info["config"])
    cfg = with_sampling(cfg, settings)
    s = cfg.sampling
    data = info["extra"]["data"]
    decode = LatentDecoder(data.get("codec", "identity"), data["mean"], data["std"])
    shape, classes = tuple(info["image_shape"]), info["num_classes"]
    out: dict[str, float] = {}

    def run(fn) -> float:
        m, _, _ = score_sampler(fn, decode, shape, classes, extractor, reference, n, seed, batch_size)
        return float(m["fid"])

    for nfe in nfes:
        def fn(noise, labels, nfe=nfe):
            gen_ = torch.Generator().manual_seed(EVAL_NOISE_SEED)
            return sample(model, noise, labels, nfe=nfe, two_nfe=s.two_nfe, t_mid=s.t_mid, generator=gen_,
                          g=sampling_guidance(cfg, noise.shape[0], noise.device))
        out[f"fid{nfe}"] = run(fn)
    if "probe_steps" in settings:
        steps = int(settings["probe_steps"])
        out["fid_probe"] = run(lambda noise, labels: sample_n_step(
            model, noise, labels, steps, g=sampling_guidance(cfg, noise.shape[0], noise.device)))
    return out


def _ray_score(path, settings, extractor_id, reference_path, n, nfes, seed, batch_size):
    """The same point on a Ray worker: loads the checkpoint, extractor and reference itself."""
    torch.set_num_threads(1)
    return score_point(Generator(path), settings, load_extractor(extractor_id), ReferenceStats.load(reference_path),
                       n, nfes, seed, batch_size)


# --- the sweep -------------------------------------------------------------------------------------------------


@dataclass
class Point:
    settings: dict[str, Any]
    metrics: dict[str, float]
    run_id: str = ""


@dataclass
class SweepResult:
    sweep_id: str
    trial_run_id: str
    metric: str
    points: list[Point]
    best: Point
    plot_artifacts: list[str]
    registered: str | None = None


def run_points(settings_iter: Callable[[list[Point]], list[dict[str, Any]] | None], score: Callable,
               parallel: Callable | None, on_point: Callable[[Point], None]) -> list[Point]:
    """Ask for the next batch of settings, score them (on Ray when `parallel`), until the asker says None."""
    points: list[Point] = []
    while True:
        batch = settings_iter(points)
        if not batch:
            return points
        results = parallel(batch) if parallel else [score(s) for s in batch]
        for settings, metrics in zip(batch, results):
            p = Point(settings, metrics)
            on_point(p)
            points.append(p)


def grid_asker(points_list: list[dict[str, Any]], batch: int):
    queue = list(points_list)

    def ask(done: list[Point]):
        nonlocal queue
        out, queue = queue[:batch], queue[batch:]
        return out
    return ask


def optuna_asker(knobs: list[Knob], trials: int, metric: str, seed: int, batch: int):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    pending: list = []

    def suggest(trial):
        out = {}
        for k in knobs:
            if k.values is not None:
                out[k.name] = trial.suggest_categorical(k.name, k.values)
            elif KNOBS[k.name] is int:
                out[k.name] = trial.suggest_int(k.name, int(math.ceil(k.low)), int(math.floor(k.high)))
            else:
                out[k.name] = trial.suggest_float(k.name, k.low, k.high)
        return out

    def ask(done: list[Point]):
        for trial, point in zip(pending, done[len(done) - len(pending):]):
            value = point.metrics.get(metric, math.nan)
            study.tell(trial, value if math.isfinite(value) else None,
                       state=None if math.isfinite(value) else optuna.trial.TrialState.FAIL)
        pending.clear()
        left = trials - len(done)
        if left <= 0:
            return None
        for _ in range(min(batch, left)):
            pending.append(study.ask())
        return [suggest(t) for t in pending]
    return ask


def plot_png(points: list[Point], knobs: list[str], metrics: list[str], path: str) -> None:
    """fid vs the first knob; one line per value of the other knobs (a legend entry per combination)."""
    matplotlib.use("Agg")

    x_knob = knobs[0]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups: dict[tuple, list[Point]] = {}
        for p in points:
            key = tuple((k, p.settings[k]) for k in knobs[1:])
            groups.setdefault(key, []).append(p)
        for key, pts in groups.items():
            pts = sorted(pts, key=lambda p: _sortable(p.settings[x_knob]))
            xs = [p.settings[x_knob] for p in pts]
            ys = [p.metrics.get(metric, math.nan) for p in pts]
            label = ", ".join(f"{k}={v}" for k, v in key) or metric
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel(x_knob)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sortable(v):
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))


def sampling_sweep(client, tracking_uri: str, target: str, knobs: list[Knob], *, metric: str = "fid1",
                   optuna_trials: int = 0, seed: int = 0, extractor_id: str | None = None, n: int = 1000,
                   nfes: tuple[int, ...] = (1, 2), batch_size: int = 500, eval_seed: int = 1234,
                   reference: Path | None = None, run_dir: Path = Path("afsweep-runs"), reference_n: int = 10000,
                   ray_address: str | None = None, parallel: int = 2, register_alias: str | None = None,
                   model_name: str | None = None, echo=print) -> SweepResult:
    """Run a sampling sweep over the trial behind `target` (a run id or models:/NAME@ALIAS)."""
    check_request(knobs, metric, nfes)
    run_id = resolve_run_id(client, target)
    path = download_checkpoint(client, run_id, tempfile.mkdtemp(prefix="afsweep-sampling-"))
    gen = Generator(path)
    gen.model(None)
    check_knobs(knobs, gen.info, list(load_state(path)["ema"]))
    dataset_id = (gen.info["extra"].get("data") or {}).get("dataset_id", "")
    extractor_id = extractor_id or DOMAIN_EXTRACTOR.get(dataset_id.split(":")[0])
    if not extractor_id:
        raise SamplingSweepInputError(f"data set {dataset_id!r} has no domain CNN; choose --extractor")
    extractor = load_extractor(extractor_id)
    ref, ref_path = reference_for(extractor, dataset_id, reference, client, run_id, run_dir, reference_n, echo)

    points = grid_points(knobs) if not optuna_trials else None
    batch = parallel if ray_address else 1
    ask = grid_asker(points, batch) if points is not None else optuna_asker(knobs, optuna_trials, metric, seed, batch)
    total = len(points) if points is not None else optuna_trials
    echo(f"sampling sweep over run {run_id}: {total} points ({'grid' if points is not None else 'optuna-tpe'}), "
         f"{extractor.id} at N={n}{', on Ray' if ray_address else ''}")
    sweep_id = uuid.uuid4().hex[:8]
    log_point = point_logger(client, run_id, sweep_id, extractor.id, n, int(gen.info["step"]), echo)

    def score(settings):
        return score_point(gen, settings, extractor, ref, n, nfes, eval_seed, batch_size)

    with ray_scorer(ray_address, path, extractor.id, ref_path, n, nfes, eval_seed, batch_size) as remote:
        done = run_points(ask, score, remote, log_point)
    finite = [p for p in done if math.isfinite(p.metrics.get(metric, math.nan))]
    if not finite:
        raise SamplingSweepError(f"no point gave a finite {metric}")
    best = min(finite, key=lambda p: p.metrics[metric])
    artifacts = log_summary(client, run_id, sweep_id, done, best, [k.name for k in knobs], metric, nfes,
                            extractor.id, n)
    result = SweepResult(sweep_id, run_id, metric, done, best, artifacts)
    if register_alias:
        result.registered = register_with_settings(client, tracking_uri, run_id, path, best.settings,
                                                   model_name, register_alias, f"{metric} {best.metrics[metric]:.3f}")
    return result


def check_request(knobs: list[Knob], metric: str, nfes: tuple[int, ...]) -> None:
    """The knobs and metric name something this sweep can score (SamplingSweepInputError, exit 2, else)."""
    if not knobs:
        raise SamplingSweepInputError("no --knob given: name at least one sampling knob (e.g. --knob t_mid=0.3,0.5)")
    if len({k.name for k in knobs}) != len(knobs):
        raise SamplingSweepInputError("a knob is given twice: list all its values in one --knob")
    if metric == "fid_probe" and "probe_steps" not in {k.name for k in knobs}:
        raise SamplingSweepInputError("--metric fid_probe needs --knob probe_steps=...")
    if metric not in ("fid_probe", *(f"fid{v}" for v in nfes)):
        raise SamplingSweepInputError(f"--metric {metric}: not scored here (nfe {', '.join(map(str, nfes))})")


def point_logger(client, run_id: str, sweep_id: str, extractor_id: str, n: int, step: int, echo):
    """log_point(p): each scored point as a nested run under the trial's run (its knobs as params, its scores)."""
    trial = client.get_run(run_id)

    def log_point(p: Point) -> None:
        label = " ".join(f"{k}={v}" for k, v in p.settings.items())
        r = client.create_run(trial.info.experiment_id, run_name=f"sampling {label}", tags={
            "mlflow.parentRunId": run_id, "afsweep.kind": POINT_KIND, "afsweep.sampling_sweep": sweep_id,
            "afsweep.sampling_of_sweep": trial.data.tags.get("afsweep.sweep", "")})
        p.run_id = r.info.run_id
        params = [Param(k, str(v)) for k, v in p.settings.items()]
        params += [Param("extractor", extractor_id), Param("eval_n", str(n)), Param("trial_run", run_id)]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in p.metrics.items() if math.isfinite(v)]
        client.log_batch(p.run_id, metrics=metrics, params=params)
        client.set_terminated(p.run_id, "FINISHED")
        echo("  " + label + "  " + "  ".join(f"{k} {v:.2f}" for k, v in p.metrics.items()))

    return log_point


@contextmanager
def ray_scorer(ray_address: str | None, path, extractor_id: str, ref_path, n: int, nfes, eval_seed: int,
               batch_size: int):
    """Scores a batch of settings as Ray tasks (None without --ray); a connection opened here is closed here (a
    caller's stays open)."""
    if not ray_address:
        yield None
        return
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if ray_address == "local" else ray_address, include_dashboard=False,
                 log_to_driver=False)
    task = ray.remote(num_cpus=1)(_ray_score)
    try:
        yield lambda batch: ray.get([task.remote(path, s, extractor_id, ref_path, n, nfes, eval_seed, batch_size)
                                     for s in batch])
    finally:
        if started:
            ray.shutdown()


def log_summary(client, run_id: str, sweep_id: str, done: list[Point], best: Point, names: list[str], metric: str,
                nfes, extractor_id: str, n: int) -> list[str]:
    """The fid-vs-knob plot and a JSON summary on the trial's run; their artifact paths."""
    metric_names = [m for m in (*(f"fid{v}" for v in nfes), "fid_probe") if any(m in p.metrics for p in done)]
    artifacts = []
    with tempfile.TemporaryDirectory() as out:
        png = Path(out) / f"fid_vs_{names[0]}.png"
        plot_png(done, names, metric_names, str(png))
        summary = Path(out) / "summary.json"
        summary.write_text(json.dumps({"metric": metric, "extractor": extractor_id, "n": n, "best": best.settings,
                                       "points": [{"settings": p.settings, "metrics": p.metrics, "run_id": p.run_id}
                                                  for p in done]}, indent=1))
        for f in (png, summary):
            client.log_artifact(run_id, str(f), f"sampling_sweep/{sweep_id}")
            artifacts.append(f"sampling_sweep/{sweep_id}/{f.name}")
    return artifacts


def register_with_settings(client, tracking_uri: str, run_id: str, checkpoint: str, settings: dict[str, Any],
                           model_name: str | None, alias: str, why: str) -> str:
    """A new registry version of the trial's generator whose packaged sampling.json holds `settings`, and `alias`
    pointing at it."""
    if not model_name:
        model_name = registered_model_of(client, run_id)
    with global_tracking_uri(tracking_uri):
        model_uri = log_generator_model(tracking_uri, run_id, checkpoint, "generator_sampling",
                                        sampling=settings)
        version = create_version(client, model_name, model_uri, run_id)
    for k, v in settings.items():
        client.set_model_version_tag(model_name, version, f"afsweep.sampling.{k}", str(v))
    client.set_model_version_tag(model_name, version, "afsweep.sampling.chosen_by", why)
    client.set_registered_model_alias(model_name, alias, version)
    return f"models:/{model_name}@{alias}"
