"""The report's records on disk: one record per finished stage (``stages/<stage>.json``: its settings key, its
note and the digest of every file it vouches for) and the manifest ``report.json`` derived from them, which a
re-run reads to do only the missing stages. A recorded stage whose files do not all read back with their
digests (:func:`nnfeat.io.is_whole`: truncated, replaced, deleted) is done again."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from nnfeat.io import file_digest, is_whole, read_json, write_json
from nnfeat.ops.microscope import settings_key
from nnfeat.ops.report.context import ReportContext

MANIFEST = "report.json"
STAGES_DIR = "stages"  #: per-stage records ``stages/<stage name, quoted>.json``


def record_key(settings: dict) -> str:
    """The digest a stage record carries: a record with another key is another run's (redone)."""
    return settings_key(settings)


def record_path(out: Path, stage: str) -> Path:
    """``stages/<stage>.json``, the name quoted (``render:conv2:0`` -> ``render%3Aconv2%3A0.json``: one file
    per stage name, never two names on one file)."""
    return out / STAGES_DIR / (re.sub(r"[^A-Za-z0-9._-]", lambda m: f"%{ord(m.group()):02X}", stage) + ".json")


def write_record(out: Path, stage: str, key: str, note: str | None, files: dict[str, str] | None = None) -> None:
    """The record of a finished stage (written after its files): ``files`` {path under ``out``: digest} are
    the files it vouches for (:func:`stage_files`)."""
    write_json(record_path(out, stage), {"stage": stage, "key": key, "note": note, "files": files or {}})


def read_records(out: Path, names: Sequence[str], key: str) -> dict[str, dict]:
    """{stage: {"note": ...} or {}} of the stages ``names`` whose record reads back with ``key``."""
    done = {}
    for name in names:
        try:
            record = read_json(record_path(out, name))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("key") == key and record.get("stage") == name:
            done[name] = {"note": record["note"]} if record.get("note") else {}
    return done


#: the folder under the report whose files verify themselves whenever they are read (the collections and the
#: projection layouts keep digests and redo a damaged file): a stage record does not list them, since what a
#: stage writes there depends on what an earlier, killed run left
SELF_VERIFIED = "cache"
#: an atlas stage vouches for these files of its folder (and ``icons/*.png``), not for the pipeline's stage
#: files (:func:`nnfeat.ops.atlas.build_atlas` checks and reuses those itself)
ATLAS_FILES = ("atlas.png", "cells.json", "atlas.json", "atlas.html")


def stage_files(ctx: ReportContext, stage: str, written: Sequence[Path]) -> dict[str, str]:
    """{path under the report: digest} of the files a finished stage vouches for: the files it wrote
    (``written``, from :func:`nnfeat.io.track_writes`) that are there, less those under ``cache/``; an atlas
    stage: its mosaic, records, page and icons (other ranks drew some icons, and a resumed atlas reuses some)."""
    out = ctx.out.resolve()
    if stage.split(":")[0] == "atlas":
        folder = ctx.layer_dir(":".join(stage.split(":")[1:])) / "atlas"
        written = [folder / name for name in ATLAS_FILES] + sorted((folder / "icons").glob("*.png"))
    files = {}
    for path in written:
        path = Path(path).resolve()
        if out not in path.parents or not path.is_file():
            continue
        rel = path.relative_to(out)
        if rel.parts[0] != SELF_VERIFIED:
            files[rel.as_posix()] = file_digest(path)
    return dict(sorted(files.items()))


def outputs_ok(ctx: ReportContext, stage: str) -> bool:
    """Whether a recorded stage's files are all there with the digests its record gives (a record without
    that list, from an older nnfeat, does not vouch for anything: the stage is done again)."""
    try:
        files = read_json(record_path(ctx.out, stage)).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(files, dict):
        return False
    return all(isinstance(digest, str) and is_whole(ctx.out / rel, digest) for rel, digest in files.items())


def write_manifest(out: Path, settings: dict, names: Sequence[str], done: dict) -> None:
    """``report.json`` from the finished stages, in stage order (not rewritten when it holds that already)."""
    ordered = {name: done[name] for name in names if name in done}
    manifest = {"kind": "report-manifest", "settings": settings, "stages": ordered,
                "complete": len(ordered) == len(names)}
    path = out / MANIFEST
    try:
        if read_json(path) == json.loads(json.dumps(manifest)):
            return
    except (OSError, ValueError):
        pass
    write_json(path, manifest)


def read_notes(out: Path) -> dict[str, str]:
    """{stage: note} of the stages the manifest lists as left out (what the pages say instead of a view)."""
    manifest = read_json(out / MANIFEST)
    return {k: v["note"] for k, v in manifest.get("stages", {}).items() if v.get("note")}


__all__ = ["MANIFEST", "STAGES_DIR", "SELF_VERIFIED", "ATLAS_FILES", "record_key", "record_path", "write_record",
           "read_records", "stage_files", "outputs_ok", "write_manifest", "read_notes"]
