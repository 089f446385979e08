"""The model registry: a trial's best checkpoint logged as a pyfunc generator, registered, and the `best-<metric>`
aliases moved only to a better model scored the same way."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from orchestrator.tracking.generator_model import global_tracking_uri, log_generator_model

CHECKPOINT_ARTIFACT = "checkpoint/model.pt"
MODEL_ARTIFACT = "generator"
MODEL_URI_TAG = "afsweep.model_uri"  # the run's logged generator (models:/m-...), logged once per run
EXTRACTOR_PARAM = "eval.extractor"
EVAL_N_PARAM = "eval.samples"


def default_model_name(dataset_id: str) -> str:
    """The registry name of a sweep's generators when its spec names none: afsweep-<data set>."""
    return f"afsweep-{dataset_id.split(':')[0]}"



def registered_uri_for_run(client: MlflowClient, run_id: str, metric: str | None = None) -> str | None:
    """The registry URI of the run's model: by its alias (`best-<metric>` first), else by version; else the run's
    logged model; None if it has neither."""
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:
        return None
    if not versions:
        return client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    v = max(versions, key=lambda mv: int(mv.version))
    # search results leave aliases out: ask for the version itself
    aliases = list(client.get_model_version(v.name, v.version).aliases or [])
    preferred = f"best-{metric}" if metric else None
    if preferred in aliases:
        return f"models:/{v.name}@{preferred}"
    return f"models:/{v.name}@{sorted(aliases)[0]}" if aliases else f"models:/{v.name}/{v.version}"


def register_generator(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str,
                       aliases: list[str]) -> str:
    """Log the trial's best checkpoint as a pyfunc generator (once per run) and point the aliases at it (what the
    user asked for: no comparison with the current holders; the sweep's own registration is `promote_best`)."""
    version = register_version(client, tracking_uri, run_id, model_name)
    for alias in aliases:
        client.set_registered_model_alias(model_name, alias, version)
    return f"models:/{model_name}@{aliases[0]}" if aliases else f"models:/{model_name}/{version}"


def register_version(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str) -> str:
    """The registry version of the run's generator, created (model logged into the run) if it has none."""
    with global_tracking_uri(tracking_uri):
        model_uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
        if not model_uri:
            local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT)
            model_uri = log_generator_model(tracking_uri, run_id, local, MODEL_ARTIFACT)
            client.set_tag(run_id, MODEL_URI_TAG, model_uri)
        existing = client.search_model_versions(f"run_id = '{run_id}' and name = '{model_name}'")
        if existing:
            return max(existing, key=lambda mv: int(mv.version)).version
        return create_version(client, model_name, model_uri, run_id)


def create_version(client: MlflowClient, model_name: str, model_uri: str, run_id: str) -> str:
    """A new version of the registered model (created on first use) whose source is the logged model."""
    try:
        client.get_registered_model(model_name)
    except Exception:
        client.create_registered_model(model_name, description="afsweep generators (1- and 2-NFE)")
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
    return client.create_model_version(model_name, source=model_uri, run_id=run_id, model_id=model_id).version


@dataclass
class Promotion:
    """What `promote_best` did with one alias."""
    alias: str
    version: str              # the sweep's best, registered
    moved: bool               # the alias now points at it
    reason: str               # why it moved or stayed
    uri: str                  # models:/NAME@ALIAS if moved, else models:/NAME/VERSION


def score_of(client: MlflowClient, run_id: str, metric: str) -> tuple[float | None, str | None, str | None]:
    """A run's best score and what it was measured with (feature extractor, number of samples)."""
    run = client.get_run(run_id)
    return (run.data.metrics.get(f"{metric}_best"), run.data.params.get(EXTRACTOR_PARAM),
            run.data.params.get(EVAL_N_PARAM))


def promote_best(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str, metric: str,
                 policy: str = "if_better", mode: str = "min") -> Promotion:
    """Register the sweep's best trial and move `best-<metric>` to it only when it beats the current holder on the
    same extractor and N (policy if_better), or always (policy always). An alias never moves to a worse model, or
    to one scored another way, without being asked."""
    alias = f"best-{metric}"
    version = register_version(client, tracking_uri, run_id, model_name)
    value, extractor, n = score_of(client, run_id, metric)
    try:
        holder = client.get_model_version_by_alias(model_name, alias)
    except Exception:  # no such alias yet (MLflow raises RESOURCE_DOES_NOT_EXIST)
        holder = None
    moved, reason = True, "first holder"
    if holder is not None and str(holder.version) == str(version):
        reason = "already the holder"
    elif holder is not None and policy != "always":
        h_value, h_extractor, h_n = score_of(client, holder.run_id, metric) if holder.run_id else (None, None, None)
        if h_value is None or (h_extractor, h_n) != (extractor, n):
            moved = False
            reason = (f"version {holder.version} holds it, scored with {h_extractor or '?'} at N={h_n or '?'}; this "
                      f"sweep's best is scored with {extractor} at N={n}: not comparable")
        elif (value < h_value) if mode == "min" else (value > h_value):
            reason = f"{metric} {value:.3f} beats version {holder.version}'s {h_value:.3f}"
        else:
            moved = False
            reason = f"version {holder.version}'s {metric} {h_value:.3f} is not beaten by {value:.3f}"
    elif holder is not None:
        reason = "policy always"
    if moved:
        client.set_registered_model_alias(model_name, alias, version)
    uri = f"models:/{model_name}@{alias}" if moved else f"models:/{model_name}/{version}"
    return Promotion(alias=alias, version=str(version), moved=moved, reason=reason, uri=uri)


def registered_model_of(client: MlflowClient, run_id: str) -> str:
    """The registry name the trial's sweep uses (recorded on the parent run at launch)."""
    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    params = client.get_run(parent).data.params if parent else {}
    if params.get("registered_model"):
        return params["registered_model"]
    return default_model_name(params.get("dataset", "model"))


CONFIRMED_TAGS = ("afsweep.confirmed_mean", "afsweep.confirmed_low", "afsweep.confirmed_high", "afsweep.confirmed_n")


def confirmed_range(client: MlflowClient, model_name: str, version: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of a version's confirmed score, from its tags; None for a version never confirmed."""
    tags = client.get_model_version(model_name, version).tags or {}
    if not all(t in tags for t in CONFIRMED_TAGS[:3]):
        return None
    return tuple(float(tags[t]) for t in CONFIRMED_TAGS[:3])


def promote_confirmed(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str, metric: str,
                      mean: float, half: float, n: int, description: str, extra_tags: dict[str, str],
                      mode: str = "min") -> Promotion:
    """Register a confirmed winner (its mean, 95% interval and n in the version's tags, the summary as its
    description) and move `best-<metric>` to it only when it beats the holder beyond both intervals: its interval
    lies wholly on the better side of the holder's (a holder never confirmed counts as its single score, no
    interval). Otherwise the version is registered and the alias stays, with the reason."""
    alias = f"best-{metric}"
    version = str(register_version(client, tracking_uri, run_id, model_name))
    low, high = mean - half, mean + half
    for key, value in zip(CONFIRMED_TAGS, (mean, low, high, n)):
        client.set_model_version_tag(model_name, version, key, f"{value:.6g}")
    for key, value in extra_tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.update_model_version(model_name, version, description=description)
    try:
        holder = client.get_model_version_by_alias(model_name, alias)
    except Exception:  # no such alias yet (MLflow raises RESOURCE_DOES_NOT_EXIST)
        holder = None
    this = f"{metric} {mean:.3f} [{low:.3f}, {high:.3f}] (n={n})"
    if holder is None:
        moved, reason = True, "first holder"
    elif str(holder.version) == version:
        moved, reason = True, "already the holder"
    else:
        held = confirmed_range(client, model_name, holder.version)
        if held is None:
            value = score_of(client, holder.run_id, metric)[0] if holder.run_id else None
            held = None if value is None else (value, value, value)
            what = f"version {holder.version}'s single score {value}" if value is not None else \
                f"version {holder.version} (no score)"
        else:
            what = f"version {holder.version}'s confirmed {held[0]:.3f} [{held[1]:.3f}, {held[2]:.3f}]"
        better = held is None or (high < held[1] if mode == "min" else low > held[2])
        moved = better
        reason = (f"{this} beats {what} beyond both intervals" if better else
                  f"{this} does not beat {what} beyond both intervals")
    if moved:
        client.set_registered_model_alias(model_name, alias, version)
    uri = f"models:/{model_name}@{alias}" if moved else f"models:/{model_name}/{version}"
    return Promotion(alias=alias, version=version, moved=moved, reason=reason, uri=uri)
