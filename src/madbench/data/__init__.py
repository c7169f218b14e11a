"""Named datasets on manifolds; see :func:`get_dataset` and :func:`list_datasets`."""

from madbench.data.base import DATASETS, Dataset, get_dataset, list_datasets, register_dataset

# Importing the modules registers their datasets.
from madbench.data import discrete, earth, so3, sphere  # noqa: E402,F401  isort: skip

__all__ = ["DATASETS", "Dataset", "get_dataset", "list_datasets", "register_dataset"]
