"""The result document: one per library variant per pod, typed and versioned.

Readers validate every document with `problems(doc)` before it counts; it
returns per-field reasons ("trials.0.total_s: Input should be a finite
number") and never raises. The models allow keys they do not name (a newer
producer may add some), but everything the reporter reads is typed: statuses
are enums, times and rates are finite and non-negative, names are strings.
`python -m loadbench.schema --export docs/schema` writes the JSON Schema.

Version history (as pyperf keeps one):

- ``loadbench.result/1``: the first published documents (docs/results/):
  schema, status, error, library, label, ``tuning`` (the swept library
  options), run_id, identity, settings, model, device, versions, machine,
  ceilings (storage_read, page_cache_read, h2d_pinned, h2d_pageable: gbps,
  bytes, seconds, method), warnings, started_at, finished_at, and trials
  (status, cache_mode, resident_before, skeleton_s, weights_s, total_s, gbps,
  ceiling_fraction, peak_rss_bytes, peak_device_bytes, tensors_verified,
  mismatches, tokens_per_s, started_at, finished_at).
- ``loadbench.result/2``: ``options`` (library option field -> value) replaces
  ``tuning`` (readers map a v1 ``tuning`` to ``options``); ``io_mode`` (how the
  library reads, e.g. "page cache, 16 readers"); ``pod`` (the pod's whole
  time: process_started_at, phases of startup/imports, device_init, ceilings,
  trials, write, and total_s); ``tp_size`` (default 1). Ceilings gain
  ``source`` (measured | reused), ``node``, ``unreliable`` (ceilings a trial
  beat by more than 3%), plain values such as ``file``, ``measured_at`` and
  ``lock_wait_s``, and a per-ceiling ``spread`` (min_gbps, max_gbps, tries).
  Trials gain ``cache_s`` (bringing the page cache into the asked state),
  ``peak_rss_method``, ``verify_s``, ``ceiling``, ``ceiling_gbps``, ``ceiling_beaten``,
  ``first_token_s``, ``tokens_per_s_runs``, ``library_info``, ``output_ids``,
  ``warnings``, ``error`` and ``ranks`` (per-rank objects of a tensor-parallel
  load). Also checked from v2 on, and of v1 documents read today: an ok trial
  has a positive total_s, a trial does not finish before it starts, and a
  document that is ok or has ok trials names its model (bytes >= 1) and device.
- ``loadbench.result/3``: trials gain ``index_in_process`` (how many loads the
  process made before this one, any library: 0 is what a pod pays, the
  headline; later ones are "repeats in a warm process"), ``download_s`` (from
  object storage: the download inside the timed load), ``storage_read_bytes``
  and ``cache_read_bytes`` (from /proc/self/io: bytes the load read from
  storage and from the page cache) and ``device_copy_bytes``. Ranks declare
  every key the producer writes (node, pod, resident_before, barrier_s,
  cache_s, started_at, finished_at and the byte counts). Documents are
  validated against this model when they are written, not only when read.
  Documents gain ``source`` (uri, cache, endpoint, how credentials were found;
  never a secret) when MODEL_URI was set.
  Readers of v1/v2 documents take a trial's position in its document as its
  index in the process.
  Pod phases may name the third-party ``packages`` they imported first (an
  optional field; documents without it stay valid).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from loadbench.schema.checks import MAX_DEPTH as MAX_DEPTH  # noqa: E402
from loadbench.schema.checks import MAX_PROBLEMS as MAX_PROBLEMS  # noqa: E402
from loadbench.schema.checks import check as check  # noqa: E402
from loadbench.schema.checks import format_errors as format_errors  # noqa: E402
from loadbench.schema.checks import scan as scan  # noqa: E402

SCHEMA = "loadbench.result/3"
READABLE = ("loadbench.result/1", "loadbench.result/2", "loadbench.result/3")
LOG_PREFIX = "LOADBENCH_RESULT "  # a result document as one log line: the one spelling

MAX_SECONDS = 1e9         # ~31 years: bounds keep every statistic finite
MAX_RATE = 1e9            # GB/s, tokens/s
MIN_LOAD_S = 1e-6         # an ok load takes at least a microsecond
MAX_INT = 2**63 - 1       # what int64 columns hold

# --- value types ---------------------------------------------------------------------------

Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0, le=MAX_RATE, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=MAX_RATE, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Int64 = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]


def text(pattern: str, message: str, min_length: int = 0, max_length: int | None = None) -> Any:
    """A string type checked against pattern, with a reason a person can act on."""
    rx = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str):
            if len(value) < min_length:
                raise ValueError("should not be empty" if min_length == 1 else
                                 f"should have at least {min_length} characters")
            if max_length is not None and len(value) > max_length:
                raise ValueError(f"should have at most {max_length} characters")
            if not rx.fullmatch(value):
                raise ValueError(message)
        return value
    return Annotated[str, BeforeValidator(check),
                     Field(min_length=min_length, max_length=max_length, pattern=pattern)]


SLUG_CHARS = r"[A-Za-z0-9._-]"
# A name a pod phase may give for a package it imported (a Slug), and how many one phase may give:
# the writer keeps to both, or its document would be invalid; the reporter drops anything else.
PACKAGE = re.compile(rf"{SLUG_CHARS}{{1,100}}")
MAX_PACKAGES = 2000

# Names that end up in tables, plot titles and file names: printable, no '$' (matplotlib
# would read "$...$" as mathtext), bounded so that a file name made of them stays valid.
if TYPE_CHECKING:  # text() builds its types at run time; to mypy each is the str it checks
    Line = str
    Label = str
    AsciiName = str
    Slug = str
    Mode = str
else:
    Line = text(r"^[^\x00-\x1f\x7f]*$", "should be one line of text (no control characters)", 1, 200)
    Label = text(r"^[^\x00-\x1f\x7f$]*$", "should be one line of text without control characters or '$'",
                 1, 200)
    AsciiName = text(r"^[\x20-\x23\x25-\x7e]*$", "should be printable ASCII without '$'", 1, 100)
    Slug = text(rf"^{SLUG_CHARS}*$", "should use only letters, digits, '.', '_' and '-'", 1, 100)
    Mode = text(r"^[A-Za-z0-9_-]*$", "should use only letters, digits, '_' and '-'", 1, 32)


def _plain(value: Any) -> Any:
    """A JSON string, finite number, boolean or null (one reason, not one per type)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int) and -MAX_INT <= value <= MAX_INT:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError("should be a string, a finite number, a boolean or null")


PLAIN_JSON = {"type": ["string", "number", "boolean", "null"]}
# A library option's value, or any other plain value.
OptionValue = Annotated[Any, AfterValidator(_plain), WithJsonSchema(PLAIN_JSON)]


def _timestamp(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("should be an ISO 8601 date and time, e.g. 2026-11-22T02:40:18.196+00:00"
                         ) from None
    if parsed.tzinfo is None:
        raise ValueError("should carry a UTC offset, e.g. +00:00")
    return value


Timestamp = Annotated[str, AfterValidator(_timestamp),
                      WithJsonSchema({"type": "string", "format": "date-time"})]


class Model(BaseModel):
    """Strict types (no "1.5" for 1.5, no true for 1), unknown keys allowed."""
    model_config = ConfigDict(strict=True, extra="allow")


# --- parts ---------------------------------------------------------------------------------

class Error(Model):
    """What went wrong, in one line each."""
    type: str
    message: str
    where: Optional[str] = None


class Mismatch(Model):
    tensor: str
    problem: str


class Spread(Model):
    """How much the tries of one ceiling measurement varied (v2)."""
    min_gbps: Optional[Rate] = None
    max_gbps: Optional[Rate] = None
    tries: Optional[Count] = None


class Ceiling(Model):
    gbps: Optional[Rate] = None
    bytes: Optional[Count] = None
    seconds: Optional[Seconds] = None
    method: Optional[str] = None
    tries: Optional[dict[str, Ceiling]] = None
    spread: Optional[Spread] = None


def _ceiling_or_plain(value: Any) -> Any:
    if isinstance(value, dict):
        try:
            Ceiling.model_validate(value)
        except ValidationError as e:
            raise ValueError("; ".join(format_errors(e))) from None
        return value
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return value
        raise ValueError("should be a ceiling object, a list of strings or a plain value")
    return _plain(value)


class Ceilings(Model):
    """The machine's measured limits; any further key must be a ceiling or a plain value."""
    __pydantic_extra__: dict[str, Annotated[Any, AfterValidator(_ceiling_or_plain)]]
    storage_read: Optional[Ceiling] = None
    page_cache_read: Optional[Ceiling] = None
    h2d_pinned: Optional[Ceiling] = None
    h2d_pageable: Optional[Ceiling] = None
    source: Optional[Literal["measured", "reused"]] = None
    node: Optional[str] = None
    unreliable: Optional[list[str]] = None


class Rank(Model):
    """One rank of a tensor-parallel load."""
    rank: Count
    status: Optional[Literal["ok", "mismatch", "error"]] = None
    device: Optional[str] = None
    node: Optional[str] = None
    pod: Optional[str] = None
    resident_before: Optional[Fraction] = None
    barrier_s: Optional[Seconds] = None
    cache_s: Optional[Seconds] = None
    storage_read_bytes: Optional[Count] = None
    cache_read_bytes: Optional[Count] = None
    started_at: Optional[Timestamp] = None
    finished_at: Optional[Timestamp] = None
    skeleton_s: Optional[Seconds] = None
    weights_s: Optional[Seconds] = None
    total_s: Optional[Seconds] = None
    verify_s: Optional[Seconds] = None
    bytes: Optional[Count] = None
    gbps: Optional[Rate] = None
    tensors_verified: Optional[Count] = None
    peak_rss_bytes: Optional[Count] = None
    peak_device_bytes: Optional[Count] = None
    mismatches: Optional[list[Mismatch]] = None
    error: Optional[Error] = None


class Trial(Model):
    status: Literal["ok", "mismatch", "error"]
    index_in_process: Optional[Count] = None
    download_s: Optional[Seconds] = None
    storage_read_bytes: Optional[Count] = None
    cache_read_bytes: Optional[Count] = None
    device_copy_bytes: Optional[Count] = None
    cache_mode: Optional[Mode] = None
    resident_before: Optional[Fraction] = None
    skeleton_s: Optional[Seconds] = None
    weights_s: Optional[Seconds] = None
    total_s: Optional[Seconds] = None
    verify_s: Optional[Seconds] = None
    inference_s: Optional[Seconds] = None
    first_token_s: Optional[Seconds] = None
    gbps: Optional[Rate] = None
    ceiling: Optional[str] = None
    ceiling_gbps: Optional[Rate] = None
    ceiling_fraction: Optional[Ratio] = None
    ceiling_beaten: Optional[StrictBool] = None
    peak_rss_bytes: Optional[Count] = None
    peak_rss_method: Optional[str] = None
    peak_device_bytes: Optional[Count] = None
    tensors_verified: Optional[Count] = None
    cache_s: Optional[Seconds] = None
    mismatches: list[Mismatch] = []
    tokens_per_s: Optional[Rate] = None
    tokens_per_s_runs: Optional[list[Rate]] = None
    output_ids: Optional[list[Count]] = None
    library_info: Optional[dict[str, Any]] = None
    warnings: list[str] = []
    error: Optional[Error] = None
    ranks: Optional[list[Rank]] = None
    started_at: Optional[Timestamp] = None
    finished_at: Optional[Timestamp] = None

    @model_validator(mode="after")
    def _consistent(self) -> Trial:
        if self.status == "ok" and (self.total_s is None or self.total_s < MIN_LOAD_S):
            raise ValueError(f"an ok trial needs total_s >= {MIN_LOAD_S:g} s")
        _in_order(self.started_at, self.finished_at)
        return self


class Identity(Model):
    """Who produced the document: the pod, its Job and node (Downward API), or the host."""
    job: Optional[str] = None
    completion_index: Optional[Union[Count, str]] = None
    pod: Optional[str] = None
    pod_uid: Optional[str] = None
    node: Optional[str] = None
    namespace: Optional[str] = None
    hostname: Optional[str] = None
    pid: Optional[Count] = None


class ModelInfo(Model):
    bytes: Annotated[int, Field(ge=1, le=MAX_INT)]
    id: Optional[str] = None
    name: Optional[Slug] = None
    arch: Optional[str] = None
    model_type: Optional[str] = None
    dtype: Optional[str] = None
    format: Optional[str] = None
    params: Optional[Count] = None
    tensors: Optional[Count] = None
    file_bytes: Optional[Count] = None
    files: Optional[Count] = None
    random_seed: Optional[Int64] = None


class Device(Model):
    type: Optional[str] = None
    name: Optional[AsciiName] = None
    index: Optional[Count] = None
    driver: Optional[str] = None
    cuda: Optional[str] = None
    memory_bytes: Optional[Count] = None
    capability: Optional[str] = None


class SettingsRecord(Model):
    """Every setting as resolved; the two the reporter groups by are typed."""
    CACHE_MODE: Optional[Mode] = None
    MODEL_ID: Optional[Annotated[str, Field(max_length=4096)]] = None


class Phase(Model):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    seconds: Seconds
    # The third-party packages (top-level names) this phase imported first: what the time was
    # spent on, e.g. torchvision pulled in by transformers' modeling code.
    packages: Optional[Annotated[list[Slug], Field(max_length=MAX_PACKAGES)]] = None


class Pod(Model):
    """The pod's whole time, not only the loads (v2)."""
    process_started_at: Optional[Timestamp] = None
    phases: list[Phase] = []
    total_s: Optional[Seconds] = None


# --- documents -----------------------------------------------------------------------------

class _Result(Model):
    status: Literal["ok", "error"]
    error: Optional[Error] = None
    library: Label
    label: Label
    run_id: Optional[Line] = None
    identity: Identity
    settings: SettingsRecord = SettingsRecord()
    model: Optional[ModelInfo] = None
    device: Optional[Device] = None
    versions: dict[str, Optional[str]] = {}
    machine: Optional[dict[str, Any]] = None
    ceilings: Optional[Ceilings] = None
    warnings: list[str] = []
    trials: list[Trial]
    started_at: Optional[Timestamp] = None
    finished_at: Optional[Timestamp] = None

    @model_validator(mode="after")
    def _consistent(self) -> _Result:
        if self.status == "error" and self.error is None:
            raise ValueError("a document with status error needs an error object")
        if (self.status == "ok" or any(t.status == "ok" for t in self.trials)) \
                and (self.model is None or self.device is None):
            raise ValueError("an ok document, or one with ok trials, needs model and device")
        _in_order(self.started_at, self.finished_at)
        return self


class ResultV1(_Result):
    """loadbench.result/1 (read, never written)."""
    model_config = ConfigDict(title="loadbench.result/1")
    schema_: Literal["loadbench.result/1"] = Field(alias="schema")
    tuning: dict[str, OptionValue] = {}


class ResultV2(_Result):
    """loadbench.result/2 (written today)."""
    model_config = ConfigDict(title="loadbench.result/2")
    schema_: Literal["loadbench.result/2"] = Field(alias="schema")
    options: dict[str, OptionValue]
    io_mode: Optional[str] = None
    pod: Optional[Pod] = None
    tp_size: Annotated[int, Field(ge=1, le=1 << 20)] = 1


class Source(Model):
    """Where the checkpoint came from (v3): never with credentials."""
    uri: Optional[str] = None
    cache: Optional[Literal["none", "node"]] = None
    endpoint: Optional[str] = None
    credentials: Optional[str] = None


class ResultV3(ResultV2):
    """loadbench.result/3 (written today)."""
    model_config = ConfigDict(title="loadbench.result/3")
    schema_: Literal["loadbench.result/3"] = Field(alias="schema")  # type: ignore[assignment]
    source: Optional[Source] = None


MODELS: dict[str, type[_Result]] = {"loadbench.result/1": ResultV1, "loadbench.result/2": ResultV2,
                                    "loadbench.result/3": ResultV3}
# The keys every trial and rank record carries: the producer starts each from these.
TRIAL_KEYS = tuple(Trial.model_fields)
RANK_KEYS = tuple(Rank.model_fields)


def _in_order(started: str | None, finished: str | None) -> None:
    if started and finished and datetime.fromisoformat(finished) < datetime.fromisoformat(started):
        raise ValueError("finished_at is before started_at")


def problems(doc: Any) -> list[str]:
    """Why doc is not a readable result document, field by field; [] when it is."""
    if not isinstance(doc, dict):
        return [f"document: is a JSON {type(doc).__name__}, not an object"]
    version = doc.get("schema")
    if not isinstance(version, str) or version not in MODELS:
        shown = repr(version)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        shown = shown.encode("ascii", "backslashreplace").decode()
        return [f"schema: is {shown}; this reader understands {', '.join(READABLE)}"]
    return check(MODELS[version], doc)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every readable version, chosen by the `schema` key."""
    from pydantic import TypeAdapter
    union = Annotated[Union[ResultV1, ResultV2, ResultV3], Field(discriminator="schema_")]
    out = TypeAdapter(union).json_schema(by_alias=True)
    out["$defs"]["Ceilings"]["additionalProperties"] = {"anyOf": [
        {"$ref": "#/$defs/Ceiling"}, {"type": "array", "items": {"type": "string"}}, PLAIN_JSON]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA,
            "title": "loadbench result document",
            "description": "One library variant's trials in one pod. Readers accept "
                           + " and ".join(READABLE) + "; see loadbench/schema/result.py.", **out}
