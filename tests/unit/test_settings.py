import pytest

from loadbench import settings
from loadbench.settings import ConfigError


def test_defaults_are_the_core_libraries_cold_float16():
    s = settings.load({})
    assert s["LIBRARIES"] == list(settings.CORE_LIBRARIES)
    assert s["CACHE_MODE"] == "cold" and s["DTYPE"] == "float16" and s["NUM_TRIALS"] == 1
    assert s["MODEL_PATH"].endswith("opt-tiny")
    assert s["RUN_ID"] == "opt-tiny-cold"


@pytest.mark.parametrize("raw,value", [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                       ("0", False), ("false", False), ("No", False), ("off", False)])
def test_booleans(raw, value):
    assert settings.load({"SKIP_INFERENCE": raw})["SKIP_INFERENCE"] is value


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
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=None) as info:
        settings.load(env)
    assert needle in str(info.value)


def test_libraries_wins_over_skip_and_seed_names_work():
    s = settings.load({"LIBRARIES": "huggingface", "SKIP_HF": "1"})
    assert s["LIBRARIES"] == ["huggingface"]
    s = settings.load({"SKIP_HF": "1", "SKIP_TZR": "yes"})
    assert s["LIBRARIES"] == ["safetensors"]
    assert settings.load({"USE_FP16": "0"})["DTYPE"] == "float32"
    assert settings.load({"USE_FP16": "1"})["DTYPE"] == "float16"


def test_sweeps_give_one_variant_per_value():
    s = settings.load({"LIBRARIES": "tensorizer,safetensors", "TZR_NUM_READERS": "default,4,8"})
    assert settings.variants(s) == [("tensorizer", {}), ("tensorizer", {"num_readers": 4}),
                                    ("tensorizer", {"num_readers": 8}), ("safetensors", {})]
    assert settings.label("tensorizer", {"num_readers": 4}) == "tensorizer-numreaders4"


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for s in settings.SETTINGS:
        assert f"| `{s.name}` |" in readme, f"README's env-var table lacks {s.name}"
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{s.name}` |"))
        shown = s.default if s.default else "(empty)"
        assert f"`{shown}`" in row, f"README row for {s.name} does not show default {shown!r}"
