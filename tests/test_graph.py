"""``nnfeat graph``: the graph as data (known counts, shapes, FLOPs and names of cifar10-resnet20; hand-built nets
for shared modules, concat and the hook fallback), the layout, the page in headless Chromium, the CLI, and every
torchvision classification family (slow)."""

import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from nnfeat import cli
from nnfeat.analysis.graph import collapse, layered_layout, model_graph, node_anchor
from nnfeat.hooks import ActivationCapture
from nnfeat.models import load_model
from nnfeat.models.base import Model
from nnfeat.ops.graph import graph, initial_collapsed

torch.manual_seed(0)


@pytest.fixture(scope="module")
def resnet20():
    return load_model("cifar10-resnet20", weights="random", device="cpu")


@pytest.fixture(scope="module")
def r20_graph(resnet20):
    return model_graph(resnet20)


def conv_flops(conv: nn.Conv2d, out_hw: int) -> int:
    """2 x multiply-adds of a conv (no bias): 2 * C_out * C_in/groups * k_h * k_w * H_out * W_out."""
    kh, kw = conv.kernel_size
    return 2 * conv.out_channels * conv.in_channels // conv.groups * kh * kw * out_hw * out_hw


def test_resnet20_known_graph(resnet20, r20_graph):
    g = r20_graph
    assert g.method == "fx"
    # input + conv1/bn1/relu + 9 blocks x (conv1 bn1 relu1 conv2 bn2 shortcut add relu2) + avgpool flatten linear + output
    assert len(g.nodes) == 1 + 3 + 9 * 8 + 3 + 1 == 80
    adds = g.residual_additions()
    assert len(adds) == 9 and all(n.type == "add" and n.kind == "op" for n in adds)
    for add in adds:  # each sums the block's bn2 and its shortcut; the shortcut edge is the residual one
        block = add.group
        sources = {e.source: e.kind for e in g.edges if e.target == add.id}
        assert sources == {f"{block}.bn2": "data", f"{block}.shortcut": "residual"}
    shapes = {n.id: n.shape for n in g.nodes}
    assert shapes["input"] == [1, 3, 32, 32] and shapes["layer1.2.relu2"] == [1, 16, 32, 32]
    assert shapes["layer2.0.conv1"] == [1, 32, 16, 16] and shapes["layer2.0.shortcut"] == [1, 32, 16, 16]
    assert shapes["layer3.2.relu2"] == [1, 64, 8, 8] and shapes["op:flatten"] == [1, 64]
    assert shapes["linear"] == shapes["output"] == [1, 10]
    # every module node's shape is what a forward hook sees (an independent path: nnfeat layers)
    hooked = {name: list(shape) for name, shape, _ in resnet20.describe_layers() if shape is not None}
    for n in g.nodes:
        if n.kind == "module":
            assert [1, *hooked[n.layer]] == n.shape, n.layer
    # parameters: the nodes add up to the network's; FLOPs of convolutions by formula
    assert sum(n.params for n in g.nodes) == g.total_params == sum(p.numel() for p in resnet20.net.parameters())
    assert g.unused == []
    for n in g.nodes:
        if n.type == "Conv2d":
            assert n.flops == conv_flops(resnet20.module(n.layer), n.shape[-1]), n.layer
    assert g.node("linear").flops == 2 * 64 * 10 and g.node("layer1.0.relu1").flops == 0
    # blocks nest by dotted names, totals add up
    groups = {gr.name: gr for gr in g.groups}
    assert groups["layer1"].groups == ["layer1.0", "layer1.1", "layer1.2"] and groups["layer1.0"].parent == "layer1"
    assert "layer1.0.conv1" in groups["layer1.0"].nodes and adds[0].id in groups["layer1.0"].nodes
    assert groups["layer2"].shape == [1, 32, 16, 16]
    assert groups["layer3"].params == sum(p.numel() for p in resnet20.net.layer3.parameters())
    assert sum(groups[f"layer{i}"].flops for i in (1, 2, 3)) + sum(
        n.flops for n in g.nodes if not n.group) == g.total_flops


def test_every_node_name_is_a_layer(resnet20, r20_graph):
    """Each module node and block name passes the checks render and every unit-taking command apply."""
    names = r20_graph.layer_names()
    assert len(names) == 80 - 1 - 9 - 1 + 12  # module nodes + output, not input / add / flatten; + 12 blocks
    for name in names:
        parsed, channels = resnet20.units(f"{name}:0")
        assert parsed.layer == name and channels == [0]


def test_render_a_unit_named_by_the_graph(tmp_path, r20_graph):
    name = [n.layer for n in r20_graph.nodes if n.layer and n.type == "ReLU"][4]  # read off the graph
    out = tmp_path / "render"
    code = cli.main(["render", "cifar10-resnet20", f"{name}:3", "--weights", "random", "--steps", "2", "--quiet",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0 and (out / "render.png").exists()
    record = json.loads((out / "render.json").read_text())
    assert name in json.dumps(record)


class TwoCalls(nn.Module):
    """One ReLU called twice, a concat and a plain-function add: (B, 3, 8, 8) -> (B, 8, 8, 8)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        a = self.relu(self.a(x))
        b = self.relu(self.b(x))
        return torch.cat([a, b], 1) + 1.0


def test_shared_module_and_concat():
    model = Model(TwoCalls(), name="two", input_size=8)
    g = model_graph(model)
    ids = [n.id for n in g.nodes]
    assert ids == ["input", "a", "relu#0", "b", "relu#1", "op:cat", "op:add", "output"]
    assert [e.kind for e in g.edges if e.target == "op:cat"] == ["concat", "concat"]
    assert not g.residual_additions()  # adding a constant is not a residual connection
    assert g.node("op:cat").shape == [1, 8, 8, 8]
    with ActivationCapture(model, ["relu#1"]) as capture:
        assert list(capture(torch.rand(1, 3, 8, 8))["relu#1"].shape) == g.node("relu#1").shape == [1, 4, 8, 8]
    assert g.node("relu#1").params == 0 and g.node("a").params == 4 * 3 * 9 + 4


class Branchy(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it): (B, 3, 8, 8) -> (B, 5)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        y = self.body(x)
        if y.mean() > -1:  # always true, but only known at run time
            y = y * 2
        return self.head(self.pool(y).flatten(1))


def test_hook_fallback():
    model = Model(Branchy(), name="branchy", input_size=8)
    g = model_graph(model)
    assert g.method == "hooks"
    assert [n.id for n in g.nodes] == ["input", "body.0", "body.1", "pool", "head", "output"]
    assert [(e.source, e.target) for e in g.edges] == [("input", "body.0"), ("body.0", "body.1"),
                                                      ("body.1", "pool"), ("pool", "head"), ("head", "output")]
    assert g.node("pool").shape == [1, 6, 1, 1] and g.node("output").shape == [1, 5]
    assert g.node("body.0").flops == conv_flops(model.net.body[0], 8) + 0 * 1  # the bias adds are not counted
    assert g.node("head").flops == 2 * 6 * 5
    assert [gr.name for gr in g.groups] == ["body"]
    with pytest.raises(Exception, match="torch.fx cannot trace branchy"):
        model_graph(model, method="fx")


def test_anchor_is_stable_and_one_to_one(r20_graph):
    assert node_anchor("layer1.0.conv1") == "node-layer1.0.conv1"
    assert node_anchor("relu#1") == "node-relu-231" and node_anchor("op:add_3") == "node-op-3aadd_3"
    names = [n.id for n in r20_graph.nodes] + [gr.name for gr in r20_graph.groups] + ["a-b", "a-2db", "a#b"]
    anchors = [node_anchor(n) for n in names]
    assert len(set(anchors)) == len(anchors) and all(re.fullmatch(r"[A-Za-z0-9_.\-]+", a) for a in anchors)


def test_layout_diamond_and_long_edge():
    ids = ["s", "l", "r", "m", "t"]
    edges = [("s", "l"), ("s", "r"), ("l", "m"), ("r", "m"), ("m", "t"), ("s", "t")]
    pos, paths = layered_layout(ids, edges)
    assert {v: r for v, (r, _) in pos.items()} == {"s": 0, "l": 1, "r": 1, "m": 2, "t": 3}
    assert len({p for p in pos.values()}) == 5 and pos["l"][1] != pos["r"][1]
    assert [r for r, _ in paths[-1]] == [0, 1, 2, 3]  # the long edge passes one dummy point per rank


def test_collapse(r20_graph):
    items, edges = collapse(r20_graph, 0)
    assert [i["id"] for i in items] == ["input", "conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool",
                                        "op:flatten", "linear", "output"]
    assert ("layer1", "layer2", "data") in edges and len(edges) == 10
    items, _ = collapse(r20_graph, 1)
    assert len(items) == 8 + 9 and items[4]["block"] and items[4]["shape"] == [1, 16, 32, 32]
    assert initial_collapsed(r20_graph) == []
    assert initial_collapsed(r20_graph, limit=20) == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    assert initial_collapsed(r20_graph, limit=12) == ["layer1", "layer2", "layer3"]


def test_result_files(tmp_path, resnet20):
    result = graph(resnet20)
    path = result.save(tmp_path / "g")
    record = json.loads(path.read_text())
    assert record["kind"] == "graph" and record["method"] == "fx" and len(record["nodes"]) == 80
    assert record["residual_additions"] == 9 and record["total_params"] == 269722
    assert record["nodes"][1]["anchor"] == "node-conv1"
    assert set(record["files"]) == {"graph.png", "graph.html"} and (tmp_path / "g" / "graph.png").exists()
    page = (tmp_path / "g" / "graph.html").read_text()
    assert "script-src 'sha256-" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert result.images.shape[:2] == (1, 3) and float(result.images.min()) >= 0


def test_cli(tmp_path, capsys):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "nnfeat", "graph", "cifar10-resnet20", "--weights", "random", "--device", "cpu",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "graph.json").read_text())
    assert record["command"].startswith("nnfeat graph cifar10-resnet20") and len(record["nodes"]) == 80
    capsys.readouterr()
    for bad in (["nosuchmodel"], ["cifar10-resnet20", "--size", "1"], ["cifar10-resnet20", "--onnx", str(tmp_path)]):
        code = cli.main(["graph", *bad, "--weights", "random", "--out", str(tmp_path / "b")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists(), err


# --------------------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_page_in_chromium(tmp_path, resnet20):
    try:
        from tests.browser import file_url, headless_chromium
    except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
        from browser import file_url, headless_chromium

    graph(resnet20).save(tmp_path)
    with headless_chromium() as driver:
        driver.get(file_url(tmp_path / "graph.html"))
        api = "return window.nnfeatGraph"
        assert driver.execute_script(api + ".ready")
        assert driver.find_element("id", "summary").get_attribute("data-nodes") == "80"
        assert driver.find_element("id", "summary").text.startswith("80 nodes")
        assert len(driver.find_elements("css selector", "g.node")) == 80
        assert driver.find_element("id", "visible-count").text == "showing 80 of 80 nodes"
        assert len(driver.find_elements("css selector", "path.edge.residual")) == 9
        # collapse layer1 by its header: its 24 nodes become one block node; expand it again by clicking it
        driver.find_element("css selector", "#node-layer1 > text").click()
        assert len(driver.find_elements("css selector", "g.node")) == 80 - 24 + 1
        assert driver.find_element("id", "node-layer1").get_attribute("class") == "node block"
        driver.find_element("id", "node-layer1").click()
        assert len(driver.find_elements("css selector", "g.node")) == 80
        # a node's panel and tooltip
        driver.find_element("id", "node-layer1.0.conv1").click()
        text = {k: driver.find_element("id", f"panel-{k}").text for k in ("name", "type", "shape", "params", "flops")}
        assert text == {"name": "layer1.0.conv1", "type": "Conv2d", "shape": "1\u00d716\u00d732\u00d732",
                        "params": "2,304", "flops": "4,718,592 (4.72 M)"}
        assert driver.find_element("id", "panel-layer-name").text == "layer1.0.conv1"
        tip = driver.find_element("css selector", "#node-layer2\\.0\\.conv1 > title").get_attribute("textContent")
        assert "layer2.0.conv1" in tip and "Conv2d" in tip and "4,608" in tip and "2.36 M" in tip
        # collapse everything, then follow an anchor link into a collapsed block
        driver.find_element("id", "collapse-all").click()
        assert driver.execute_script(api + ".visibleCount()") == 80 - 72 + 3
        driver.execute_script("location.hash = 'node-layer3.1.bn2'")
        assert driver.execute_script("return document.querySelector('.node.selected').dataset.name") == "layer3.1.bn2"
        assert driver.find_element("id", "panel-name").text == "layer3.1.bn2"
        # wheel zoom changes the view
        before = driver.find_element("id", "viewport").get_attribute("transform")
        driver.execute_script("document.getElementById('graph').dispatchEvent(new WheelEvent('wheel', "
                              "{deltaY: -200, clientX: 300, clientY: 300, bubbles: true, cancelable: true}))")
        assert driver.find_element("id", "viewport").get_attribute("transform") != before
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors


# --------------------------------------------------------------------------------------------------------------
#: The smallest torchvision classifier of each family, and the input size used (small where the model allows).
TORCHVISION_FAMILIES = [
    ("resnet18", 64), ("vgg11", 64), ("densenet121", 64), ("googlenet", 64), ("inception_v3", 96),
    ("mobilenet_v2", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("efficientnet_v2_s", 64),
    ("regnet_x_400mf", 64), ("regnet_y_400mf", 64), ("convnext_tiny", 64), ("vit_b_16", 224), ("swin_t", 64),
    ("swin_v2_t", 64), ("maxvit_t", 224), ("alexnet", 64), ("squeezenet1_1", 64), ("shufflenet_v2_x0_5", 64),
    ("mnasnet0_5", 64), ("resnext50_32x4d", 64), ("wide_resnet50_2", 64),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", TORCHVISION_FAMILIES, ids=[a for a, _ in TORCHVISION_FAMILIES])
def test_torchvision_family_graph(arch, size):
    model = load_model(f"torchvision:{arch}", weights="random", device="cpu")
    result = graph(model, size=(size, size))
    g = result.graph
    assert g.method == "fx" and g.node("output").shape == [1, 1000] and g.node("input").shape == [1, 3, size, size]
    modules = dict(model.net.named_modules())
    unused = sum(p.numel() for m in g.unused for p in modules[m].parameters())
    assert sum(n.params for n in g.nodes) + unused == g.total_params == sum(p.numel() for p in model.net.parameters())
    assert g.total_flops > 0
    if arch in ("googlenet", "inception_v3"):  # auxiliary heads: not called in eval mode
        assert {"aux1.fc2", "AuxLogits.fc"} & set(g.unused)
    names = set(model.layer_names())
    for n in g.nodes:
        if n.kind == "module":
            assert n.layer.split("#")[0] in names and n.shape is not None
    html_text = result.page()
    assert html_text.count('"kind":"module"') == sum(n.kind == "module" for n in g.nodes)
    assert result.sheet().shape[2] == 3
