"""Files only their owner may read: the state and usage databases, like the secrets files.

The state holds token hashes, ACLs, specs and history; usage.db who called what. Both are
created 0600 in a folder created 0700. SQLite creates the -wal, -shm and -journal files
beside a database with the database's own mode, so they are private too.

A file or folder that already exists keeps its mode: the user chose it (a group-readable state
for a team, say), and a chmod behind their back would surprise more than it protects.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["create_private_file"]


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 (its folder 0700) unless it exists."""
    _create_private_folder(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    # A restrictive umask could leave it unwritable: set the exact mode.
    os.chmod(path, 0o600)


def _create_private_folder(folder: Path) -> None:
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)
