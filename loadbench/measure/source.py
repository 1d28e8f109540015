"""Where a pod's checkpoint comes from: its local volume, or object storage.

The rest of the load path does not know the difference. A `LocalSource` is
MODEL_PATH as saved. An `S3Source` (MODEL_URI) reads only the manifest and
config before the trials (untimed: what a pod needs to know what it loads),
then for every trial brings the weights local inside the clock, with the
download recorded as its own phase, "download then load" as users do today:
S3_CACHE=none downloads into this pod's own folder under MODEL_PATH each time
(removed before the next trial, so every trial downloads); S3_CACHE=node goes through the node cache
(storage/nodecache.py): the first pod on a node fills it, later pods read it.
A library that reads object storage itself (registry `reads_s3`) gets a `Remote`
instead, with S3_CACHE=none and S3_READ=native, and nothing is written locally.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
from typing import Any, Protocol

from loadbench import config
from loadbench.loaders import Library
from loadbench.loaders.context import Remote
from loadbench.storage.checkpoint import Checkpoint, open_checkpoint


class Source(Protocol):
    def open(self, fmt: str) -> Checkpoint:
        """The checkpoint to describe and prepare for (untimed)."""

    def local_files(self, ckpt: Checkpoint) -> list[str]:
        """The weight files on local storage before a trial (what cache modes act on)."""

    def fetch(self, ckpt: Checkpoint) -> tuple[Checkpoint, dict[str, Any]] | None:
        """Inside the clock: bring the weights local; None when they already are."""

    def record(self) -> dict[str, Any] | None:
        """What the document says of the source (never credentials)."""

    def remote(self, lib: Library, ckpt: Checkpoint) -> Remote | None:
        """Where `lib` reads the checkpoint itself (its load_s3), or None: local files."""


class LocalSource:
    def __init__(self, cfg: config.Settings) -> None:
        self.cfg = cfg

    def open(self, fmt: str) -> Checkpoint:
        return open_checkpoint(self.cfg.model_path, fmt, self.cfg.model_id, self.cfg.dtype)

    def local_files(self, ckpt: Checkpoint) -> list[str]:
        return ckpt.weight_files

    def fetch(self, ckpt: Checkpoint) -> tuple[Checkpoint, dict[str, Any]] | None:
        return None

    def record(self) -> dict[str, Any] | None:
        return None

    def remote(self, lib: Library, ckpt: Checkpoint) -> Remote | None:
        return None


class S3Source:
    """Pods sharing one MODEL_PATH (a ReadWriteMany claim, the pods of a multi-node TP group)
    must not share what each downloads for itself: the manifest and config, and with
    S3_CACHE=none every trial's download, go to this pod's own folder under MODEL_PATH,
    removed when the pod ends. Only the node cache (S3_CACHE=node) is shared, under its lock."""

    def __init__(self, cfg: config.Settings) -> None:
        from loadbench.storage import objectstore
        self.cfg, self.uri = cfg, cfg.model_uri
        self.s3 = objectstore.client(concurrency=cfg.s3_concurrency)
        pod = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{socket.gethostname()}-{os.getpid()}")
        self.own = os.path.join(cfg.model_path, ".loadbench-pods", pod)
        self.meta = os.path.join(self.own, "source")  # manifest and config only
        self.download = os.path.join(self.own, "download")  # S3_CACHE=none: each trial's
        atexit.register(shutil.rmtree, self.own, True)

    def open(self, fmt: str) -> Checkpoint:
        from loadbench.storage import objectstore
        objectstore.download_folder(self.uri, self.meta, formats=[], concurrency=self.cfg.s3_concurrency,
                                    part_bytes=self.cfg.s3_part_bytes, s3=self.s3)
        self.fmt = fmt
        return open_checkpoint(self.meta, fmt, self.cfg.model_id, self.cfg.dtype, files=False)

    def local_files(self, ckpt: Checkpoint) -> list[str]:
        if self.cfg.s3_cache == "none":  # every trial downloads: nothing of the last one is kept
            shutil.rmtree(os.path.join(self.download, ckpt.format), ignore_errors=True)
            return []
        from loadbench.storage import nodecache
        try:  # what the node cache holds already
            cached = open_checkpoint(nodecache.entry_path(self.cfg.model_path, self.uri), ckpt.format,
                                     self.cfg.model_id, self.cfg.dtype)
        except Exception:
            return []
        return cached.weight_files

    def fetch(self, ckpt: Checkpoint) -> tuple[Checkpoint, dict[str, Any]] | None:
        from loadbench.storage import nodecache
        node = self.cfg.s3_cache == "node"
        root, got = nodecache.fetch(self.uri, self.cfg.model_path if node else self.download,
                                    self.cfg.s3_cache, formats=[ckpt.format],
                                    concurrency=self.cfg.s3_concurrency, part_bytes=self.cfg.s3_part_bytes,
                                    s3=self.s3)
        plain = {k: v for k, v in got.items() if isinstance(v, (str, int, float, bool)) or v is None}
        return open_checkpoint(root, ckpt.format, self.cfg.model_id, self.cfg.dtype), plain

    def record(self) -> dict[str, Any] | None:
        from loadbench.storage import objectstore
        about = objectstore.describe(self.s3)
        return {"uri": objectstore.redact(self.uri), "cache": self.cfg.s3_cache, "read": self.cfg.s3_read,
                "endpoint": about.get("endpoint"), "credentials": about.get("credentials")}

    def native(self, lib: Library) -> bool:
        return self.cfg.reads_bucket(lib.name)

    def remote(self, lib: Library, ckpt: Checkpoint) -> Remote | None:
        if not self.native(lib):
            return None
        from loadbench.storage import objectstore
        files = ckpt.manifest["formats"][ckpt.format]["files"]
        return Remote(uri=str(objectstore.parse_uri(self.uri).child(ckpt.format)), client=self.s3,
                      endpoint_url=objectstore.endpoint_from_env(), concurrency=self.cfg.s3_concurrency,
                      part_bytes=self.cfg.s3_part_bytes,
                      objects=tuple((e["name"], e["bytes"]) for e in files if e.get("weights")))


def for_settings(cfg: config.Settings) -> Source:
    return S3Source(cfg) if cfg.model_uri else LocalSource(cfg)
