"""The report's records on disk: one record per finished stage (``stages/<stage>.json``) and the manifest
``report.json`` derived from them, which a re-run reads to do only the missing stages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from nnfeat.io import read_json, write_json
from nnfeat.ops.microscope import _read_png, settings_key
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


def write_record(out: Path, stage: str, key: str, note: str | None) -> None:
    """The record of a finished stage (written after its files)."""
    write_json(record_path(out, stage), {"stage": stage, "key": key, "note": note})


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


def outputs_ok(ctx: ReportContext, stage: str) -> bool:
    """Whether a recorded stage's outputs read back: a render batch's PNGs and values record (other stages
    are trusted to their record, written after their files)."""
    parts = stage.split(":")
    if parts[0] != "render":
        return True
    layer, first = ":".join(parts[1:-1]), int(parts[-1])
    chans = ctx.channels.get(layer, [])
    chunk = chans[chans.index(first):chans.index(first) + ctx.settings["batch"]] if first in chans else []
    try:
        record = read_json(ctx.layer_dir(layer) / "render" / f"batch-{first}.json")
        if record.get("channels") != chunk or set(record.get("values", {})) != set(map(str, chunk)):
            return False
        for c in chunk:
            _read_png(ctx.layer_dir(layer) / "render" / f"channel-{c}.png")
            for step in ctx.steps_kept:
                _read_png(ctx.unit_dir(layer, c) / f"step-{step}.png")
    except (OSError, ValueError, SyntaxError, AttributeError, TypeError):
        return False
    return True


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


__all__ = ["MANIFEST", "STAGES_DIR", "record_key", "record_path", "write_record", "read_records", "outputs_ok",
           "write_manifest", "read_notes"]
