"""Fault injection for ``nnfeat microscope`` and ``nnfeat report`` (the :mod:`nnfeat.io` hooks): the CLI is
SIGKILLed after its k-th file write (and just before some renames, ``k:before``), for every write point of a
microscope and for points inside every stage kind of a report; after each kill no file under its final name is
partial (every PNG decodes, every JSON parses, every .npy / .npz loads), and a plain re-run ends byte-identical
to an uninterrupted run. Hidden temporaries ``.name.*`` that a ``k:before`` kill leaves behind are ignored
here (the re-run removes them: tests/test_damaged_files.py). A damaged cached file (a truncated render, a truncated
per-batch or per-stage record) is detected and redone, not trusted because it exists.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:
    from tests.faults import broken_files, hidden_files, nnfeat, visible_files
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from faults import broken_files, hidden_files, nnfeat, visible_files

COMMON = ["--weights", "random", "--device", "cpu", "--quiet", "--out", "out"]
MICROSCOPE = ["microscope", "digits-cnn", "conv2:0..5", "--batch", "2", "--steps", "4", *COMMON]
REPORT = ["report", "digits-cnn", "--images", "digits", "--n", "60", "--layers", "conv2,output",
          "--units-per-layer", "2", "--steps", "8", "--batch", "2", "--diversity", "2", "--projection-n", "12",
          *COMMON]


def differences(a: Path, b: Path) -> list[str]:
    """Files that differ (or exist on one side only); ``elapsed_seconds`` of a JSON record is not compared."""
    fa, fb = visible_files(a), visible_files(b)
    out = sorted(set(fa) ^ set(fb))
    for name in set(fa) & set(fb):
        x, y = fa[name], fb[name]
        if name.endswith(".json"):
            x, y = ({k: v for k, v in json.loads(t).items() if k != "elapsed_seconds"} if isinstance(json.loads(t), dict)
                    else json.loads(t) for t in (x, y))
        if x != y:
            out.append(name)
    return sorted(out)


def reference(tmp_path_factory, args: list[str]) -> tuple[Path, list[str]]:
    """An uninterrupted run's folder and the paths of its writes (relative to it), in order."""
    folder = tmp_path_factory.mktemp("reference")
    log = folder / "writes.log"
    run = nnfeat(folder, args, NNFEAT_WRITE_LOG=str(log))
    assert run.returncode == 0, run.stderr
    out = folder / "out"
    writes = logged(log)
    return out, writes


def logged(log: Path) -> list[str]:
    """The writes of a ``NNFEAT_WRITE_LOG`` file, relative to the ``out`` folder (the runs write ``--out out``)."""
    return [Path(line).relative_to("out").as_posix() for line in log.read_text().splitlines()]


def kill_and_resume(args: list[str], reference_out: Path, folder: Path, kill: str) -> dict:
    """Kill a fresh run at ``kill``, check what it left, re-run it plainly and compare with the reference."""
    killed = nnfeat(folder, args, NNFEAT_KILL_AFTER_WRITES=kill)
    out = folder / "out"
    facts = {"kill": kill, "returncode": killed.returncode, "broken": broken_files(out) if out.exists() else [],
             "hidden": len(hidden_files(out)) if out.exists() else 0}
    resumed = nnfeat(folder, args)
    facts["resumed"] = resumed.returncode
    facts["stderr"] = resumed.stderr[-2000:]
    facts["differ"] = differences(reference_out, out) if resumed.returncode == 0 else ["<no result>"]
    return facts


# -- microscope: every write point --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_reference(tmp_path_factory):
    return reference(tmp_path_factory, MICROSCOPE)


def test_microscope_survives_a_kill_at_every_write_point(micro_reference, tmp_path):
    out, writes = micro_reference
    n = len(writes)
    # 3 batches of 2 (2 PNGs, then the batch record), then index.html, the sheet and the record
    assert writes[:3] == ["channel-0.png", "channel-1.png", "batches/batch-0.json"]
    assert writes[-3:] == ["index.html", "microscope.png", "microscope.json"] and n == 12
    kills = [str(k) for k in range(1, n + 1)] + ["1:before", "3:before", f"{n}:before"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda kill: kill_and_resume(MICROSCOPE, out, tmp_path / kill.replace(":", "-"), kill),
                                kills))
    for facts in results:
        assert facts["returncode"] == -9, facts  # died by SIGKILL
        assert facts["broken"] == [], facts
        assert facts["resumed"] == 0 and facts["differ"] == [], facts
        if facts["kill"].endswith(":before"):
            assert facts["hidden"] == 1, facts  # the temporary of the write it died in
        else:
            assert facts["hidden"] == 0, facts


def test_microscope_redoes_a_damaged_render_and_a_damaged_batch_record(micro_reference, tmp_path):
    out, _ = micro_reference
    folder = tmp_path / "damaged"
    shutil.copytree(out, folder / "out")
    png = folder / "out" / "channel-1.png"
    png.write_bytes(png.read_bytes()[:-40])  # the end of the image data and IEND gone
    record = folder / "out" / "batches" / "batch-4.json"
    record.write_text(record.read_text()[:30])
    log = folder / "writes.log"
    run = nnfeat(folder, MICROSCOPE, NNFEAT_WRITE_LOG=str(log))
    assert run.returncode == 0, run.stderr
    rewritten = [Path(line).name for line in log.read_text().splitlines()]
    assert rewritten[:6] == ["channel-0.png", "channel-1.png", "batch-0.json", "channel-4.png", "channel-5.png",
                             "batch-4.json"], rewritten  # batch 2 was sound and kept
    assert differences(out, folder / "out") == []


# -- report: kills inside every stage kind ------------------------------------------------------------------
def _stage_of(path: str) -> str | None:
    match = re.fullmatch(r"stages/(.+)\.json", path)
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), match.group(1)) if match else None


def _segments(writes: list[str]) -> list[tuple[str, list[str]]]:
    """(stage, its writes) in order: a stage's files, then its record (the manifest after it goes with it)."""
    segments, current = [], []
    for path in writes:
        current.append(path)
        if _stage_of(path) is not None:
            segments.append((_stage_of(path), current))
            current = []
        elif path == "report.json" and segments and not current[:-1]:
            segments[-1][1].append(current.pop())
    assert current == [], current
    return segments


@pytest.fixture(scope="module")
def report_reference(tmp_path_factory):
    return reference(tmp_path_factory, REPORT)


def test_report_survives_kills_inside_every_stage_kind(report_reference, tmp_path):
    out, writes = report_reference
    segments = _segments(writes)
    kinds = list(dict.fromkeys(stage.split(":")[0] for stage, _ in segments))
    assert {"graph", "render", "microscope", "collect", "examples", "heatmap", "projection", "diversity", "unit",
            "class-renders", "saliency", "uncertainty", "pages"} <= set(kinds), kinds
    owner = {path: stage for stage, paths in segments for path in paths}
    order = [stage for stage, _ in segments]
    # a kill inside the first stage of every kind, and the last render batch and unit; some just before a rename
    chosen = [next(s for s in order if s.split(":")[0] == k) for k in kinds]
    chosen += [[s for s in order if s.startswith(k)][-1] for k in ("render:", "unit:")]
    targets = [(stage, "before" if stage.split(":")[0] in ("render", "examples", "pages") else "after")
               for stage in sorted(set(chosen), key=order.index)]
    folder = tmp_path / "chain"
    landed = []  # the stage each kill came in
    for stage, when in targets:
        for _attempt in range(3):
            done = {s for s in order if (folder / "out" / "stages" / (_quote(s) + ".json")).is_file()}
            if stage in done:
                break
            # the writes a resumed run makes: the segments of the stages not done, in order (as in the reference),
            # less the collection batch records already there (a collection keeps them)
            remaining = [p for s, paths in segments if s not in done for p in paths
                         if not (p.endswith(".npz") and (folder / "out" / p).is_file())]
            own = [p for p in dict(segments)[stage] if p in remaining]
            k = remaining.index(own[0]) + (len(own) + 1) // 2
            hidden_before = set(hidden_files(folder / "out")) if (folder / "out").exists() else set()
            log = folder / f"writes-{len(landed)}-{_attempt}.log"
            killed = nnfeat(folder, REPORT, NNFEAT_KILL_AFTER_WRITES=f"{k}:before" if when == "before" else str(k),
                            NNFEAT_WRITE_LOG=str(log))
            assert killed.returncode == -9, (stage, killed.stderr[-2000:])
            assert broken_files(folder / "out") == [], stage
            if when == "before":  # the write it died in: the temporary left behind, named after its final file
                (temp,) = set(hidden_files(folder / "out")) - hidden_before
                name = temp.name[1:len(temp.name) - len(temp.suffix)].rsplit(".", 1)[0]
                dying = (temp.parent / name).relative_to(folder / "out").as_posix()
            else:
                dying = logged(log)[-1]
            landed.append(owner[dying])
            if owner[dying] == stage:
                break
    assert {s.split(":")[0] for s in landed} == set(kinds), landed
    resumed = nnfeat(folder, REPORT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert differences(out, folder / "out") == []


def _quote(stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", lambda m: f"%{ord(m.group()):02X}", stage)


def test_report_redoes_a_damaged_render_and_a_damaged_stage_record(report_reference, tmp_path):
    out, _ = report_reference
    folder = tmp_path / "damaged"
    shutil.copytree(out, folder / "out")
    png = folder / "out" / "layers" / "conv2" / "render" / "channel-1.png"
    png.write_bytes(png.read_bytes()[:-40])
    record = folder / "out" / "stages" / (_quote("unit:conv2:0") + ".json")
    record.write_text(record.read_text()[:10])
    log = folder / "writes.log"
    run = nnfeat(folder, REPORT, NNFEAT_WRITE_LOG=str(log))
    assert run.returncode == 0, run.stderr
    stages = [_stage_of(path) for path in logged(log)]
    assert [s for s in stages if s] == ["render:conv2:0", "unit:conv2:0"]
    assert differences(out, folder / "out") == []
