"""Object storage (S3 and S3-compatible servers): the checkpoint's remote side.

A checkpoint in a bucket is the checkpoint folder's files under a prefix:

    s3://bucket/prefix/manifest.json         written LAST: without it the upload is incomplete
    s3://bucket/prefix/config.json
    s3://bucket/prefix/<format>/<file>       one key per file of each format folder

A few small functions, each doing one thing:

- `parse_uri`, `redact`: a MODEL_URI checked, and the URI as recorded (never credentials);
- `client`: a boto3 S3 client configured the AWS way (AWS_ENDPOINT_URL, the
  AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY pair, or the pod's role: boto3's default chain),
  with bounded retries and a connection pool as large as the concurrency asked;
- `upload_folder`: every file in parallel with multipart (boto3's transfer manager),
  the destination's old manifest deleted first and the new one written last;
- `download_folder`: manifest first (the file list comes from it), then every file in
  parallel, each written under a temporary name and renamed, the local manifest last;
- `read_ranges`, `read_object`: N parallel ranged GETs into caller-provided buffers;
- `get_ceiling`: GET throughput for 1, 8 and 32 parallel ranged requests, best and spread.

Errors say what was wrong, where, and what to do, and carry the exit code
(`loadbench.errors`): a missing bucket or key is a `CheckpointError` (2), rejected
credentials a `ConfigError` (2) that never holds the secret, an unreachable endpoint
`Transient` (3), an object that changed or is shorter than the manifest says
`ObjectMismatch` (1).

The code lives in six modules, by concern; this one re-exports their public names (each
`import name as name`, an explicit re-export), so `from loadbench.storage.objectstore import ...`
and `objectstore.<name>` keep working:

- `loadbench.storage.s3types`: the sizes and limits, `S3Uri`, `ObjectInfo`, `ObjectMismatch`;
- `loadbench.storage.s3uri`: `parse_uri` and `redact`;
- `loadbench.storage.s3client`: the client, error mapping, `list_objects`, `object_info`;
- `loadbench.storage.s3folder`: `upload_folder`, `download_folder` and the remote manifest;
- `loadbench.storage.s3read`: ranged reads, the GET ceiling and the ETag helpers;
- `loadbench.storage.s3direct`: the ranged reads' client, presigned GETs read from the socket
  straight into the caller's buffer (botocore for whatever it cannot read).
"""

from __future__ import annotations

from loadbench.storage.s3client import client as client
from loadbench.storage.s3client import describe as describe
from loadbench.storage.s3client import endpoint_from_env as endpoint_from_env
from loadbench.storage.s3client import error_for as error_for
from loadbench.storage.s3client import list_objects as list_objects
from loadbench.storage.s3client import object_info as object_info
from loadbench.storage.s3folder import download_folder as download_folder
from loadbench.storage.s3folder import read_remote_manifest as read_remote_manifest
from loadbench.storage.s3folder import remove_partials as remove_partials
from loadbench.storage.s3folder import upload_folder as upload_folder
from loadbench.storage.s3folder import wanted_files as wanted_files
from loadbench.storage.s3read import etag_matches as etag_matches
from loadbench.storage.s3read import get_ceiling as get_ceiling
from loadbench.storage.s3read import largest_object as largest_object
from loadbench.storage.s3read import local_etag as local_etag
from loadbench.storage.s3read import read_object as read_object
from loadbench.storage.s3read import read_ranges as read_ranges
from loadbench.storage.s3read import split_ranges as split_ranges
from loadbench.storage.s3types import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from loadbench.storage.s3types import DEFAULT_PART_BYTES as DEFAULT_PART_BYTES
from loadbench.storage.s3types import DEFAULT_RANGE_BYTES as DEFAULT_RANGE_BYTES
from loadbench.storage.s3types import MAX_CONCURRENCY as MAX_CONCURRENCY
from loadbench.storage.s3types import MAX_PART_BYTES as MAX_PART_BYTES
from loadbench.storage.s3types import MIN_PART_BYTES as MIN_PART_BYTES
from loadbench.storage.s3types import PART_BYTES_METADATA as PART_BYTES_METADATA
from loadbench.storage.s3types import PARTIAL as PARTIAL
from loadbench.storage.s3types import READ_CHUNK as READ_CHUNK
from loadbench.storage.s3types import Buffer as Buffer
from loadbench.storage.s3types import MiB as MiB
from loadbench.storage.s3types import ObjectInfo as ObjectInfo
from loadbench.storage.s3types import ObjectMismatch as ObjectMismatch
from loadbench.storage.s3types import Progress as Progress
from loadbench.storage.s3types import S3Uri as S3Uri
from loadbench.storage.s3uri import parse_uri as parse_uri
from loadbench.storage.s3uri import redact as redact
