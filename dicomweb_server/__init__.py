"""A DICOMweb and DIMSE archive for multi-site imaging research."""

__version__ = "0.1.0"
