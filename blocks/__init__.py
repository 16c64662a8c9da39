"""Prefect Block types for loopline. Register with `prefect block register -m blocks`."""

from blocks.lake import LakeStorage

__all__ = ["LakeStorage"]
