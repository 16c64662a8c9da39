"""`LakeStorage`: where the lake lives (a local path or S3-compatible storage), with secrets as SecretStr."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from loopline.storage.lake import Lake, make_s3_client, s3_storage_options


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
    import os

    name = block_name or os.environ.get("LOOPLINE_LAKE_BLOCK")
    if name:
        return LakeStorage.load(name).to_lake()
    return Lake.from_env(home)
