"""Claiming a study reserves its outbox folder: two studies with the same name never share one."""

from __future__ import annotations

import time
from pathlib import Path

from node.process import completion
from node.process.processor import Processor
from node.store.store import Store
from toolkit.nodeproc import make_config


def _study(store: Store, uid: str) -> None:
    now = time.time()
    with store.transaction() as db:
        db.execute(
            "INSERT INTO studies(study_uid, patient_id, accession, study_date, first_received, last_received,"
            " n_instances, state, state_changed) VALUES (?,?,?,?,?,?,1,'receiving',?)",
            (uid, "P1", None, "20250101", now, now, now),  # an empty accession: both names end in _NA
        )
    assert completion.mark_complete(store, uid, "test") == 1


def test_two_studies_with_the_same_folder_name_claimed_together_get_different_folders(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = Store(config.paths)
    try:
        processor = Processor(config, store)
        _study(store, "1.2.3")
        _study(store, "1.2.4")
        first = processor._claim("1.2.3", 1, {})
        second = processor._claim("1.2.4", 1, {})
        assert first is not None and second is not None
        assert first.folder == "P1_20250101_NA"
        assert second.folder != first.folder and second.folder.startswith("P1_20250101_NA_")
        rows = dict(store.query("SELECT study_uid, outbox_path FROM studies"))
        assert rows == {"1.2.3": first.folder, "1.2.4": second.folder}
    finally:
        store.close()
