"""Model sources and meta-device skeletons.

MODEL_ID is a hub id, a local directory, or a built-in `random/<name>`: the
exact shapes of a real architecture with random weights, so that load speed
can be measured with no download. Random models are built with parameters on
the meta device and then filled on the target device in one pass each, which
skips the slow per-layer initialisation (gpt-j-6b builds in seconds on a GPU).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable, Iterator

import torch

from loadbench.errors import ModelError, Transient

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _opt(**kw: Any) -> Any:
    from transformers import OPTConfig
    return OPTConfig(**kw)


def _gptj(**kw: Any) -> Any:
    from transformers import GPTJConfig
    return GPTJConfig(**kw)


def _llama(**kw: Any) -> Any:
    from transformers import LlamaConfig
    return LlamaConfig(**kw)


# Shapes from the published configs of facebook/opt-*, EleutherAI/gpt-j-6b and
# meta-llama/Llama-2-{7,13,70}b-hf. opt-tiny and llama-tiny are small shapes for tests.
RANDOM_MODELS: dict[str, Callable[[], Any]] = {
    "opt-tiny": lambda: _opt(hidden_size=64, num_hidden_layers=2, ffn_dim=256,
                             num_attention_heads=4, word_embed_proj_dim=64,
                             max_position_embeddings=2048, vocab_size=50272),
    "gpt-j-6b": lambda: _gptj(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28,
                              n_head=16, rotary_dim=64, n_inner=None,
                              activation_function="gelu_new", tie_word_embeddings=False),
    "opt-30b": lambda: _opt(hidden_size=7168, num_hidden_layers=48, ffn_dim=28672,
                            num_attention_heads=56, word_embed_proj_dim=7168,
                            max_position_embeddings=2048, vocab_size=50272),
    "llama-2-7b": lambda: _llama(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                 num_hidden_layers=32, num_attention_heads=32,
                                 num_key_value_heads=32, max_position_embeddings=4096,
                                 rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-2-13b": lambda: _llama(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                                  num_hidden_layers=40, num_attention_heads=40,
                                  num_key_value_heads=40, max_position_embeddings=4096,
                                  rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-2-70b": lambda: _llama(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                                  num_hidden_layers=80, num_attention_heads=64,
                                  num_key_value_heads=8, max_position_embeddings=4096,
                                  rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-tiny": lambda: _llama(vocab_size=32000, hidden_size=64, intermediate_size=172,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                 max_position_embeddings=256, rms_norm_eps=1e-5,
                                 tie_word_embeddings=False),
}


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_random(model_id: str) -> bool:
    return model_id.startswith("random/")


def config_for(model_id: str) -> Any:
    """The architecture config of a MODEL_ID, without loading weights."""
    if is_random(model_id):
        name = model_id.removeprefix("random/")
        if name not in RANDOM_MODELS:
            raise ModelError(f"MODEL_ID={model_id!r}: unknown built-in model; known: "
                             + ", ".join(f"random/{n}" for n in RANDOM_MODELS))
        return RANDOM_MODELS[name]()
    from transformers import AutoConfig
    return _from_hub(model_id, AutoConfig.from_pretrained)


def _from_hub(model_id: str, fetch: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a hub loader, telling a malformed or unknown id (exit 2) from an
    unreachable hub (exit 3, worth a retry)."""
    local = os.path.isdir(os.path.expanduser(model_id))
    if not local and (model_id.startswith((".", "/", "~")) or not HUB_ID.fullmatch(model_id)):
        raise ModelError(f"MODEL_ID={model_id!r} is none of: a hub id (org/name), a local folder, "
                         f"or random/<name> (known: {', '.join(RANDOM_MODELS)})")
    if not local:
        _hub_reachable(model_id)
    try:
        return fetch(os.path.expanduser(model_id) if local else model_id, **kwargs)
    except Exception as e:
        name = type(e).__name__
        text = " ".join(str(e).split())
        if name in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError") \
                or "is not a valid model identifier" in text or "does not appear to have" in text:
            raise ModelError(f"MODEL_ID={model_id!r}: {_first_sentence(text)}") from e
        if name in ("LocalEntryNotFoundError", "ConnectionError", "Timeout", "ConnectTimeout",
                    "ReadTimeout", "OfflineModeIsEnabled") or "connect" in text.lower() \
                or "offline" in text.lower() or "timed out" in text.lower():
            raise Transient(f"MODEL_ID={model_id!r}: the hub could not be reached ({_first_sentence(text)}); "
                            f"a retry may succeed, or use a local folder or random/<name>") from e
        raise


def _first_sentence(text: str, limit: int = 300) -> str:
    """A library's message cut where a sentence or word ends, never inside a URL."""
    end = text.find(". ")
    text = text[:end + 1] if 0 < end < limit else text
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def _hub_reachable(model_id: str) -> None:
    """Ask DNS and open one connection before the hub client does: offline or refused, it
    retries for ~25 s before failing, where a pod's own retry (exit 3) is the one that should
    happen."""
    import socket
    from urllib.parse import urlsplit
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return  # the cache answers, or the client says it cannot
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                         "ALL_PROXY", "all_proxy")):
        return  # through a proxy the hub may be neither resolvable nor reachable from here
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or ""
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        with socket.create_connection((host, port), timeout=5):
            pass
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise Transient(f"MODEL_ID={model_id!r}: the hub could not be reached ({host}: {why}); "
                        f"a retry may succeed, or use a local folder or random/<name>") from e


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Create parameters on the meta device, buffers for real.

    Buffers such as rotary frequencies are not in checkpoints, so they must
    be computed as usual; parameters are what the loaders fill.
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            meta = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = meta

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def skeleton(config: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The model with every parameter on the meta device, ready to be filled.

    Inside every loader's clock, so it must be cheap: transformers' weight
    initialisation is skipped (it only fills parameters that the load replaces,
    and costs 0.1-0.5 s on meta tensors for a 7B model), while buffers such as
    rotary frequencies are still computed by the modules' constructors. Shared
    weights are tied as `post_init` would. tests/unit/test_models.py proves the
    result equal to a fully initialised skeleton on every built-in model."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    with meta_parameters(), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return model.eval()


def initialised_skeleton(config: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The skeleton as transformers builds it, with its weight initialisation: the
    oracle `skeleton()` is checked against, never timed."""
    from transformers import AutoModelForCausalLM
    with meta_parameters():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def random_model(model_id: str, dtype: torch.dtype, device: torch.device, seed: int = 0
                 ) -> torch.nn.Module:
    """A random-weight model of the named architecture, built on `device`.

    Norm weights are ones and biases zeros so that generation stays finite;
    everything else is N(0, 0.02), like the architectures' own init.
    """
    model = skeleton(config_for(model_id), dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if name == "bias":
                value = torch.zeros(param.shape, dtype=dtype, device=device)
            elif _is_norm(module):
                value = torch.ones(param.shape, dtype=dtype, device=device)
            else:
                value = torch.empty(param.shape, dtype=dtype, device=device)
                value.normal_(0.0, 0.02, generator=gen)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    model.tie_weights()  # type: ignore[operator]
    return model.to(device)


def load_source(model_id: str, dtype: torch.dtype, device: torch.device, seed: int = 0
                ) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer or None) for saving: built, read from a folder, or downloaded."""
    if is_random(model_id):
        return random_model(model_id, dtype, device, seed), None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = _from_hub(model_id, AutoModelForCausalLM.from_pretrained, dtype=dtype).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(model_id))
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def finish(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """After a loader filled the parameters: tie shared weights, move buffers."""
    model.tie_weights()  # type: ignore[operator]
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise RuntimeError(f"{len(left)} parameters were never loaded, e.g. {left[0]}")
    return model.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint must hold, by name (tied names included)."""
    return dict(model.state_dict(keep_vars=False))
