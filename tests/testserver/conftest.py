"""Fixtures for the test server's own tests: what the manifest says, read straight from its YAML.

The server and `omero` command-line fixtures live in tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omerofs.testserver.process import SAMPLE_MANIFEST


# Expected objects, read straight from the manifest's YAML


class ManifestView:
    """Expected objects of a manifest, read independently of the server's own loader."""

    def __init__(self, manifest_path: Path):
        self.path = manifest_path
        self.data = yaml.safe_load(manifest_path.read_text())
        defaults = self.data.get("defaults", {})
        self.default_owner = defaults.get("owner")
        self.default_group = defaults.get("group")
        self.groups = {group["name"]: group for group in self.data.get("groups", [])}
        self.users = {user["name"]: user for user in self.data.get("users", [])}

    def objects(self, section: str) -> list[dict]:
        """Entries of a top-level section, with `owner` and `group` filled in."""
        return [self._with_defaults(entry) for entry in self.data.get(section, [])]

    def _with_defaults(self, entry: dict, parent: dict | None = None) -> dict:
        parent = parent or {}
        return {
            **entry,
            "owner": entry.get("owner", parent.get("owner", self.default_owner)),
            "group": entry.get("group", parent.get("group", self.default_group)),
        }

    def original_files(self) -> dict[int, dict]:
        """Every original file except repository descriptions: id -> entry with
        `name`, `source` (absolute Path), `path`, `fileset` and `template_prefix`."""
        files = {}
        for entry in self.data.get("files", []):
            files[entry["id"]] = self._file(self._with_defaults(entry), None, "")
        for fileset in self.objects("filesets"):
            for entry in fileset["files"]:
                files[entry["id"]] = self._file(
                    self._with_defaults(entry, fileset), fileset["id"], fileset["templatePrefix"]
                )
        return files

    def _file(self, entry: dict, fileset_id: int | None, template_prefix: str) -> dict:
        source = self.path.parent / entry["source"]
        if fileset_id is None:
            path = entry.get("path", "/")
        else:
            subdir = entry.get("subdir")
            path = template_prefix + (subdir + "/" if subdir else "")
        return {
            **entry,
            "name": entry.get("name", source.name),
            "source": source,
            "path": path,
            "fileset": fileset_id,
            "template_prefix": template_prefix,
        }

    def readable(self, entry: dict, user: str, group: str | None = None) -> bool:
        """Whether `user` reads `entry` in `group` (None: all of the user's groups)."""
        record = self.users[user]
        if group is not None and entry["group"] != group:
            return False
        if entry["group"] not in record["groups"]:
            return False
        permissions = self.groups[entry["group"]]["permissions"]
        if permissions in ("private", "rw----"):
            return entry["owner"] == user or entry["group"] in record.get("leader_of", [])
        return True

    def readable_ids(self, section: str, user: str, group: str | None = None) -> set[int]:
        return {entry["id"] for entry in self.objects(section) if self.readable(entry, user, group)}


@pytest.fixture(scope="session")
def sample_manifest() -> ManifestView:
    return ManifestView(SAMPLE_MANIFEST)
