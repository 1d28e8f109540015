"""manifest.json: what save_models.py wrote, typed and versioned.

The benchmark opens files named by the manifest, so a file name must be a
plain name inside its format's folder (no '/', no '..'), and every size and
time is a finite, non-negative number. Unknown keys are allowed.

Version history:

- ``loadbench.manifest/1``: schema, model (id, name, arch, model_type, dtype,
  params, bytes, tensors, random_seed), formats (per format folder: library,
  version, files [name, bytes, weights], save_s, bytes), tensors (per tensor:
  dtype, shape, nbytes, checksum), checksum (the algorithm), versions,
  build_s, build_device, created_at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field

from loadbench.schema.result import Count, Int64, Model, Seconds, Slug, check, text

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "loadbench.manifest/1"

# A file directly inside a format folder: no separators, not "." or "..".


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("should name a file, not '.' or '..'")
    return name


if TYPE_CHECKING:  # text() builds its types at run time; to mypy each is the str it checks
    FileName = str
    FormatName = str
else:
    FileName = Annotated[text(r"^[^/\\\x00-\x1f\x7f]+$", "should be a plain file name (no '/', '\\' "
                              "or control characters)", 1, 255), AfterValidator(_not_dots)]
    FormatName = Annotated[text(r"^[A-Za-z0-9._-]*$", "should use only letters, digits, '.', '_' "
                                "and '-'", 1, 64), AfterValidator(_not_dots)]


class FileEntry(Model):
    name: FileName
    bytes: Count
    weights: bool = False


class Format(Model):
    library: str
    version: Optional[str] = None
    files: list[FileEntry]
    save_s: list[Seconds] = []
    bytes: Optional[Count] = None


class Tensor(Model):
    dtype: str
    shape: list[Count]
    nbytes: Count
    checksum: str


class ModelInfo(Model):
    id: str
    bytes: Count
    name: Optional[Slug] = None
    arch: Optional[str] = None
    model_type: Optional[str] = None
    dtype: Optional[str] = None
    params: Optional[Count] = None
    tensors: Optional[Count] = None
    random_seed: Optional[Int64] = None


class Manifest(Model):
    """loadbench.manifest/1"""
    schema_: Literal["loadbench.manifest/1"] = Field(alias="schema")
    model: ModelInfo
    formats: dict[FormatName, Format]
    tensors: dict[str, Tensor]
    checksum: Optional[str] = None
    versions: dict[str, Optional[str]] = {}
    build_s: Optional[Seconds] = None
    build_device: Optional[str] = None
    created_at: Optional[str] = None


def problems(manifest: Any) -> list[str]:
    """Why manifest is not a valid manifest.json, field by field; [] when it is. Never raises."""
    if not isinstance(manifest, dict):
        return [f"document: is a JSON {type(manifest).__name__}, not an object"]
    return check(Manifest, manifest)


def json_schema() -> dict[str, Any]:
    out = Manifest.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": MANIFEST_SCHEMA,
            "title": "loadbench manifest.json",
            "description": "What save_models.py wrote; see loadbench/schema/manifest.py.",
            **{k: v for k, v in out.items() if k != "title"}}
