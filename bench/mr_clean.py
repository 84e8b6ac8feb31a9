"""Benchmark: MR_clean on 1,000 synthetic MR series, series-level and instance-level input frames.

Run from the repo root:  .venv/bin/python -m bench.mr_clean [--series 1000] [--instances 30] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from typing import Any

import pandas as pd

from bench.report import report
from node.mr_clean import load_config, process_mri_dataframe

# One study: description, ScanningSequence, SequenceVariant, TR, TE, TI, FA, ETL, dimension, ImageType, b-value.
PROTOCOL: list[tuple[Any, ...]] = [
    ("localizer", "GR", "SP", 8.6, 4.0, None, 20, 1, "2D", "ORIGINAL\\PRIMARY\\M\\NORM", None),
    ("t1_tse_tra", "SE", "SK", 600, 12, None, 90, 3, "2D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("t2_tse_tra", "SE", "SK", 4000, 90, None, 150, 15, "2D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("t2_tirm_tra_dark-fluid", "SE\\IR", "SK\\SP\\MP", 9000, 81, 2500, 150, 16, "2D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("ep2d_diff_tra", "EP", "SK\\SP", 5000, 70, None, 90, 1, "2D", "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE", 1000),
    ("ep2d_diff_tra_ADC", "EP", "SK\\SP", 5000, 70, None, 90, 1, "2D", "DERIVED\\PRIMARY\\DIFFUSION\\ADC", None),
    ("Ax LAVA-Flex", "GR", "SS\\SP", 4, 1.7, None, 12, 1, "3D", "ORIGINAL\\PRIMARY\\W", None),
    ("T2W_SPAIR", "SE", "SK", 3000, 80, None, 90, 20, "2D", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", None),
    ("t1_vibe_fs_tra_dyn", "GR", "SP", 4, 1.5, None, 10, 1, "3D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("t1_vibe_fs_tra_dyn", "GR", "SP", 4, 1.5, None, 10, 1, "3D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("t1_vibe_fs_tra_dyn", "GR", "SP", 4, 1.5, None, 10, 1, "3D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("t1_mprage_sag_post", "GR\\IR", "SK\\SP\\MP", 2300, 2.3, 900, 8, 1, "3D", "ORIGINAL\\PRIMARY\\M\\ND", None),
    ("SWI_Images", "GR", "SP", 28, 20, None, 15, 1, "3D", "ORIGINAL\\PRIMARY\\SWI", None),
    ("Ax 压脂 T2", None, None, "junk", float("nan"), None, None, None, None, "", None),
]
VENDORS = [("SIEMENS", "MAGNETOM_Skyra"), ("GE MEDICAL SYSTEMS", "SIGNA Architect"), ("Philips", "Ingenia"), ("UIH", "uMR 780")]


def synthetic_frame(n_series: int, instances: int, seed: int = 7) -> pd.DataFrame:
    """n_series MR series in studies of len(PROTOCOL) series; `instances` rows per series."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for s in range(n_series):
        study, k = divmod(s, len(PROTOCOL))
        desc, ss, sv, tr, te, ti, fa, etl, dim, itype, b = PROTOCOL[k]
        vendor, model = VENDORS[study % len(VENDORS)]
        base = {
            "Modality": "MR",
            "StudyInstanceUID": f"1.2.826.0.1.{study}",
            "SeriesInstanceUID": f"1.2.826.0.1.{study}.{k}",
            "SeriesNumber": k + 1,
            "SeriesDescription": desc,
            "ProtocolName": desc,
            "ImageType": itype,
            "ScanningSequence": ss,
            "SequenceVariant": sv,
            "RepetitionTime": tr,
            "EchoTime": te,
            "InversionTime": ti,
            "FlipAngle": fa,
            "EchoTrainLength": etl,
            "MRAcquisitionType": dim,
            "MagneticFieldStrength": 3.0,
            "Manufacturer": vendor,
            "ManufacturerModelName": model,
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "SliceThickness": 3.0,
            "SeriesDate": "20250115",
            "SeriesTime": f"{10 + k // 6:02d}{(k * 7) % 60:02d}00",
            "DiffusionBValue": b,
            "BodyPartExamined": "ABDOMEN",
            "ContrastBolusAgent": None,
        }
        for i in range(instances):
            row = dict(base)
            row["InstanceNumber"] = i + 1
            row["ImagePositionPatient"] = f"-100\\-120\\{-40 + 3 * i}"
            row["AcquisitionTime"] = base["SeriesTime"]
            rows.append(row)
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def timed(df: pd.DataFrame, repeat: int) -> list[float]:
    cfg = load_config()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        process_mri_dataframe(df, cfg)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=30, help="rows per series in the instance-level run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    t0 = time.perf_counter()
    load_config(dict(load_config().raw))
    report(f"config load+validate+compile: {1000 * (time.perf_counter() - t0):.1f} ms")
    for per_series in (1, args.instances):
        df = synthetic_frame(args.series, per_series)
        times = timed(df, args.repeat)
        result = process_mri_dataframe(df)
        report(
            f"{args.series} series x {per_series} rows ({len(df)} rows): median {1000 * statistics.median(times):.0f} ms,"
            f" min {1000 * min(times):.0f} ms over {args.repeat} runs -> {len(result)} series"
        )
    report("classes:", dict(Counter(result["sequenceClass"]).most_common()))


if __name__ == "__main__":
    main()
