"""Curated synthetic cases out of cmrstudio: NIfTI + JSON, nnU-Net v2 raw datasets, DICOM series."""

from cmrstudio.export.source import ExportItem, collect
from cmrstudio.export.writers import FORMATS, ExportReport, check_nnunet_dataset_json, export, verify

__all__ = ["ExportItem", "ExportReport", "FORMATS", "check_nnunet_dataset_json", "collect", "export", "verify"]
