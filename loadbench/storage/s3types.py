"""What every S3 module shares: the sizes and limits of transfers, the records (`S3Uri`,
`ObjectInfo`), the error for an object that changed (`ObjectMismatch`) and the buffer and
progress-callback types. Part of loadbench.storage.objectstore (the facade callers import).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

Buffer = Union[bytearray, memoryview]
Progress = Optional[Callable[[str], None]]

MiB = 1 << 20
DEFAULT_CONCURRENCY = 16
DEFAULT_PART_BYTES = 64 * MiB
DEFAULT_RANGE_BYTES = 16 * MiB
MIN_PART_BYTES = 5 * MiB      # S3's smallest multipart part (but the last)
MAX_PART_BYTES = 5 << 30      # S3's largest part
MAX_CONCURRENCY = 1024
READ_CHUNK = 1 * MiB          # one readinto() of a response body
PART_BYTES_METADATA = "loadbench-part-bytes"  # x-amz-meta-*: the part size an upload used
PARTIAL = ".partial-"          # temporary files: .<name>.partial-<random>


class ObjectMismatch(RuntimeError):
    """An object that changed or is shorter than the manifest or listing says: exit 1.

    A re-run may pass (a save was writing the prefix), so it is not bad input."""


@dataclass(frozen=True)
class S3Uri:
    """s3://bucket/prefix: the prefix has no leading or trailing '/' and may be empty."""
    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str = "") -> str:
        """The key of `name` ('a/b.bin') under this prefix."""
        name = name.strip("/")
        if not self.prefix:
            return name
        return f"{self.prefix}/{name}" if name else self.prefix

    def child(self, name: str) -> S3Uri:
        """The URI of `name` under this prefix (an object's own URI, for read_ranges)."""
        return S3Uri(self.bucket, self.key(name))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    bytes: int
    etag: str
