"""prepare_dataset (`sqz data prepare`): an ImageNet-layout folder as Parquet shards."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact

from flows.common import NOT_CACHED, RETRYING, artifact_key
from sqz import storage
from sqz.data.prepare import check_prepare_inputs, prepare


# Retried: prepare is resumable and idempotent (a retry skips the shards already written).
@task(name="write-shards", **RETRYING, **NOT_CACHED)
def write_shards(src: str, dest_url: str, options: dict[str, Any]) -> dict[str, Any]:
    return prepare(src, dest_url, **options)


@flow(name="prepare_dataset")
def prepare_dataset(src: str, dest_url: str, splits: list[str] | None = None, shard_mb: float = 256.0, workers: int = 4,
                    progress: bool = True, max_side: int | None = None,
                    jpeg_quality: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``src``'s splits as Parquet shards of JPEG bytes + label under ``dest_url``
    (dataset.json last); returns the dataset's manifest."""
    # Bad input fails here, before the task (and its retries).
    check_prepare_inputs(src, dest_url, splits, shard_mb=shard_mb, workers=workers, max_side=max_side, jpeg_quality=jpeg_quality)
    options = {"splits": splits, "shard_mb": shard_mb, "workers": workers, "progress": progress,
               "max_side": max_side, "jpeg_quality": jpeg_quality}  # fmt: skip
    manifest = write_shards(src, dest_url, options)
    url = storage.join(storage.absolute(dest_url), "dataset.json")
    create_link_artifact(link=url if not storage.is_local(url) else f"file://{url}", link_text="dataset.json",
                         key=artifact_key("dataset", dest_url.rstrip("/").rsplit("/", 1)[-1][:40]),
                         description=f"prepared dataset from {src}")  # fmt: skip
    return manifest
