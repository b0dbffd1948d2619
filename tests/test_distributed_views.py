"""The dataset passes of the views sharded over ranks (:func:`nnfeat.distributed.shard_map`, gloo on the CPU):
heatmaps, saliency with its sanity numbers, and uncertainty (ensemble and test-time augmentation) on 2 ranks
write the same bytes as one process; each rank computes only its own chunks; an error raised on one rank is
raised on every rank (none is left waiting); and a real ``torchrun --nproc-per-node 2 -m nnfeat saliency``
equals ``python -m nnfeat saliency``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnfeat import distributed
from tests.test_distributed_microscope import REPO, _env, _images, _model, assert_same_files

N_IMAGES = 12
BATCH = 4  # 3 chunks of images: rank 0 gets chunks 0 and 2, rank 1 chunk 1


# -- workers (module level: spawned processes import them) ---------------------------------------------------
def views_worker(out: str) -> None:
    from nnfeat.ops.heatmap import heatmap
    from nnfeat.ops.saliency import saliency
    from nnfeat.ops.uncertainty import uncertainty

    model = _model()
    images = _images(model, N_IMAGES)
    root = Path(out)
    heatmap(model, "conv2", images, top=4, batch_size=BATCH).save(root / "heatmap", timing=False)
    saliency(model, images, "gradient,gradcam,smoothgrad,occlusion", sanity=True, steps=4, cascade=2,
             samples=3, batch_size=BATCH, seed=3).save(root / "saliency", timing=False)
    other = _model()
    with torch.no_grad():  # a member that differs: an ensemble of one model twice is refused
        noise = torch.Generator().manual_seed(1)
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    uncertainty([model, other], images, "ensemble", top=3, batch_size=BATCH).save(root / "ensemble", timing=False)
    uncertainty(model, images, "tta", samples=4, top=3, seed=5, batch_size=BATCH).save(root / "tta", timing=False)


def chunks_worker(out: str, count: int) -> None:
    """Each rank records which chunks it computed; every rank must get the whole list in order."""
    ranks = distributed.current()
    done = []

    def square(i: int) -> torch.Tensor:
        done.append(i)
        return torch.tensor([i * i])

    got = distributed.shard_map(square, count)
    Path(out, f"rank-{ranks.rank}.json").write_text(json.dumps({"done": done, "got": [int(t) for t in got]}))


def failing_worker(out: str) -> None:
    """Chunk 1 (rank 1's) raises a one-line error; rank 0 must raise it too instead of waiting forever."""
    from nnfeat.errors import NnfeatError

    ranks = distributed.current()

    def chunk(i: int) -> int:
        if i == 1:
            raise NnfeatError("chunk 1 is bad")
        return i

    try:
        distributed.shard_map(chunk, 4)
    except NnfeatError as err:
        Path(out, f"rank-{ranks.rank}.txt").write_text(str(err))


# -- tests ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def views_one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("views") / "one"
    views_worker(str(out))
    return out


def test_views_on_two_ranks_write_the_bytes_of_one(views_one, tmp_path):
    out = tmp_path / "two"
    distributed.spawn(views_worker, 2, str(out))
    for name in ("heatmap", "saliency", "ensemble", "tta"):
        assert (out / name / f"{name if name in ('heatmap', 'saliency') else 'uncertainty'}.json").is_file(), name
    assert_same_files(views_one, out)


def test_shard_map_splits_chunks_by_index_and_shares_every_result(tmp_path):
    distributed.spawn(chunks_worker, 2, str(tmp_path), 5)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["done"] == [0, 2, 4] and ranks[1]["done"] == [1, 3]
    assert ranks[0]["got"] == ranks[1]["got"] == [0, 1, 4, 9, 16]


def test_shard_map_in_one_process_is_a_plain_loop():
    assert distributed.shard_map(lambda i: i + 1, 3) == [1, 2, 3]


def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path):
    distributed.spawn(failing_worker, 2, str(tmp_path))
    assert [(tmp_path / f"rank-{r}.txt").read_text() for r in (0, 1)] == ["chunk 1 is bad"] * 2


def test_torchrun_saliency_equals_one_process(tmp_path):
    torchrun = REPO / ".venv" / "bin" / "torchrun"
    if not torchrun.is_file():
        torchrun = Path(sys.executable).with_name("torchrun")
    args = ["saliency", "digits-cnn", "--images", "digits", "--n", "10", "--batch", "3", "--method",
            "gradient,gradcam", "--sanity", "--steps", "4", "--cascade", "2", "--weights", "random",
            "--device", "cpu", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    plain = subprocess.run([sys.executable, "-m", "nnfeat", *args, "--out", str(one)], env=_env(),
                           capture_output=True, text=True, cwd=REPO)
    assert plain.returncode == 0, plain.stderr
    # `--` after `-m nnfeat`: torchrun's own parser would take `--n` for an abbreviation of its options
    launch = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "nnfeat", "--", *args, "--out", str(two)]
    sharded = subprocess.run(launch, env=_env(), capture_output=True, text=True, cwd=REPO)
    assert sharded.returncode == 0, sharded.stderr
    assert_same_files(one, two, ignore_json_keys=("elapsed_seconds", "timings_seconds", "command"))  # the command names its --out
