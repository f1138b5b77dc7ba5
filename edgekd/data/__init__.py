"""Data: the built-in digits set, user ``.npz`` files and image folders, split by seed."""

from edgekd.data.datasets import DataConfig, DataSplits, load_data

__all__ = ["DataConfig", "DataSplits", "load_data"]
