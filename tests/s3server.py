"""A real S3 server for tests: moto's server (`moto[server]`) on loopback, never a mock of the client.

The server runs in a thread of the test process (moto.server.ThreadedMotoServer, a werkzeug
HTTP server on 127.0.0.1 and a free port), so subprocesses reach it over HTTP like any
endpoint. A test module uses its fixtures with

    pytest_plugins = ("tests.s3server",)

- `s3_server` (session): the running server, as an `S3Server`;
- `s3_env`: the AWS_* environment pointed at it for one test (endpoint, credentials, region;
  no profile, no instance metadata), the `S3Server` returned;
- `bucket`: a fresh, empty bucket for one test.

`S3Server.authentication()` makes moto check every request's signature against a real IAM
user (moto's INITIAL_NO_AUTH_ACTION_COUNT, switched through its /moto-api/reset-auth route),
so wrong credentials get the server's own InvalidAccessKeyId / SignatureDoesNotMatch replies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"
ENV_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
               "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
               "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "loadbench-test-key"
    secret_key: str = "loadbench-test-secret-0123456789"

    def env(self) -> dict[str, str]:
        """The environment a process needs to reach this server the AWS way."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                # the shared files must not add a profile of the developer's machine
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def client(self, service: str = "s3", **credentials: str) -> Any:
        import boto3
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=credentials.get("key", self.access_key),
                            aws_secret_access_key=credentials.get("secret", self.secret_key))

    def create_bucket(self, prefix: str = "lb") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def _auth_count(self, count: str) -> str:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.load(resp)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])

    @contextlib.contextmanager
    def authentication(self) -> Iterator[tuple[str, str]]:
        """While inside, the server authenticates every request; yields the access key id and
        secret of an IAM user allowed everything."""
        iam = self.client("iam")
        user = f"lb-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        previous = self._auth_count("0")
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self._auth_count(previous)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running() -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1 and a free port; stop it on the way out."""
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    pytest.importorskip("boto3", reason="boto3 is not installed")
    with running() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name in ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket(s3_env: S3Server) -> str:
    return s3_env.create_bucket()
