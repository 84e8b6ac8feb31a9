"""Outbox folders: names from a slugged template, whole-folder atomic publish and replace, manifest checksums."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from node.process.naming import slug

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "<PatientID>_<StudyDate>_<AccessionNumber>"
_FIELD = re.compile(r"<([A-Za-z]+)>")
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def folder_name(template: str, attributes: Mapping[str, str | None], study_uid: str) -> str:
    """Fill <Keyword> fields with slugged values; an empty result falls back to the study UID."""

    def value(match: re.Match[str]) -> str:
        raw = attributes.get(match.group(1)) or ""
        return slug(str(raw), max_len=48) if raw else "NA"

    name = slug(_FIELD.sub(value, template), max_len=120)
    if not name.strip("_") or set(name) <= {"N", "A", "_"}:
        return slug(study_uid, max_len=120)
    return name


def disambiguate(name: str, study_uid: str) -> str:
    """A deterministic, collision-free variant: the same study always gets the same suffix."""
    return f"{name}_{hashlib.sha1(study_uid.encode(), usedforsecurity=False).hexdigest()[:8]}"


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (bottom-up) so a published folder survives a crash."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when the platform cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err), str(a))


class FolderTaken(OSError):
    """The outbox folder exists and is not a previous version of this study: it is never replaced."""


def owner(folder: Path) -> str | None:
    """The StudyInstanceUID in a published folder's manifest (None: no readable manifest)."""
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    uid = data.get("study_uid") if isinstance(data, dict) else None
    return str(uid) if uid else None


def publish(staged: Path, final: Path, study_uid: str | None = None) -> None:
    """Make staged visible as final in one step; an existing final is swapped out atomically, then removed.

    With study_uid, an existing final that is not this study's (another study's manifest, or a folder
    without one) raises FolderTaken instead of being replaced.
    """
    if study_uid is not None and final.exists() and owner(final) != study_uid:
        raise FolderTaken(f"outbox/{final.name} belongs to another study or to no study: not replaced")
    fsync_tree(staged)
    parent = final.parent
    if not final.exists():
        os.rename(staged, final)
    elif _exchange(staged, final):
        # staged now holds the previous version.
        shutil.rmtree(staged, ignore_errors=True)
    else:
        old = parent / f"{OLD_PREFIX}{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
        log.warning("Replaced %s with two renames (no atomic exchange on this file system)", final)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep(outbox: Path) -> int:
    """Remove staging folders left by a crash (never published, so nobody saw them)."""
    removed = 0
    if not outbox.exists():
        return 0
    for entry in outbox.iterdir():
        if entry.is_dir() and entry.name.startswith((TEMP_PREFIX, OLD_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
