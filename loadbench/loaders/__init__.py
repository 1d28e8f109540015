"""The only list of loading libraries: what each is, reads, and can be tuned with.

Each entry names the module that holds the library's code (`load(ctx)`, and
`save(model, tokenizer, folder)` for the library that owns a format), the
checkpoint format it reads, the distribution whose version is recorded, and
its options. Settings, reports and manifests derive every library name from
here: adding a library touches its module and this table only. A library from
outside the package is one module that declares its own entries, named in
LOADBENCH_PLUGINS (`load_plugins`); `contract_problems` says where an entry's
flags and its module disagree, and the contract test runs it on every entry.

Options are typed and sweepable: the environment variable may list several
values (`TZR_NUM_READERS=4,16,default`), one result document each. `default`
leaves the library's own default in place, and the document records what the
library then chose.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterable, Literal, Protocol, get_args, runtime_checkable

from loadbench.errors import ConfigError, NotInstalled

Role = Literal["product", "instrument", "baseline"]


@runtime_checkable
class Loader(Protocol):
    """What every loader module provides. A module whose registry entry says `owns_format`
    also has `save(model, tokenizer, folder, shard_bytes)`; one that says `supports_tp` has
    `load_tp(ctx, rank, world, plan)`; one that says `tp_files` has `tp_file(rank, world)`
    and `save_tp(state, folder, rank, world)`; one that says `reads_s3` has `load_s3(ctx)`;
    one that says `tp_s3` has `load_tp_s3(ctx, rank, world, plan)`.
    `contract_problems(lib)` checks all of it, both ways (a function without its flag is
    drift too)."""

    def import_package(self) -> None: ...

    def load(self, ctx: Any) -> Any: ...


@dataclass(frozen=True)
class Option:
    """One tuning knob of one library, read from `env`, passed to the loader as `field`."""
    field: str
    env: str
    kind: str          # "int" | "bool" | "choice" | "size"
    help: str
    default: str = "default"       # "default": the library's own choice
    choices: tuple[str, ...] = ()
    label: str = ""                # short form in labels; default: field without underscores
    local_only: bool = False       # true only for local files: refused (exit 2) for the
                                   # library's own reads of MODEL_URI (S3_READ=native)

    @property
    def short(self) -> str:
        return self.label or self.field.replace("_", "")


@dataclass(frozen=True)
class Library:
    name: str
    module: str
    format: str
    package: str
    default: bool              # in the default run (LIBRARIES empty)
    describe: str
    options: tuple[Option, ...] = ()
    owns_format: bool = False  # its save() writes `format`
    needs_cuda: bool = False
    weight_suffixes: tuple[str, ...] = field(default=())
    skip: str = ""             # the seed's SKIP_* variable that leaves it out
    shards: bool = False       # its save() splits large checkpoints (SHARD_SIZE)
    # product: a library users pick; instrument: loadbench's own line to compare with, never a
    # pick; baseline: what most users load with today, the row others are compared to.
    role: Role = "product"
    supports_tp: bool = False  # its module has load_tp(ctx, rank, world, plan)
    tp_files: bool = False     # with TP it reads per-rank files its save_tp() wrote
    reads_s3: bool = False     # its module has load_s3(ctx): reads MODEL_URI itself (ctx.remote)
    tp_s3: bool = False        # its module has load_tp_s3(ctx, rank, world, plan): TP ranks read it


INSTANT_BACKENDS = ("URING", "URING_BUFFERED", "AIO", "AIO_BUFFERED", "MMAP", "CUFILE")

LIBRARIES: tuple[Library, ...] = (
    Library("tensorizer", "loadbench.loaders.tensorizer_lib", "tensorizer", "tensorizer", True,
            "TensorDeserializer into a meta-device skeleton",
            (Option("num_readers", "TZR_NUM_READERS", "int",
                    "tensorizer: parallel readers (its I/O mode)."),
             Option("verify_hash", "TZR_VERIFY_HASH", "bool",
                    "tensorizer: verify its own per-tensor hashes while loading (timed).", "0")),
            owns_format=True, weight_suffixes=(".tensors",), skip="SKIP_TZR", supports_tp=True,
            tp_files=True, reads_s3=True, tp_s3=True),
    Library("safetensors", "loadbench.loaders.safetensors_lib", "safetensors", "safetensors", True,
            "safetensors.torch.load_file straight onto the device, assigned into a meta skeleton",
            owns_format=True, weight_suffixes=(".safetensors",), skip="SKIP_ST", shards=True,
            supports_tp=True),
    Library("huggingface", "loadbench.loaders.huggingface_lib", "safetensors", "transformers", True,
            "from_pretrained on the safetensors checkpoint", skip="SKIP_HF", role="baseline",
            supports_tp=True),
    Library("huggingface-bin", "loadbench.loaders.huggingface_bin_lib", "bin", "transformers", True,
            "from_pretrained on a legacy pickle pytorch_model.bin (weights_only)",
            owns_format=True, weight_suffixes=(".bin",), skip="SKIP_HF"),
    Library("fastsafetensors", "loadbench.loaders.fastsafetensors_lib", "safetensors",
            "fastsafetensors", False,
            "fastsafetensors: files copied to the device in bulk, tensors instantiated in place",
            (Option("nogds", "FST_NOGDS", "bool",
                    "fastsafetensors: 1 reads without GPUDirect Storage; 0 tries GDS.", "1"),
             Option("odirect", "FST_ODIRECT", "bool",
                    "fastsafetensors: 1 reads with O_DIRECT (skips the page cache), 0 buffered "
                    "through it (its FASTSAFETENSORS_ODIRECT); default: its own policy, O_DIRECT on "
                    "local and unknown filesystems, buffered on network ones."),
             Option("max_threads", "FST_MAX_THREADS", "int",
                    "fastsafetensors: copy threads.")),
            supports_tp=True),
    Library("runai-streamer", "loadbench.loaders.runai_lib", "safetensors",
            "runai-model-streamer", False,
            "Run:ai Model Streamer: many reader threads, tensors copied as they stream",
            (Option("concurrency", "RUNAI_CONCURRENCY", "int",
                    "runai-streamer: reader threads (its RUNAI_STREAMER_CONCURRENCY)."),
             Option("chunk_bytes", "RUNAI_CHUNK_BYTES", "size",
                    "runai-streamer: bytes per read request (its RUNAI_STREAMER_CHUNK_BYTESIZE).")),
            supports_tp=True, reads_s3=True),
    Library("instanttensor", "loadbench.loaders.instanttensor_lib", "safetensors", "instanttensor",
            False, "InstantTensor: one safe_open over all shards, pipelined I/O into the device",
            (Option("backend", "IT_BACKEND", "choice",
                    "instanttensor: I/O backend; URING is its default (direct I/O, skips the page "
                    "cache), the *_BUFFERED ones and MMAP read through it. The default run "
                    "measures both its default and URING_BUFFERED.",
                    "default,URING_BUFFERED", INSTANT_BACKENDS),
             Option("buffer_bytes", "IT_BUFFER_BYTES", "size", "instanttensor: I/O buffer size."),
             Option("concurrency", "IT_CONCURRENCY", "int", "instanttensor: I/O concurrency.")),
            needs_cuda=True),
    Library("flashpack", "loadbench.loaders.flashpack_lib", "flashpack", "flashpack", False,
            "flashpack: its own flat format, streamed into the device in chunks",
            (Option("read_threads", "FP_READ_THREADS", "int",
                    "flashpack: reader threads (its FLASHPACK_READ_THREADS)."),
             Option("chunk_bytes", "FP_CHUNK_BYTES", "size",
                    "flashpack: bytes per read (its FLASHPACK_READ_CHUNK_BYTES)."),
             Option("direct_io", "FP_DIRECT_IO", "bool",
                    "flashpack: 1 forces O_DIRECT, 0 buffered reads; default lets it decide from "
                    "the file's residency (its FLASHPACK_DIRECT_IO).")),
            owns_format=True, weight_suffixes=(".flashpack",)),
    Library("reference", "loadbench.loaders.reference_lib", "safetensors", "loadbench", False,
            "loadbench's own instrument, not a product: threads pread into a ring of pinned "
            "buffers, async copies into one device allocation, tensors as views",
            (Option("threads", "REF_THREADS", "int", "reference: reader threads (requests in flight); "
                    "default from files: the usable CPUs (affinity, cgroup quota) less 4, 4 to 12; "
                    "from object storage: S3_CONCURRENCY."),
             Option("chunk_bytes", "REF_CHUNK_BYTES", "size", "reference: bytes per read (per ranged "
                    "GET); default 8M from files, S3_PART_BYTES from object storage."),
             Option("buffers", "REF_BUFFERS", "int",
                    "reference: pinned buffers in the ring (each chunk_bytes); default 2 a thread."),
             Option("pin", "REF_PIN", "choice",
                    "reference: how the ring is pinned, one allocation in every case: SLOTS "
                    "(memory advised for huge pages, each reader registers its own buffers with "
                    "cudaHostRegister as it starts), REGISTER (all of it registered before any "
                    "read, as InstantTensor does) or ALLOC (cudaHostAlloc, torch's pinned "
                    "allocator).", "SLOTS", choices=("ALLOC", "REGISTER", "SLOTS")),
             Option("direct", "REF_DIRECT", "bool",
                    "reference: 1 reads local files with O_DIRECT (skips the page cache, as "
                    "fastsafetensors and InstantTensor do by default): each read covers whole "
                    "pages into an aligned buffer, then its bytes are copied out. Default 0, "
                    "buffered reads. Refused (exit 2) where the reference reads MODEL_URI itself "
                    "(S3_READ=native, S3_CACHE=none).", local_only=True),
             Option("overlap", "REF_OVERLAP", "bool",
                    "reference: 1 starts the reads first and builds the model's skeleton while "
                    "they run (both inside the clock: total_s holds both, weights_s only what is "
                    "left after the skeleton); default 0, the skeleton first, as every library "
                    "does. Not built for the reference's own reads of MODEL_URI: refused (exit 2) "
                    "there.",
                    local_only=True)),
            role="instrument", supports_tp=True, reads_s3=True, tp_s3=True),
)

BY_NAME = {lib.name: lib for lib in LIBRARIES}
NAMES = tuple(BY_NAME)
DEFAULT = tuple(lib.name for lib in LIBRARIES if lib.default)
FORMATS = tuple(dict.fromkeys(lib.format for lib in LIBRARIES if lib.owns_format))
FORMAT_OWNERS = {lib.format: lib.name for lib in LIBRARIES if lib.owns_format}


SKIP_VARS = tuple(dict.fromkeys(lib.skip for lib in LIBRARIES if lib.skip))


def get(name: str) -> Library:
    return BY_NAME[name]


def register(lib: Library) -> None:
    """Add a library at run time (a plug-in, or a test's toy loader): the table's derived
    names follow. Refuses a name already taken."""
    global LIBRARIES
    if lib.name in BY_NAME:
        raise ValueError(f"library {lib.name!r} is already registered")
    LIBRARIES = (*LIBRARIES, lib)
    BY_NAME[lib.name] = lib
    _derive()


def unregister(name: str) -> None:
    global LIBRARIES
    LIBRARIES = tuple(lib for lib in LIBRARIES if lib.name != name)
    BY_NAME.pop(name, None)
    _derive()


def _derive() -> None:
    global NAMES, DEFAULT, FORMATS, SKIP_VARS
    NAMES = tuple(BY_NAME)
    DEFAULT = tuple(lib.name for lib in LIBRARIES if lib.default)
    FORMATS = tuple(dict.fromkeys(lib.format for lib in LIBRARIES if lib.owns_format))
    FORMAT_OWNERS.clear()
    FORMAT_OWNERS.update({lib.format: lib.name for lib in LIBRARIES if lib.owns_format})
    SKIP_VARS = tuple(dict.fromkeys(lib.skip for lib in LIBRARIES if lib.skip))


def with_role(role: Role) -> tuple[str, ...]:
    return tuple(lib.name for lib in LIBRARIES if lib.role == role)


def module(name: str) -> ModuleType:
    return importlib.import_module(BY_NAME[name].module)


def version(package: str) -> str | None:
    if package == "loadbench":
        from loadbench import __version__
        return __version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def require(name: str) -> ModuleType:
    """The library's module, with its package imported (outside any timed region)."""
    mod = module(name)
    try:
        mod.import_package()
    except ImportError as e:
        raise NotInstalled(
            f"library {name!r} is not installed ({e}); install the {BY_NAME[name].package!r} "
            f"package (pip install -r requirements-peers.txt) or drop it from LIBRARIES") from e
    return mod


def formats_for(names: list[str]) -> list[str]:
    """The checkpoint formats the given libraries read, in a stable order."""
    needed = {BY_NAME[n].format for n in names}
    return [fmt for fmt in FORMATS if fmt in needed]


def weight_suffixes(fmt: str) -> tuple[str, ...]:
    return BY_NAME[FORMAT_OWNERS[fmt]].weight_suffixes


def all_options() -> list[tuple[Library, Option]]:
    return [(lib, o) for lib in LIBRARIES for o in lib.options]


def package_names() -> list[str]:
    return list(dict.fromkeys(lib.package for lib in LIBRARIES if lib.package != "loadbench"))


# --- the contract: what an entry's flags promise its module holds -------------------------------
# (function, how many positional arguments it takes): the Loader protocol's required part, and
# what each flag adds. A flag without its function, or a function without its flag, is drift.
REQUIRED = (("import_package", 0), ("load", 1))
BY_FLAG = {"owns_format": (("save", 4),),
           "supports_tp": (("load_tp", 4),),
           "tp_files": (("tp_file", 2), ("save_tp", 4)),
           "reads_s3": (("load_s3", 1),),
           "tp_s3": (("load_tp_s3", 4),)}


def _takes(fn: Any, n: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(n))
    except (TypeError, ValueError):
        return False
    return True


def contract_problems(lib: Library, mod: ModuleType | None = None) -> list[str]:
    """Where the entry and its module disagree, one line each; [] when the module holds exactly
    what the entry declares. Imports the module (not its package: that is `require`)."""
    if mod is None:
        try:
            mod = importlib.import_module(lib.module)
        except ImportError as e:
            return [f"{lib.name}: its module {lib.module!r} does not import ({e})"]
    out: list[str] = []
    where = f"{lib.name} ({lib.module})"

    def check(name: str, n: int, why: str) -> None:
        fn = getattr(mod, name, None)
        if not callable(fn):
            out.append(f"{where}: {why}, but the module has no {name}()")
        elif not _takes(fn, n):
            out.append(f"{where}: {name}() does not take {n} positional argument(s)")

    for name, n in REQUIRED:
        check(name, n, "every loader module needs it")
    for flag, functions in BY_FLAG.items():
        for name, n in functions:
            if getattr(lib, flag):
                check(name, n, f"its entry says {flag}=True")
            elif callable(getattr(mod, name, None)):
                out.append(f"{where}: the module has {name}(), but its entry says {flag}=False "
                           f"(nothing would call it)")
    if lib.tp_files and not lib.supports_tp:
        out.append(f"{where}: tp_files=True without supports_tp=True (per-rank files nobody loads)")
    if lib.tp_s3 and not (lib.supports_tp and lib.reads_s3):
        out.append(f"{where}: tp_s3=True needs supports_tp=True and reads_s3=True (a TP path and an "
                   f"object-storage path to combine)")
    if lib.owns_format and not lib.weight_suffixes:
        out.append(f"{where}: owns_format=True with no weight_suffixes (its files would not be found)")
    if lib.role not in get_args(Role):
        out.append(f"{where}: role {lib.role!r} is not one of {', '.join(get_args(Role))}")
    return out


# --- plug-ins: libraries registered from outside the package ------------------------------------
PLUGINS_VAR = "LOADBENCH_PLUGINS"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_plugins: set[str] = set()  # plug-in modules whose libraries are registered


def plugin_names(raw: str | None) -> tuple[str, ...]:
    """The module names of a LOADBENCH_PLUGINS value (a comma list); ConfigError if malformed."""
    names = tuple(part.strip() for part in (raw or "").split(",") if part.strip())
    for name in names:
        if not MODULE_NAME.fullmatch(name):
            raise ConfigError(f"{PLUGINS_VAR}: {name!r} is not a module name (a.b.c)")
    return names


def load_plugins(names: Iterable[str]) -> None:
    """Import each plug-in module and register the libraries it declares in its own
    `LIBRARIES` (a tuple of `Library`), once per process. A plug-in is one module (its loader
    functions and its entries) and nothing else: settings, reports and saving derive the rest.
    ConfigError for a module that does not import, declares nothing, or breaks the contract."""
    for name in names:
        if name in _plugins:
            continue
        try:
            plugin = importlib.import_module(name)
        except Exception as e:  # its own code failed: a bad plug-in, not a crash of loadbench
            raise ConfigError(f"{PLUGINS_VAR}: plug-in {name!r} does not import: "
                              f"{type(e).__name__}: {e}") from e
        libs = getattr(plugin, "LIBRARIES", None)
        if not isinstance(libs, tuple) or not libs or not all(isinstance(x, Library) for x in libs):
            raise ConfigError(f"{PLUGINS_VAR}: plug-in {name!r} declares no LIBRARIES "
                              f"(a tuple of loadbench.loaders.Library)")
        for i, lib in enumerate(libs):
            if lib.name in BY_NAME or lib.name in (x.name for x in libs[:i]):
                raise ConfigError(f"{PLUGINS_VAR}: plug-in {name!r} registers {lib.name!r}, a name "
                                  f"already taken")
            problems = contract_problems(lib)
            if problems:
                raise ConfigError(f"{PLUGINS_VAR}: plug-in {name!r}: " + "; ".join(problems))
        for lib in libs:
            register(lib)
        _plugins.add(name)


def _load_plugins_from_environment() -> None:
    """Every process that reads the table (entry points, rank processes, reports) sees the same
    plug-ins. A failure here is left for `config.load`, which raises it as a ConfigError (exit 2)
    with its error document, rather than breaking the import with a traceback."""
    try:
        load_plugins(plugin_names(os.environ.get(PLUGINS_VAR)))
    except ConfigError:
        pass


_load_plugins_from_environment()
