"""``selfsup data``: the dataset registry, loading a dataset and writing shards, for the CLI."""
from ..data.datasets import DATASETS, load_dataset
from ..data.shard_writer import write_shards

__all__ = ["DATASETS", "load_dataset", "write_shards"]
