"""The lake: where Delta tables, checkpoints and artifacts live, locally or on S3.

A `Lake` is a root URI plus the credentials to reach it. It hands out delta-rs `storage_options` and a
boto3 client, and does the few object operations the rest of loopline needs (atomic put, get, list,
delete), so every stage works the same on a local folder and on `s3://bucket/prefix`.

Settings come from the `LakeStorage` Prefect block when a flow loads one, else from the environment:
`LOOPLINE_LAKE_URI` (default `$LOOPLINE_HOME/lake`), `AWS_ENDPOINT_URL`, `AWS_REGION`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`. The core never loads a block (it runs without Prefect): the
flow layer resolves `LOOPLINE_LAKE_BLOCK` and hands the lake to the processes it starts as those variables
(`Lake.environment`), so every process reads one lake. A process that `LOOPLINE_LAKE_BLOCK` names a block
for, but that was not handed the block's lake, refuses to guess: `from_env` raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from loopline.errors import ConfigError
from loopline.storage.files import TMP_MARKER, atomic_write_bytes
from loopline.storage.names import check_name
from loopline.storage.s3_retries import S3Retries, read_object

TABLE_KINDS = ("raw", "quarantine", "clean", "features", "predictions")
BLOCK_ENV = "LOOPLINE_LAKE_BLOCK"  # a LakeStorage block's name, resolved by the flow layer (blocks/lake.py)
RESOLVED_ENV = "LOOPLINE_LAKE_RESOLVED"  # set beside the lake's variables by whoever resolved them
# lake folders named by a model (the rest are named by a dataset): says which name was bad
MODEL_FOLDERS = frozenset({"predictions", "predictions_deadletter", "feedback", "checkpoints", "drift"})


@dataclass(frozen=True)
class Lake:
    root: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)  # never printed

    @classmethod
    def from_env(cls, home: str | None = None) -> Lake:
        block = os.environ.get(BLOCK_ENV)
        if block and not os.environ.get(RESOLVED_ENV):
            raise ConfigError(
                f"{BLOCK_ENV}={block!r} names a LakeStorage block, but this process was not handed that "
                "block's lake and cannot load blocks itself (the core runs without Prefect), so it would read "
                "another lake. Run it through the `loopline` command or a flow, which load the block and pass "
                f"its lake on in the environment; or unset {BLOCK_ENV} and set LOOPLINE_LAKE_URI (and for S3 "
                "AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."
            )
        home = home or os.environ.get("LOOPLINE_HOME", "./.loopline")
        root = os.environ.get("LOOPLINE_LAKE_URI") or str(Path(home) / "lake")
        if not is_s3_uri(root):  # absolute: a relative root names another lake in another directory (and in
            root = str(Path(root).resolve())  # every key that includes it, e.g. the features task's cache)
        return cls(
            root=root,
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("LOOPLINE_S3_ENDPOINT_URL"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )

    def environment(self) -> dict[str, str]:
        """The variables `from_env` reads, set to this lake: a process started with them on top of its
        parent's environment reads this lake. They carry the secret key: pass them in a child's environment
        only, never in argv, files or logs. An unset endpoint or key is left out, so the child falls back
        where this process's S3 clients fall back too (the environment, the SDK's defaults)."""
        root = self.root if self.is_s3 else str(Path(self.root).resolve())
        env = {"LOOPLINE_LAKE_URI": root, RESOLVED_ENV: "1"}
        if self.is_s3 or self.region:
            env["AWS_REGION"] = self.region or "us-east-1"  # the region this process's clients use
        for name, value in (
            ("AWS_ENDPOINT_URL", self.endpoint_url),
            ("AWS_ACCESS_KEY_ID", self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key),
        ):
            if value:
                env[name] = value
        return env

    @property
    def is_s3(self) -> bool:
        return is_s3_uri(self.root)

    def uri(self, *parts: str) -> str:
        """A location under the root: `lake.uri("checkpoints", "demo")`. Every part is one path segment
        that passes `check_name` (the second names a dataset or model), so no name leaves its folder."""
        base = self.root if self.is_s3 else str(Path(self.root).resolve())
        kept = [p for p in parts if p]
        for i, part in enumerate(kept):
            what = ("model" if kept[0] in MODEL_FOLDERS else "dataset") if i == 1 else "lake path part"
            check_name(part.rstrip("/"), what)
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in kept]])

    def table_uri(self, kind: str, name: str) -> str:
        if kind not in TABLE_KINDS:
            raise ValueError(f"unknown table kind {kind!r}; expected one of {TABLE_KINDS}")
        check_name(name, "model" if kind in MODEL_FOLDERS else "dataset")  # "" too: not the folder itself
        return self.uri(kind, name)

    @property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs options; None for a local lake."""
        if not self.is_s3:
            return None
        return s3_storage_options(self.endpoint_url, self.region, self.access_key_id, self.secret_access_key)

    def s3_client(self):
        return make_s3_client(self.endpoint_url, self.region, self.access_key_id, self.secret_access_key)

    # -- object operations (local or S3) -------------------------------------------------------
    def put_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object atomically: temp file + fsync + rename locally, one PUT on S3."""
        if is_s3_uri(uri):
            bucket, key = split_s3_uri(uri)
            self.s3_client().put_object(Bucket=bucket, Key=key, Body=data)
            return
        atomic_write_bytes(uri, data)

    def get_bytes(self, uri: str) -> bytes:
        if is_s3_uri(uri):
            bucket, key = split_s3_uri(uri)
            return read_object(self.s3_client(), bucket, key, attempts=S3Retries.from_env().max_attempts)
        return Path(uri).read_bytes()

    def list(self, prefix_uri: str) -> list[str]:
        """Object URIs directly or indirectly under a prefix, sorted; temp files excluded."""
        if is_s3_uri(prefix_uri):
            bucket, key = split_s3_uri(prefix_uri)
            key = key.rstrip("/") + "/"
            out: list[str] = []
            paginator = self.s3_client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                out += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            return sorted(out)
        root = Path(prefix_uri)
        if not root.exists():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file() and TMP_MARKER not in p.name)

    def delete(self, uri: str) -> None:
        if is_s3_uri(uri):
            bucket, key = split_s3_uri(uri)
            self.s3_client().delete_object(Bucket=bucket, Key=key)
        else:
            Path(uri).unlink(missing_ok=True)


def is_s3_uri(uri: str) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def s3_storage_options(
    endpoint_url: str | None, region: str | None, access_key_id: str | None, secret_access_key: str | None
) -> dict[str, str]:
    opts: dict[str, str] = {"AWS_REGION": region or "us-east-1"}
    if endpoint_url:
        opts["AWS_ENDPOINT_URL"] = endpoint_url
        if endpoint_url.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if access_key_id:
        opts["AWS_ACCESS_KEY_ID"] = access_key_id
    if secret_access_key:
        opts["AWS_SECRET_ACCESS_KEY"] = secret_access_key
    opts.update(S3Retries.from_env().delta_options())  # retries and timeouts: see loopline.storage.s3_retries
    return opts


def make_s3_client(
    endpoint_url: str | None, region: str | None, access_key_id: str | None, secret_access_key: str | None
):
    import boto3  # lazy: boto3 costs ~0.3 s to import and local lakes never need it

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region or "us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=S3Retries.from_env().botocore_config(),  # retries and timeouts: see loopline.storage.s3_retries
    )
