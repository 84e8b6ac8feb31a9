"""Siemens mosaic support: the CSA image header values needed to cut a mosaic into correctly placed slices."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

CSA_IMAGE_HEADER = (0x0029, 0x1010)
NUMBER_OF_IMAGES_IN_MOSAIC = (0x0019, 0x100A)


def parse_csa(raw: bytes) -> dict[str, list[str]]:
    """Siemens CSA2 ("SV10") header: tag name -> list of string values. Raises ValueError when malformed."""
    if raw[:4] != b"SV10":
        raise ValueError("CSA header is not in the SV10 format")
    n_tags = struct.unpack_from("<I", raw, 8)[0]
    if not 0 < n_tags <= 256:
        raise ValueError(f"CSA header claims {n_tags} tags")
    pos = 16
    out: dict[str, list[str]] = {}
    for _ in range(n_tags):
        name_raw, _vm, _vr, _syngo, n_items, _x = struct.unpack_from("<64si4s3i", raw, pos)
        pos += 84
        name = name_raw.split(b"\0", 1)[0].decode("latin-1")
        values = []
        for _ in range(n_items):
            item_len = struct.unpack_from("<4i", raw, pos)[1]
            pos += 16
            if item_len < 0 or pos + item_len > len(raw):
                raise ValueError("CSA item runs past the header")
            text = raw[pos:pos + item_len].split(b"\0", 1)[0].decode("latin-1").strip()
            if text:
                values.append(text)
            pos += item_len + (-item_len % 4)
        out[name] = values
    return out


def mosaic_layout(ds: Dataset | dict[str, Any]) -> tuple[int, int, np.ndarray | None]:
    """(images in the mosaic, tiles per side, CSA SliceNormalVector or None). Raises ValueError when unknown.

    ds is a pydicom header or the fast reader's dict (node/process/nifti/headers.py)."""
    csa: dict[str, list[str]] = {}
    if isinstance(ds, dict):
        raw_csa = ds.get("SiemensCSAImageHeader") if ds.get("SiemensCreator0029") == "SIEMENS CSA HEADER" else None
        private_count = ds.get("SiemensMosaicCount") if ds.get("SiemensCreator0019") == "SIEMENS MR HEADER" else None
    else:
        elem = ds.get(CSA_IMAGE_HEADER)
        raw_csa = elem.value if elem is not None else None
        private = ds.get(NUMBER_OF_IMAGES_IN_MOSAIC)
        private_count = private.value if private is not None else None
    if isinstance(raw_csa, bytes) and raw_csa:
        csa = parse_csa(raw_csa)
    count: int | None = None
    if csa.get("NumberOfImagesInMosaic"):
        count = int(float(csa["NumberOfImagesInMosaic"][0]))
    elif private_count not in (None, b"", ""):
        value = private_count
        count = struct.unpack("<H", value[:2])[0] if isinstance(value, bytes) else int(value)
    if not count or count < 1:
        raise ValueError("mosaic without NumberOfImagesInMosaic")
    normal = None
    if len(csa.get("SliceNormalVector", [])) == 3:
        normal = np.array([float(v) for v in csa["SliceNormalVector"]])
    return count, math.ceil(math.sqrt(count)), normal
