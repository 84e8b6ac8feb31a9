"""dicom-node: a long-running DICOM node (Storage SCP, scheduled retrieval, Excel and NIfTI outputs)."""

__version__ = "0.1.0"
