"""`LakeStorage`: where the lake lives (a local path or S3-compatible storage), with secrets as SecretStr.

One way to find the lake, for every process: the block `LOOPLINE_LAKE_BLOCK` names, else the environment
(`resolve_lake`). The core never loads a block, so the flow layer resolves it and hands the lake on: to the
core code it runs in-process through this process's environment (`export_lake`: `loopline status`,
`loopline serve`), to the processes it starts through theirs (`lake_environment`: the deployment stage's
model server; the DDP workers get theirs the same way from `loopline/train/ddp.py`). The secret key travels
only in an environment, never in argv, files or logs.
"""

from __future__ import annotations

import os

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from loopline.errors import ConfigError
from loopline.storage.lake import BLOCK_ENV, Lake, make_s3_client, s3_storage_options


class LakeStorage(Block):
    """The loopline lake: Delta tables, checkpoints and transforms live under `root`.

    `root` is a local folder or `s3://bucket/prefix`; for S3-compatible stores set `endpoint_url`.
    """

    _block_type_name = "Loopline Lake Storage"
    _block_type_slug = "loopline-lake-storage"
    _description = "Where loopline's Delta tables, checkpoints and transforms live (local path or S3)."

    root: str = Field(default="./.loopline/lake", description="local folder or s3://bucket/prefix")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000"
    )
    region: str | None = Field(default=None, description="AWS region (default us-east-1)")
    access_key_id: str | None = Field(default=None, description="S3 access key id")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key")

    def to_lake(self) -> Lake:
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        return Lake(
            root=self.root,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=secret,
        )

    def get_s3_client(self):
        lake = self.to_lake()
        return make_s3_client(lake.endpoint_url, lake.region, lake.access_key_id, lake.secret_access_key)

    def storage_options(self) -> dict[str, str] | None:
        lake = self.to_lake()
        if not lake.is_s3:
            return None
        return s3_storage_options(lake.endpoint_url, lake.region, lake.access_key_id, lake.secret_access_key)


def resolve_lake(home: str, block_name: str | None = None) -> Lake:
    """The lake from a saved LakeStorage block when named (or `LOOPLINE_LAKE_BLOCK` is set), else the environment."""
    name = block_name or os.environ.get(BLOCK_ENV)
    if not name:
        return Lake.from_env(home)
    try:
        return LakeStorage.load(name).to_lake()
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise ConfigError(
            f"{BLOCK_ENV}={name!r}: the Prefect API has no LakeStorage block of that name ({exc}). Create it "
            "(the Blocks page of the Prefect UI, or LakeStorage(...).save(name)) or fix the name."
        ) from exc


def lake_environment(lake: Lake) -> dict[str, str]:
    """The environment variables that give a core process started from here `lake` (`Lake.from_env`), to
    lay over the parent's environment: `{**os.environ, **lake_environment(lake)}`. Holds the secret key."""
    return lake.environment()


def export_lake(home: str) -> Lake:
    """Resolve the lake and put it into this process's environment, for the core code that runs here
    (it reads `Lake.from_env`) and every process started from here. Returns it."""
    lake = resolve_lake(home)
    os.environ.update(lake_environment(lake))
    return lake
