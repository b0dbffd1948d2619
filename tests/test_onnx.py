"""ONNX export (``nnfeat graph --onnx``): the file passes ``onnx.checker`` and onnxruntime reproduces the torch
output of the nnfeat wrapper (RGB in [0, 1] in) for cifar10-resnet20 and a torchvision model; an operator without
an ONNX conversion is named in one line; every torchvision family (slow)."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from nnfeat import cli
from nnfeat.errors import NnfeatError
from nnfeat.analysis.onnx_export import export_onnx
from nnfeat.models import load_model
from nnfeat.models.base import Model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def run_onnx(path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return session.run(None, {"images": images.numpy()})[0]


def check_reproduces(model, path, images, rtol=1e-4):
    """onnx.checker passes and onnxruntime gives the wrapper's output within ``rtol`` of its largest value."""
    onnx.checker.check_model(str(path), full_check=True)
    got = run_onnx(path, images)
    with torch.no_grad():
        want = model(images).numpy()
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    assert scale > 0 and float(np.abs(got - want).max()) <= rtol * scale
    return got


@pytest.fixture(scope="module")
def resnet20():
    return load_model("cifar10-resnet20", weights="random", device="cpu")


def test_resnet20_dynamo(tmp_path, resnet20):
    path = export_onnx(resnet20, tmp_path / "r20.onnx")
    images = torch.rand(3, 3, 32, 32)  # batch 3: the batch axis is dynamic
    got = check_reproduces(resnet20, path, images)
    with torch.no_grad():  # what is exported takes [0, 1] RGB: the normalization is inside the ONNX graph
        raw = resnet20.net(images).numpy()
    assert float(np.abs(got - raw).max()) > 1e-2
    graph = onnx.load(str(path)).graph
    assert sum(node.op_type == "Conv" for node in graph.node) == 19 and sum(node.op_type == "Add" for node in
                                                                           graph.node) >= 9


def test_torchvision_dynamo(tmp_path):
    model = load_model("torchvision:squeezenet1_1", weights="random", device="cpu")
    path = export_onnx(model, tmp_path / "sq.onnx", size=(64, 64))
    check_reproduces(model, path, torch.rand(2, 3, 64, 64))


def test_torchscript_exporter(tmp_path, resnet20):
    path = export_onnx(resnet20, tmp_path / "ts.onnx", exporter="torchscript")
    check_reproduces(resnet20, path, torch.rand(2, 3, 32, 32))


class Eig(nn.Module):
    """Eigenvalues have no ONNX conversion: (B, 3, 8, 8) -> (B, 1)."""

    def forward(self, x):
        return torch.linalg.eigvals(x[:, 0, :4, :4]).real.sum(-1, keepdim=True)


def test_unexportable_operator_is_named(tmp_path):
    model = Model(Eig(), name="eig", input_size=8)
    with pytest.raises(NnfeatError) as err:
        export_onnx(model, tmp_path / "eig.onnx")
    text = str(err.value)
    assert "\n" not in text and text.startswith("cannot export eig to ONNX (dynamo exporter)")
    assert "aten::linalg_eig" in text and not (tmp_path / "eig.onnx").exists()
    # the older exporter fails on another operator; an adaptive pool to 7x7 from 2x2 is one of them
    pool = Model(nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.AdaptiveAvgPool2d(7)), name="pool",
                 input_size=8)
    with pytest.raises(NnfeatError, match=r"^cannot export pool to ONNX \(torchscript exporter\): operator "
                                          r"adaptive_avg_pool2d has no ONNX conversion$"):
        export_onnx(pool, tmp_path / "pool.onnx", exporter="torchscript")
    with pytest.raises(NnfeatError, match="unknown ONNX exporter 'x'"):
        export_onnx(pool, tmp_path / "pool.onnx", exporter="x")


def test_cli_onnx(tmp_path, capsys):
    out, file = tmp_path / "g", tmp_path / "m" / "r20.onnx"
    code = cli.main(["graph", "cifar10-resnet20", "--weights", "random", "--device", "cpu", "--onnx", str(file),
                     "--exporter", "torchscript", "--out", str(out)])
    assert code == 0 and file.exists() and f"wrote {file}" in capsys.readouterr().out
    assert json.loads((out / "graph.json").read_text())["onnx"] == str(file)
    onnx.checker.check_model(str(file))


# --------------------------------------------------------------------------------------------------------------
#: As in test_graph.py: the smallest classifier of each torchvision family and its input size.
TORCHVISION_FAMILIES = [
    ("resnet18", 64), ("vgg11", 64), ("densenet121", 64), ("googlenet", 64), ("inception_v3", 96),
    ("mobilenet_v2", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("efficientnet_v2_s", 64),
    ("regnet_x_400mf", 64), ("regnet_y_400mf", 64), ("convnext_tiny", 64), ("vit_b_16", 224), ("swin_t", 64),
    ("swin_v2_t", 64), ("maxvit_t", 224), ("alexnet", 64), ("squeezenet1_1", 64), ("shufflenet_v2_x0_5", 64),
    ("mnasnet0_5", 64), ("resnext50_32x4d", 64), ("wide_resnet50_2", 64),
]

#: What the TorchScript exporter cannot convert at the small test sizes (the dynamo exporter converts all).
TORCHSCRIPT_FAILS = {"vgg11": "adaptive_avg_pool2d", "alexnet": "adaptive_avg_pool2d",
                     "vit_b_16": "aten::_native_multi_head_attention"}


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", TORCHVISION_FAMILIES, ids=[a for a, _ in TORCHVISION_FAMILIES])
def test_torchvision_family_onnx(tmp_path, arch, size):
    """Each family exports and passes the checker, or fails with the one-line error naming the operator.
    Default: the TorchScript exporter (fast); NNFEAT_TEST_ALL_ONNX=1: every family, with the dynamo exporter."""
    everything = os.environ.get("NNFEAT_TEST_ALL_ONNX", "") not in ("", "0")
    exporter = "dynamo" if everything else "torchscript"
    model = load_model(f"torchvision:{arch}", weights="random", device="cpu")
    path = tmp_path / f"{arch}.onnx"
    if exporter == "torchscript" and arch in TORCHSCRIPT_FAILS:
        with pytest.raises(NnfeatError) as err:
            export_onnx(model, path, size=(size, size), exporter=exporter)
        assert f"operator {TORCHSCRIPT_FAILS[arch]} has no ONNX conversion" in str(err.value)
        assert "\n" not in str(err.value) and not path.exists()
        return
    export_onnx(model, path, size=(size, size), exporter=exporter)
    onnx.checker.check_model(str(path))
    if everything:
        check_reproduces(model, path, torch.rand(1, 3, size, size), rtol=1e-3)
