"""Every environment variable loadbench reads, declared once.

The manifests, the README table and the code all refer to this table; a test
keeps them in step. A bad value is a `ConfigError` (exit code 2): no retry of
a pod can fix a typo in its manifest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}

CORE_LIBRARIES = ("tensorizer", "safetensors", "huggingface", "huggingface-bin")
PEER_LIBRARIES = ("fastsafetensors", "runai-streamer")
ALL_LIBRARIES = CORE_LIBRARIES + PEER_LIBRARIES
DTYPES = ("float16", "bfloat16", "float32")
CACHE_MODES = ("cold", "warm", "asis")


class ConfigError(ValueError):
    """A setting that no retry can fix; the message names the variable."""


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(
        f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off"
    )


def _number(cast: Callable[[str], Any], kind: str, minimum: float) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        try:
            value = cast(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not {kind}") from None
        if not value >= minimum:  # also refuses NaN
            raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
        return value

    return parse


def _int(minimum: int) -> Callable[[str, str], int]:
    return _number(int, "an integer", minimum)


def _float(minimum: float) -> Callable[[str, str], float]:
    return _number(float, "a number", minimum)


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
        return value

    return parse


def _str(name: str, raw: str) -> str:
    return raw.strip()


def _device(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise ConfigError(f"{name}={raw!r} is not a device: use auto, cpu, cuda or cuda:N")


def _libraries(name: str, raw: str) -> list[str]:
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    for lib in names:
        if lib not in ALL_LIBRARIES:
            raise ConfigError(
                f"{name}: unknown library {lib!r}; known: {', '.join(ALL_LIBRARIES)}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"{name}={raw!r} names a library twice")
    return names


def _sweep(minimum: int) -> Callable[[str, str], list[int | None]]:
    """A tuning knob that may list several values, one result document each.

    `default` (or an empty item) means: leave the library's own default.
    """
    one = _int(minimum)

    def parse(name: str, raw: str) -> list[int | None]:
        items = [part.strip() for part in raw.split(",")] or [""]
        return [None if item in ("", "default") else one(name, item) for item in items]

    return parse


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str, str], Any]
    default: str
    help: str
    accepted: str
    group: str = "benchmark"
    seed: bool = False

    def read(self, environ: Mapping[str, str]) -> Any:
        raw = environ.get(self.name)
        if raw is None or raw.strip() == "":
            raw = self.default
        if raw == "":
            return None  # unset, and no default: resolved in load() or left out
        return self.parse(self.name, raw)


BOOL = "1/0, true/false, yes/no, on/off"

SETTINGS: tuple[Setting, ...] = (
    Setting("MODEL_ID", _str, "random/opt-tiny",
            "Model to save and load: a hub id, a local directory, or a built-in random-weight model "
            "random/<name> (opt-tiny, gpt-j-6b, opt-30b, llama-2-7b).",
            "hub id, path, random/<name>", "model", seed=True),
    Setting("MODEL_PATH", _str, "",
            "Folder holding this model's checkpoints and manifest.json. "
            "Empty: ./loadbench-data/models/<model name>.", "path", "model", seed=True),
    Setting("DTYPE", _choice(DTYPES), "",
            "Weight dtype. Empty: float16, or float32 when USE_FP16=0.",
            ", ".join(DTYPES), "model"),
    Setting("USE_FP16", lambda n, r: parse_bool(n, r), "",
            "Seed name: 1 means DTYPE=float16, 0 means float32. Conflicting with DTYPE is an error.",
            BOOL, "model", seed=True),
    Setting("RANDOM_SEED", _int(0), "0", "Seed for the random weights of random/<name> models.",
            "integer >= 0", "model"),
    Setting("NUM_TRIALS", _int(1), "1",
            "Trials per library in this process (saves per format for save_models.py). "
            "A pod is one fresh process; later trials in one process reuse its warm CUDA context.",
            "integer >= 1", "benchmark", seed=True),
    Setting("RES_PATH", _str, "./results",
            "Where result documents go: RES_PATH/<RUN_ID>/<library>/<pod>-<attempt>.json.",
            "path", "benchmark", seed=True),
    Setting("RUN_ID", _str, "",
            "Groups the documents of one experiment. Empty: <model name>-<CACHE_MODE>.",
            "letters, digits, . _ -", "benchmark"),
    Setting("LIBRARIES", _libraries, "",
            "Comma list of libraries to run (wins over SKIP_*). Empty: the four core libraries "
            "minus those skipped.", ", ".join(ALL_LIBRARIES), "benchmark"),
    Setting("SKIP_TZR", lambda n, r: parse_bool(n, r), "0", "Seed name: skip tensorizer.",
            BOOL, "benchmark", seed=True),
    Setting("SKIP_ST", lambda n, r: parse_bool(n, r), "0", "Seed name: skip safetensors.",
            BOOL, "benchmark", seed=True),
    Setting("SKIP_HF", lambda n, r: parse_bool(n, r), "0",
            "Seed name: skip huggingface and huggingface-bin.", BOOL, "benchmark", seed=True),
    Setting("DEVICE", _device, "auto",
            "Where weights go. auto: cuda when a GPU is visible, else cpu. "
            "cuda with no GPU is an error.", "auto, cpu, cuda, cuda:N", "benchmark"),
    Setting("CACHE_MODE", _choice(CACHE_MODES), "cold",
            "cold: evict the checkpoint from the page cache before each trial (measured); "
            "warm: read it fully first; asis: leave the cache alone.",
            ", ".join(CACHE_MODES), "benchmark"),
    Setting("SKIP_INFERENCE", lambda n, r: parse_bool(n, r), "0",
            "Seed name: skip generating tokens after the load.", BOOL, "benchmark", seed=True),
    Setting("MAX_NEW_TOKENS", _int(1), "32", "Greedy tokens generated per trial for tokens/s.",
            "integer >= 1", "benchmark"),
    Setting("CEILINGS", lambda n, r: parse_bool(n, r), "0",
            "Measure this machine's limits in the pod: storage read of the checkpoint's files, "
            "page-cache read, pinned and pageable host-to-device.", BOOL, "benchmark"),
    Setting("CEILING_SECONDS", _float(0.1), "3",
            "Time bound of each ceiling measurement, in seconds.", "number >= 0.1", "benchmark"),
    Setting("TZR_NUM_READERS", _sweep(1), "",
            "tensorizer: parallel readers. A comma list sweeps (one document each); "
            "default means tensorizer's own default.", "integers >= 1, default", "tuning"),
    Setting("TZR_VERIFY_HASH", lambda n, r: parse_bool(n, r), "0",
            "tensorizer: verify its own per-tensor hashes while loading (inside the timed region).",
            BOOL, "tuning"),
    Setting("FST_NOGDS", lambda n, r: parse_bool(n, r), "1",
            "fastsafetensors: 1 reads through the page cache (no GPUDirect Storage); 0 tries GDS.",
            BOOL, "tuning"),
    Setting("FST_MAX_THREADS", _sweep(1), "",
            "fastsafetensors: copy threads. A comma list sweeps.", "integers >= 1, default",
            "tuning"),
    Setting("RUNAI_CONCURRENCY", _sweep(1), "",
            "runai-streamer: reader threads (RUNAI_STREAMER_CONCURRENCY). A comma list sweeps.",
            "integers >= 1, default", "tuning"),
    Setting("JOB_NAME", _str, "", "Identity: the Job's name (Downward API label job-name).",
            "string", "identity"),
    Setting("JOB_COMPLETION_INDEX", _int(0), "",
            "Identity: set by Kubernetes in Indexed Jobs.", "integer >= 0", "identity"),
    Setting("POD_NAME", _str, "", "Identity: Downward API metadata.name.", "string", "identity"),
    Setting("POD_UID", _str, "", "Identity: Downward API metadata.uid.", "string", "identity"),
    Setting("NODE_NAME", _str, "", "Identity: Downward API spec.nodeName.", "string", "identity"),
    Setting("POD_NAMESPACE", _str, "", "Identity: Downward API metadata.namespace.", "string",
            "identity"),
)

BY_NAME = {s.name: s for s in SETTINGS}
SWEEP_SETTINGS = {
    "tensorizer": ("TZR_NUM_READERS", "num_readers"),
    "fastsafetensors": ("FST_MAX_THREADS", "max_threads"),
    "runai-streamer": ("RUNAI_CONCURRENCY", "concurrency"),
}


def model_slug(model_id: str) -> str:
    """A file-name-safe short name: random/gpt-j-6b -> gpt-j-6b, org/name -> name."""
    base = model_id.rstrip("/").split("/")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base)


@dataclass
class Settings:
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every declared variable; resolve the derived ones."""
    env = os.environ if environ is None else environ
    values = {s.name: s.read(env) for s in SETTINGS}

    use_fp16 = values["USE_FP16"]
    if values["DTYPE"] is None:
        values["DTYPE"] = "float32" if use_fp16 is False else "float16"
    elif use_fp16 is not None and use_fp16 != (values["DTYPE"] == "float16"):
        raise ConfigError(
            f"USE_FP16={env.get('USE_FP16')!r} contradicts DTYPE={values['DTYPE']!r}: set only one"
        )

    if not values["LIBRARIES"]:
        skipped = set()
        if values["SKIP_TZR"]:
            skipped.add("tensorizer")
        if values["SKIP_ST"]:
            skipped.add("safetensors")
        if values["SKIP_HF"]:
            skipped |= {"huggingface", "huggingface-bin"}
        values["LIBRARIES"] = [lib for lib in CORE_LIBRARIES if lib not in skipped]
        if not values["LIBRARIES"]:
            raise ConfigError("every library is skipped (SKIP_TZR, SKIP_ST, SKIP_HF): nothing to run")

    slug = model_slug(values["MODEL_ID"])
    if not values["MODEL_PATH"]:
        values["MODEL_PATH"] = os.path.join("loadbench-data", "models", slug)
    if not values["RUN_ID"]:
        values["RUN_ID"] = f"{slug}-{values['CACHE_MODE']}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", values["RUN_ID"]):
        raise ConfigError(f"RUN_ID={values['RUN_ID']!r}: use only letters, digits, '.', '_' and '-'")
    return Settings(values)


def variants(settings: Settings) -> list[tuple[str, dict[str, int]]]:
    """(library, tuning) pairs: one per value of a library's sweep variable."""
    out: list[tuple[str, dict[str, int]]] = []
    for lib in settings["LIBRARIES"]:
        sweep = SWEEP_SETTINGS.get(lib)
        values = (settings[sweep[0]] if sweep else None) or [None]
        for value in values:
            out.append((lib, {} if value is None else {sweep[1]: value}))
    return out


def label(library: str, tuning: Mapping[str, Any]) -> str:
    """The name a variant carries in folders, tables and plots."""
    if not tuning:
        return library
    return library + "-" + "-".join(f"{k.replace('_', '')}{v}" for k, v in sorted(tuning.items()))
