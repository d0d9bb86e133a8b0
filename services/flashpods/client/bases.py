"""The upload each local folder's next upload starts from (delta re-upload).

Per API and local folder, the last upload this laptop finalized from it, kept in
`upload-bases.json` in the client's cache directory (flashpods.client.config.cache_dir).
It is only a hint: the API says whether it could use the base, and a lost, stale or
unreadable file costs one full upload, never a wrong one (rsync makes the tree exact
whatever it starts from).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("flashpods.client")

FILE_NAME = "upload-bases.json"
MAX_FOLDERS = 200  # the most recently uploaded folders are remembered


def folder_key(api_url: str, source: Path) -> str:
    """One folder on one host: the same folder uploaded to two hosts has two bases."""
    return f"{api_url.rstrip('/')} {source.resolve()}"


def parse(text: str) -> dict[str, dict[str, Any]]:
    """Pure: the remembered folders of a file's text; anything malformed is dropped."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    folders = data.get("folders") if isinstance(data, dict) else None
    if not isinstance(folders, dict):
        return {}
    return {
        key: entry
        for key, entry in folders.items()
        if isinstance(entry, dict)
        and isinstance(entry.get("upload_id"), str)
        and isinstance(entry.get("at"), int | float)
    }


def with_upload(
    folders: Mapping[str, dict[str, Any]], key: str, upload_id: str, at: float
) -> dict[str, dict[str, Any]]:
    """Pure: `folders` with `key` now at `upload_id`, the oldest beyond MAX_FOLDERS gone."""
    updated = {**folders, key: {"upload_id": upload_id, "at": at}}
    newest = sorted(updated.items(), key=lambda item: item[1]["at"], reverse=True)
    return dict(newest[:MAX_FOLDERS])


class UploadBases:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return parse(self.path.read_text())
        except (OSError, UnicodeDecodeError):
            return {}

    def get(self, api_url: str, source: Path) -> str | None:
        entry = self._read().get(folder_key(api_url, source))
        return None if entry is None else str(entry["upload_id"])

    def remember(self, api_url: str, source: Path, upload_id: str) -> None:
        """Written whole and renamed into place: a reader never sees half a file (two
        clients at once: the last one's wins, which is as good a base)."""
        folders = with_upload(self._read(), folder_key(api_url, source), upload_id, time.time())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE_NAME}.")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump({"folders": folders}, out)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not remember the upload of %s: %s", source, exc)
