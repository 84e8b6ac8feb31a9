"""Outbox folder names and the whole-folder publish."""

from __future__ import annotations

import json

import pytest

from node.process.outbox import DEFAULT_TEMPLATE, FolderTaken, disambiguate, folder_name, publish, sweep


def test_folder_names_come_from_slugged_attributes():
    hostile = {"PatientID": "../../etc/passwd", "StudyDate": "20250101", "AccessionNumber": "A/1\x00"}
    name = folder_name(DEFAULT_TEMPLATE, hostile, "1.2.3")
    assert "/" not in name and "\x00" not in name and ".." not in name
    assert name.startswith("etc_passwd_20250101_A_1")


def test_cjk_values_are_kept_in_folder_names():
    name = folder_name(DEFAULT_TEMPLATE, {"PatientID": "张三", "StudyDate": "20250101", "AccessionNumber": "X1"}, "1.2.3")
    assert name == "张三_20250101_X1"


def test_missing_attributes_fall_back_to_the_study_uid():
    assert folder_name(DEFAULT_TEMPLATE, {}, "1.2.840.1") == "1.2.840.1"


def test_collisions_are_resolved_deterministically_per_study():
    a = disambiguate("P_20250101_A", "1.2.3")
    assert a == disambiguate("P_20250101_A", "1.2.3")
    assert a != disambiguate("P_20250101_A", "1.2.4")
    assert a.startswith("P_20250101_A_")


def test_publish_replaces_an_existing_folder_whole(tmp_path):
    final = tmp_path / "study"
    v1 = tmp_path / ".tmp-1"
    v1.mkdir()
    (v1 / "manifest.json").write_text(json.dumps({"version": 1}))
    (v1 / "old-only.txt").write_text("x")
    publish(v1, final)
    assert json.loads((final / "manifest.json").read_text())["version"] == 1
    v2 = tmp_path / ".tmp-2"
    v2.mkdir()
    (v2 / "manifest.json").write_text(json.dumps({"version": 2}))
    publish(v2, final)
    assert json.loads((final / "manifest.json").read_text())["version"] == 2
    assert not (final / "old-only.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]


def test_sweep_removes_only_staging_folders(tmp_path):
    (tmp_path / ".tmp-abc").mkdir()
    (tmp_path / ".old-x").mkdir()
    (tmp_path / "real").mkdir()
    assert sweep(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["real"]


def _folder(root, name: str, study_uid: str | None):
    folder = root / name
    folder.mkdir(parents=True)
    if study_uid is not None:
        (folder / "manifest.json").write_text(json.dumps({"study_uid": study_uid, "version": 1}))
    return folder


def test_a_publish_never_replaces_another_studys_folder(tmp_path):
    theirs = _folder(tmp_path / "outbox", "P_20250101_NA", "1.2.3")
    staged = _folder(tmp_path / "outbox", ".tmp-ours", "1.2.4")
    with pytest.raises(FolderTaken):
        publish(staged, theirs, "1.2.4")
    assert json.loads((theirs / "manifest.json").read_text())["study_uid"] == "1.2.3"
    hand_made = _folder(tmp_path / "outbox", "kept_by_a_user", None)
    with pytest.raises(FolderTaken):
        publish(staged, hand_made, "1.2.4")


def test_a_publish_replaces_a_previous_version_of_the_same_study(tmp_path):
    final = _folder(tmp_path / "outbox", "P_20250101_NA", "1.2.3")
    staged = _folder(tmp_path / "outbox", ".tmp-v2", "1.2.3")
    (staged / "new.txt").write_text("v2")
    publish(staged, final, "1.2.3")
    assert (final / "new.txt").read_text() == "v2" and not staged.exists()
