"""The Ray cluster both commands run on: joining or starting it, fitting work to its nodes, sharing the data.

A request no node can hold (more GPUs or CPUs per trial than the largest node has, or more memory
than a node has for the data and its trials) is refused up front with one clear error, instead of
waiting forever for resources that never come or being killed for memory halfway.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TRIAL_GB = 1.0  # a trial's own memory besides the data (0.6-0.8 GB measured by python -m bench.search_speed)


@dataclass(frozen=True)
class Resources:  # per task
    cpu: float
    gpu: float
    concurrent: int  # how many such tasks the cluster holds at once

    def options(self) -> dict:
        return {"num_cpus": self.cpu, "num_gpus": self.gpu}


def ensure_ray(address: str | None, log: Callable[[str], None], **resources: float) -> None:
    """Join the given cluster, or reuse the running Ray, or start a local one (with `resources`, e.g.
    num_cpus and num_gpus, where given). Joining a cluster sends its token as every node of it does:
    RAY_AUTH_MODE=token and the token's file in RAY_AUTH_TOKEN_PATH (or the token in RAY_AUTH_TOKEN)."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    # Ray starts its workers at nice 15: beside any other busy process a trial got a sliver of a core
    # and the main job ran 2x slower beside one CPU-bound process. At 0 it gets its fair share.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **resources)
    # "local" starts a Ray of this process' own, even where another Ray runs on the machine
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    if target != "local":
        check_token()
    try:
        ray.init(address=target, **kwargs)
    except AuthenticationError:  # token mode, and no token anywhere Ray looks
        raise ConfigError(f"RAY_AUTH_MODE=token but no token: set {TOKEN_PATH_ENV} to the file holding the Ray "
                          "cluster's token") from None
    except ConnectionError as e:
        if "InvalidAuthToken" in str(e.__cause__):
            raise ConfigError(f"--ray-address {target}: the Ray cluster refused this client's token: "
                              f"{_token_hint()}") from None
        raise ConfigError(f"--ray-address {target}: no Ray cluster answers there ({e})") from None
    resources = ray.cluster_resources()
    log(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")


def check_token() -> None:
    """One clear error for a token set up wrongly, before Ray's own (several lines, or a 20 s wait)."""
    path = os.environ.get(TOKEN_PATH_ENV)
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if (path or os.environ.get("RAY_AUTH_TOKEN")) and mode != "token":
        # Ray reads the mode once, when it is imported, so this process cannot switch it on itself
        raise ConfigError(f"{TOKEN_PATH_ENV if path else 'RAY_AUTH_TOKEN'} is set but RAY_AUTH_MODE is "
                          f"{mode or 'not set'}: set RAY_AUTH_MODE=token too (Ray sends no token otherwise)")
    if not path:
        return
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{TOKEN_PATH_ENV}={path}: no such file (the Ray cluster's token)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{TOKEN_PATH_ENV}={path}: cannot read the token: {getattr(e, 'strerror', None) or e}") from None
    if not token:
        raise ConfigError(f"{TOKEN_PATH_ENV}={path}: the file is empty (it must hold the Ray cluster's token)")


def require_token() -> None:
    """A node of a cluster reachable from the network starts only with token auth on and a token to use."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        raise ConfigError("RAY_AUTH_MODE is not 'token': set RAY_AUTH_MODE=token (whoever reaches a Ray cluster "
                          "without token auth can run code on it)")
    if not os.environ.get(TOKEN_PATH_ENV):
        raise ConfigError(f"{TOKEN_PATH_ENV} is not set: set it to the file holding the Ray cluster's token")
    check_token()


def _token_hint() -> str:
    path = os.environ.get(TOKEN_PATH_ENV)
    if os.environ.get("RAY_AUTH_MODE") != "token":
        return f"set RAY_AUTH_MODE=token and {TOKEN_PATH_ENV} to the file holding the cluster's token"
    if path:
        return f"the token in {TOKEN_PATH_ENV}={path} is not the cluster's: point it at the head's token file"
    return f"set {TOKEN_PATH_ENV} to the file holding the cluster's token"


def fit_resources(cpu: float, gpu: float, max_concurrent: int | None, what: str,
                  log: Callable[[str], None]) -> Resources:
    """Resources per task on this cluster; GPUs asked of a cluster that has none become CPUs.
    `what` names the setting in errors (e.g. "resources" of a study file, or "--cpu/--gpu")."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_cpus = max(n.get("CPU", 0) for n in nodes)
    most_gpus = max(n.get("GPU", 0) for n in nodes)
    if gpu > 0 and most_gpus == 0:
        log(f"{what}: {gpu:g} GPU per task, but the Ray cluster has no GPU: running on CPUs")
        gpu = 0.0
    if gpu > most_gpus:
        raise ConfigError(f"{what}.gpu: {gpu:g} GPUs per task, but the largest node has {most_gpus:g}")
    if cpu > most_cpus:
        raise ConfigError(f"{what}.cpu: {cpu:g} CPUs per task, but the largest node has {most_cpus:g}")
    fits = sum(min(math.floor(n.get("CPU", 0) / cpu + 1e-9),
                   math.floor(n.get("GPU", 0) / gpu + 1e-9) if gpu else 10 ** 6) for n in nodes)
    if fits < 1:
        raise ConfigError(f"{what}: no node has room for one task of {cpu:g} CPU and {gpu:g} GPU")
    return Resources(cpu, gpu, min(max_concurrent or fits, fits))


def put_corpus(corpus):
    """The data set, once per node: on one machine only the names of its memory-mapped cache files travel
    (every trial maps the same pages); across machines, Ray's object store carries its arrays."""
    import ray

    here = ray.util.get_node_ip_address()
    one_host = all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive"))
    return ray.put(corpus if one_host else corpus.in_memory())


def check_memory(data_bytes: int, resources: Resources, what: str) -> None:
    """Every node that runs tasks must hold the data once plus TRIAL_GB per task it runs at once."""
    import ray

    for node in (n["Resources"] for n in ray.nodes() if n.get("Alive")):
        slots = math.floor(node.get("CPU", 0) / resources.cpu + 1e-9)
        if resources.gpu:
            slots = min(slots, math.floor(node.get("GPU", 0) / resources.gpu + 1e-9))
        tasks = min(slots, resources.concurrent)
        if tasks < 1:
            continue
        has = (node.get("memory", 0) + node.get("object_store_memory", 0)) / 2 ** 30
        needs = data_bytes / 2 ** 30 + tasks * TRIAL_GB
        if needs > has:
            raise ConfigError(f"{what}: {tasks} task(s) at a time on a node need about {needs:.1f} GB (the data, "
                              f"{data_bytes / 2 ** 30:.1f} GB, once, and about {TRIAL_GB:g} GB per task), but the "
                              f"node has {has:.1f} GB; lower resources.max_concurrent or search fewer feature sets")
