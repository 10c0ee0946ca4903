"""Datasets: download and verify them, parse them into ``TabularData`` (or ``SequenceData`` for call
sequences), and turn rows into features."""

from metashield.data.download import DownloadError, fetch, load_dataset
from metashield.data.errors import DataFormatError
from metashield.data.nsl_kdd import load_nsl_kdd, read_nsl_kdd_file
from metashield.data.preprocess import FeaturePipeline
from metashield.data.registry import REGISTRY, DatasetSpec, RemoteFile, data_home, get_spec, mirrors
from metashield.data.sequences import SequenceData
from metashield.data.tabular import BadRowError, load_tabular
from metashield.data.types import BENIGN, TabularData

__all__ = [
    "BENIGN",
    "REGISTRY",
    "BadRowError",
    "DataFormatError",
    "DatasetSpec",
    "DownloadError",
    "FeaturePipeline",
    "RemoteFile",
    "SequenceData",
    "TabularData",
    "data_home",
    "fetch",
    "get_spec",
    "load_dataset",
    "load_nsl_kdd",
    "load_tabular",
    "mirrors",
    "read_nsl_kdd_file",
]
