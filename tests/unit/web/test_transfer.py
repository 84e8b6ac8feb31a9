"""Zip streaming of an outbox folder and upload bookkeeping, on files in a temp folder."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from node.web import transfer


def test_a_folder_streams_as_a_zip_in_bounded_pieces_with_identical_contents(tmp_path: Path) -> None:
    folder = tmp_path / "STUDY_1"
    (folder / "nifti").mkdir(parents=True)
    big = os.urandom(9 << 20)
    (folder / "nifti" / "1_t1.nii.gz").write_bytes(big)
    (folder / "manifest.json").write_text('{"ok": true}')
    pieces = list(transfer.zip_stream(folder))
    assert max(len(p) for p in pieces) <= 2 * transfer.CHUNK
    archive = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert sorted(archive.namelist()) == ["STUDY_1/manifest.json", "STUDY_1/nifti/1_t1.nii.gz"]
    assert archive.read("STUDY_1/nifti/1_t1.nii.gz") == big
    assert archive.testzip() is None


def test_symbolic_links_in_a_study_folder_are_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    folder = tmp_path / "STUDY"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "link.txt").symlink_to(secret)
    (folder / "linkdir").symlink_to(tmp_path)
    names = [p.relative_to(folder).as_posix() for p in transfer.folder_files(folder)]
    assert names == ["a.txt"]
    assert b"root:x" not in b"".join(transfer.zip_stream(folder))


def test_an_upload_over_the_limit_raises_and_abort_leaves_nothing(tmp_path: Path) -> None:
    up = transfer.Upload.begin(tmp_path / "import", "op", limit=1000)
    up.write(b"x" * 600)
    with pytest.raises(transfer.UploadTooLarge):
        up.write(b"x" * 600)
    up.abort()
    assert list((tmp_path / "import").iterdir()) == []


def test_an_upload_appears_under_its_final_name_only_when_whole_and_a_zip(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.dcm", b"x")
    up = transfer.Upload.begin(tmp_path / "import", "op", limit=1 << 20)
    up.write(buf.getvalue())
    assert [p.name for p in (tmp_path / "import").iterdir()] == [up.partial.name]
    assert up.partial.name.startswith(".")  # the importer skips dot-names
    final = up.finish()
    assert final.name == up.name and final.read_bytes() == buf.getvalue()
    assert transfer.upload_state(tmp_path / "import", up.name) == {"name": up.name, "state": "waiting", "report": ""}
    not_zip = transfer.Upload.begin(tmp_path / "import", "op", limit=1 << 20)
    not_zip.write(b"MZ not a zip")
    with pytest.raises(transfer.NotAZip):
        not_zip.finish()
    assert sorted(p.name for p in (tmp_path / "import").iterdir()) == [up.name]


@pytest.mark.parametrize("name", ["../etc/passwd", "web-x/../../a.zip", ".web-a.zip.part", "other.zip", ""])
def test_the_upload_state_of_a_name_that_is_not_an_upload_is_unknown(tmp_path: Path, name: str) -> None:
    assert transfer.upload_state(tmp_path, name) is None
