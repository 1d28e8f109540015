"""Job and ConfigMap manifests, and the env files ConfigMaps are generated from.

What kubectl and kustomize would read, read the same way here: a local run
must give a pod exactly the environment the cluster would, or it tests
something else. Every problem is a `ManifestError` (bad input: exit 2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from loadbench.errors import BadInput

KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONFIGMAP_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class ManifestError(BadInput):
    """A manifest or argument this runner cannot map onto the machine."""


@dataclass(frozen=True)
class ConfigMap:
    name: str
    data: dict[str, str]
    source: str  # where it came from, for the log


def documents(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ManifestError(f"{path} is not YAML: {e}") from None


def load_jobs(path: str) -> list[dict[str, Any]]:
    return [d for d in documents(path) if d.get("kind") == "Job"]


def read_env_file(path: str) -> dict[str, str]:
    """NAME=VALUE lines as kubectl and kustomize read them (`--from-env-file`, `env:`):
    leading blanks dropped, blank and # lines skipped, the value taken literally
    (no quotes removed). A bare NAME (value from your shell) is refused: an
    experiment must not depend on the shell it was started from."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r").lstrip()
            if not line or line.startswith("#"):
                continue
            name, eq, value = line.partition("=")
            if not eq:
                raise ValueError(f"{path}:{n}: {line!r} has no '=': write NAME=VALUE (kubectl would "
                                 "take the value from your shell)")
            if not ENV_VAR.fullmatch(name):
                raise ValueError(f"{path}:{n}: {name!r} is not an environment variable name")
            out[name] = value
    return out


def kustomization(folder: str) -> tuple[str, dict[str, Any]] | None:
    for name in KUSTOMIZATIONS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                return path, yaml.safe_load(f) or {}
    return None


def generated_configmaps(folder: str) -> dict[str, ConfigMap]:
    """The ConfigMaps a kustomization's configMapGenerator makes (env, envs, literals)."""
    found = kustomization(folder)
    if not found:
        return {}
    path, kust = found
    out: dict[str, ConfigMap] = {}
    for gen in kust.get("configMapGenerator") or []:
        data: dict[str, str] = {}
        files = ([gen["env"]] if gen.get("env") else []) + list(gen.get("envs") or [])
        for env_file in files:
            data.update(read_env_file(os.path.join(folder, env_file)))
        for literal in gen.get("literals") or []:
            k, _, v = str(literal).partition("=")
            data[k] = v
        source = ", ".join(files) or "literals"
        out[gen["name"]] = ConfigMap(gen["name"], data, f"{source} ({os.path.basename(path)})")
    return out


def render_configmap(folder: str, name: str = "loadbench-experiment") -> str:
    """The committed ConfigMap manifest for plain `kubectl apply -f`: exactly what
    kustomization.yaml's generator makes from its env file, in file order."""
    found = kustomization(folder)
    gen = next((g for g in (found[1].get("configMapGenerator") or []) if g.get("name") == name),
               None) if found else None
    if found is None or gen is None:
        raise ManifestError(f"no configMapGenerator named {name!r} in {folder}/kustomization.yaml")
    cm = generated_configmaps(folder)[name]
    options = found[1].get("generatorOptions") or {}
    env_file = cm.source.split(" (")[0]
    meta: dict[str, Any] = {"name": name}
    for key in ("labels", "annotations"):
        if options.get(key):
            meta[key] = dict(options[key])
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": cm.data}
    head = (f"# GENERATED from {env_file}: edit {env_file}, then run\n"
            f"#   python -m loadbench.localjob --render-configmap > experiment-configmap.yaml\n"
            f"# (a test checks that the two agree). For plain `kubectl apply -f`, with any Job manifest:\n"
            f"#   kubectl apply -f experiment-configmap.yaml -f benchmark-matrix-job.yaml\n"
            f"# `kubectl apply -k .` generates the same ConfigMap from {env_file} itself.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000)


def configmaps_for(manifests: Iterable[str], env_files: Iterable[str] = ()) -> dict[str, ConfigMap]:
    """Every ConfigMap a pod of these manifests may name, by precedence: generated by a
    kustomization.yaml beside a manifest, then ConfigMap documents in the manifests,
    then --env-file [NAME=]FILE (a FILE without NAME serves every envFrom ConfigMap)."""
    out: dict[str, ConfigMap] = {}
    paths = list(manifests)
    for folder in dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in paths):
        out.update(generated_configmaps(folder))
    for path in paths:
        for d in documents(path):
            if d.get("kind") == "ConfigMap":
                name = d["metadata"]["name"]
                out[name] = ConfigMap(name, {k: str(v) for k, v in (d.get("data") or {}).items()},
                                      os.path.basename(path))
    for spec in env_files:
        name, eq, path = spec.partition("=")
        if not eq or os.path.exists(spec) or not CONFIGMAP_NAME.fullmatch(name):
            name, path = "*", spec
        try:
            out[name] = ConfigMap(name, read_env_file(path), f"{path} (--env-file)")
        except OSError as e:
            raise ManifestError(f"--env-file {spec}: {e.strerror}") from None
        except ValueError as e:
            raise ManifestError(str(e)) from None
    return out


def pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """NAME=VALUE arguments (--pvc, --set) as a mapping; anything else is refused."""
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise ManifestError(f"{what} takes NAME=VALUE, not {item!r}")
        out[k] = v
    return out
