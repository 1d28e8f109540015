import ast
from pathlib import Path

import pytest

from loadbench import config, loaders
from loadbench.config import ConfigError

settings = config
ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_default_libraries_cold_float16():
    s = settings.load({})
    assert s.libraries == loaders.DEFAULT
    assert s.cache_mode == "cold" and s.dtype == "float16" and s.num_trials == 1
    assert s.model_path.endswith("opt-tiny") and s.run_id == "opt-tiny-cold"
    assert s.ceilings == "reuse"


@pytest.mark.parametrize("raw,value", [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                       ("0", False), ("false", False), ("No", False), ("off", False)])
def test_booleans(raw, value):
    assert settings.load({"SKIP_INFERENCE": raw}).skip_inference is value


@pytest.mark.parametrize("env,needle", [
    ({"NUM_TRIALS": "three"}, "NUM_TRIALS='three' is not an integer"),
    ({"NUM_TRIALS": "-1"}, "NUM_TRIALS='-1' must be >= 1"),
    ({"NUM_TRIALS": "0"}, "must be >= 1"),
    ({"LIBRARIES": "tensorizer,pickle"}, "unknown library 'pickle'"),
    ({"SKIP_HF": "maybe"}, "SKIP_HF='maybe' is not a boolean"),
    ({"DTYPE": "float8"}, "DTYPE='float8' is not one of"),
    ({"CACHE_MODE": "lukewarm"}, "CACHE_MODE"),
    ({"DEVICE": "tpu"}, "DEVICE='tpu' is not a device"),
    ({"TZR_NUM_READERS": "4,x"}, "TZR_NUM_READERS='x'"),
    ({"USE_FP16": "0", "DTYPE": "float16"}, "contradicts"),
    ({"SKIP_TZR": "1", "SKIP_ST": "1", "SKIP_HF": "1"}, "nothing to run"),
    ({"RUN_ID": "a/b"}, "RUN_ID"),
    ({"RUN_ID": ".."}, "RUN_ID"),
    ({"IT_BACKEND": "uring,turbo"}, "IT_BACKEND='turbo' is not one of"),
    ({"REF_CHUNK_BYTES": "lots"}, "is not a size"),
    ({"TZR_NUM_READERS": "4,4"}, "lists a value twice"),
    ({"SHARD_SIZE": "big"}, "SHARD_SIZE='big' is not a size"),
    ({"CEILINGS": "sometimes"}, "CEILINGS"),
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=None) as info:
        settings.load(env)
    assert needle in str(info.value)


def test_a_local_only_option_is_refused_only_where_the_library_reads_the_bucket_itself():
    """REF_DIRECT=1 (O_DIRECT) has no meaning for ranged GETs: refused at once, naming what to
    change; allowed where the reference reads files (a download, the node cache, MODEL_PATH)."""
    bucket = {"LIBRARIES": "reference,safetensors", "MODEL_URI": "s3://bkt/models/llama"}
    for direct in ("1", "0,1"):
        with pytest.raises(ConfigError) as info:
            settings.load({**bucket, "REF_DIRECT": direct})
        assert f"REF_DIRECT={direct!r} is for local files" in str(info.value)
        assert "S3_READ=download" in str(info.value)
    assert settings.load({**bucket, "REF_DIRECT": "0"}).reads_bucket("reference")
    for files in ({"S3_READ": "download"}, {"S3_CACHE": "node"}, {"MODEL_URI": ""}):
        s = settings.load({**bucket, "REF_DIRECT": "1", **files})
        assert not s.reads_bucket("reference") and s.options["reference"]["direct"] == (True,)
    assert not settings.load(bucket).reads_bucket("safetensors")  # it downloads, then loads


def test_libraries_wins_over_skip_and_seed_names_work():
    s = settings.load({"LIBRARIES": "huggingface", "SKIP_HF": "1"})
    assert s.libraries == ("huggingface",)
    s = settings.load({"SKIP_HF": "1", "SKIP_TZR": "yes"})
    assert s.libraries == ("safetensors",)
    assert settings.load({"USE_FP16": "0"}).dtype == "float32"
    assert settings.load({"USE_FP16": "1"}).dtype == "float16"


def test_sweeps_give_one_variant_per_value_and_labels_show_what_was_set():
    s = settings.load({"LIBRARIES": "tensorizer,safetensors", "TZR_NUM_READERS": "default,4,8"})
    plan = settings.variants(s)
    assert [(lib, o.get("num_readers")) for lib, o in plan] == [
        ("tensorizer", None), ("tensorizer", 4), ("tensorizer", 8), ("safetensors", None)]
    assert [settings.label(lib, o) for lib, o in plan] == [
        "tensorizer", "tensorizer-numreaders4", "tensorizer-numreaders8", "safetensors"]
    s = settings.load({"LIBRARIES": "instanttensor"})  # its default run measures two backends
    assert [settings.label(*v) for v in settings.variants(s)] == [
        "instanttensor", "instanttensor-backendURING_BUFFERED"]
    s = settings.load({"LIBRARIES": "reference", "REF_CHUNK_BYTES": "8M,32M"})
    assert [o["chunk_bytes"] for _, o in settings.variants(s)] == [8 << 20, 32 << 20]
    # both set: the reference's default chunk is its reader's (8 MiB from files, S3_PART_BYTES
    # from a bucket), so an explicit 32M is a choice the label shows
    assert [settings.label(*v) for v in settings.variants(s)] == ["reference-chunkbytes8388608",
                                                                 "reference-chunkbytes33554432"]


def test_the_readme_holds_exactly_the_generated_table():
    readme = (ROOT / "README.md").read_text()
    assert settings.markdown_table() in readme, (
        "README's environment table is stale: paste `python -m loadbench.config --markdown`")


def test_every_library_option_is_a_setting_and_every_setting_parses_its_default():
    names = {s.name for s in settings.SETTINGS}
    for lib, option in loaders.all_options():
        assert option.env in names, f"{lib.name}.{option.field}"
    for s in settings.SETTINGS:
        if s.default:
            s.parse(s.name, s.default)


PRODUCERS = ("measure", "storage", "loaders", "machine", "config", "schema")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_producers_never_import_presentation():
    for pkg in PRODUCERS:
        for path in (ROOT / "loadbench" / pkg).rglob("*.py"):
            bad = [m for m in _imports(path) if m.startswith("loadbench.analysis")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_library_name_is_spelled_outside_the_registry():
    """Library names live in loaders/__init__.py; everything else derives them."""
    for path in (ROOT / "loadbench").rglob("*.py"):
        rel = path.relative_to(ROOT / "loadbench")
        if rel.parts[0] == "loaders":
            continue
        source = path.read_text()
        for name in loaders.NAMES:
            for quoted in (f'"{name}"', f"'{name}'"):
                assert quoted not in source, f"loadbench/{rel} spells {quoted}"
