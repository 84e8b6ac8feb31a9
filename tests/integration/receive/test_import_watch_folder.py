"""Watch-folder import end to end: folders and zips dropped into inbox/import/ are stored, completed and processed."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from node.store.state import StudyState
from tests.support.waiting import wait_for
from toolkit.dicomgen import multi_series_study, write_study

COMPLETION = {"stable_age_s": 1, "check_interval_s": 0.2}
IMPORT = {"settle_s": 0.5, "rescan_interval_s": 1}



def published_for(outbox: Path, study_uid: str) -> Path | None:
    for manifest in outbox.glob("*/manifest.json"):
        if not manifest.parent.name.startswith(".") and json.loads(manifest.read_text())["study_uid"] == study_uid:
            return manifest.parent
    return None


def state(node, study_uid: str) -> str | None:
    row = node.store.query("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
    return row[0][0] if row else None


def test_a_folder_of_dicom_dropped_into_the_import_folder_is_processed_like_a_pushed_study(start_node, tmp_path):
    node = start_node(completion=COMPLETION, **{"import": IMPORT})
    spec = multi_series_study(n_series=2, n_slices=4)
    staging = tmp_path / "staging" / "exam"
    files = write_study(spec, staging)
    (staging / "README.txt").write_text("exported from a viewer\n")
    import_dir = node.config.paths.inbox / "import"
    staging.rename(import_dir / "exam")  # dropped whole

    folder = wait_for(lambda: published_for(node.config.paths.outbox, spec.study_uid), what="outbox folder")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"]["instances"] == len(files)
    assert wait_for(lambda: state(node, spec.study_uid) == StudyState.DONE, what="study done")
    report = (import_dir / "done" / "exam.report.txt").read_text()
    assert f"stored={len(files)}" in report and "exam/README.txt\tnot DICOM" in report
    assert (import_dir / "done" / "exam").is_dir()
    assert node.store.query("SELECT DISTINCT calling_ae FROM instances") == [("IMPORT",)]


def test_a_zip_with_traversal_names_a_bomb_and_text_files_still_delivers_its_valid_study(start_node, tmp_path):
    node = start_node(completion=COMPLETION, **{"import": IMPORT})
    spec = multi_series_study(n_series=1, n_slices=5)
    files = write_study(spec, tmp_path / "src")
    staged = tmp_path / "upload.zip"
    with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"study/{f.name}")
        zf.writestr(zipfile.ZipInfo("../evil.dcm"), files[0].read_bytes())
        zf.writestr(zipfile.ZipInfo("/etc/cron.d/evil"), b"* * * * * root true\n")
        zf.writestr("notes.txt", "not DICOM\n")
        with zf.open("bomb.dcm", "w", force_zip64=True) as member:
            for _ in range(200):
                member.write(b"\x00" * (1 << 20))
    import_dir = node.config.paths.inbox / "import"
    staged.rename(import_dir / "upload.zip")

    folder = wait_for(lambda: published_for(node.config.paths.outbox, spec.study_uid), what="outbox folder")
    assert json.loads((folder / "manifest.json").read_text())["inputs"]["instances"] == len(files)
    report = wait_for(lambda: (import_dir / "failed" / "upload.zip.report.txt").exists(), what="report") and (
        import_dir / "failed" / "upload.zip.report.txt"
    ).read_text()
    assert "upload.zip:../evil.dcm\tunsafe member name: path traversal" in report
    assert "upload.zip:/etc/cron.d/evil\tunsafe member name: absolute path" in report
    assert "upload.zip:bomb.dcm\tcompression ratio" in report
    assert "upload.zip:notes.txt\tnot DICOM" in report
    assert (import_dir / "failed" / "upload.zip").is_file()
    assert not (tmp_path / "evil.dcm").exists() and not (node.config.paths.inbox / "evil.dcm").exists()
    assert list(node.store.paths.tmp.iterdir()) == []


def test_delete_when_done_purges_the_imported_dicom_once_outputs_are_published(start_node, tmp_path):
    retention = {"store": "delete_when_done", "interval_s": 0.5}
    node = start_node(completion=COMPLETION, retention=retention, **{"import": IMPORT})
    spec = multi_series_study(n_series=1, n_slices=3)
    staging = tmp_path / "staging" / "exam"
    write_study(spec, staging)
    staging.rename(node.config.paths.inbox / "import" / "exam")
    folder = wait_for(lambda: published_for(node.config.paths.outbox, spec.study_uid), what="outbox folder")

    # The node's retention timer does it: no instance left, files gone, study row still done, outputs kept.
    wait_for(lambda: node.store.instance_count(spec.study_uid) == 0, what="purge by the retention timer")
    assert list((node.store.paths.store / spec.study_uid).rglob("*.dcm")) == []
    assert (folder / "manifest.json").exists() and state(node, spec.study_uid) == StudyState.DONE
