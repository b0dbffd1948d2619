"""``nnfeat graph`` (and ``--onnx``) on token models: a user's nn.TransformerEncoder classifier from a file, and
all-MiniLM-L6-v2 where the ``nnfeat[text]`` extra is installed; image models keep their graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnfeat.analysis.graph_trace import TraceInputs, hook_graph, token_inputs
from nnfeat.cli import main
from nnfeat.errors import NnfeatError
from nnfeat.models.zoo import load_model
from nnfeat.ops.graph import graph

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(40)]

MHA_FILE = '''
import torch
from torch import nn
import nnfeat

WORDS = {words!r}


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(len(WORDS), 16)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
        self.head = nn.Linear(16, 2)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def make():
    return nnfeat.TokenModel(Classifier(), name="mha-text", tokenizer=nnfeat.WordTokenizer(WORDS, wrap=("cls", "sep")),
                             kind="classifier", max_length=32, classes=["a", "b"])
'''

LAYERS = ["embed", "encoder.layers.0.self_attn", "encoder.layers.0.linear1", "encoder.layers.0.norm2",
          "encoder.layers.1.self_attn", "encoder.layers.1.norm2", "head"]


@pytest.fixture()
def mha_file(tmp_path):
    path = tmp_path / "text_model.py"
    path.write_text(MHA_FILE.format(words=WORDS))
    return f"{path}:make"


def test_graph_of_a_users_transformer_names_its_layers(mha_file):
    model = load_model(mha_file)
    result = graph(model, text="w1 w2 w3")
    g = result.graph
    names = [n.layer for n in g.nodes if n.layer]
    for layer in LAYERS:  # the fused fast path is off for the trace, so every sublayer is called and drawn
        assert layer in names, (layer, names)
    assert names.index("embed") < names.index("encoder.layers.0.self_attn") < names.index("head")
    assert g.input_shape == [1, 5]  # [CLS] w1 w2 w3 [SEP]
    assert g.node("encoder.layers.0.self_attn").shape == [1, 5, 16]
    assert g.node("head").shape == [1, 2]
    assert {"encoder.layers.0", "encoder.layers.1"} <= {grp.name for grp in g.groups}
    assert g.total_params == sum(p.numel() for p in model.net.parameters())
    assert result.record()["input_shape"] == [1, 5] and result.command.startswith("nnfeat graph")
    assert "encoder.layers.1.self_attn" in result.page() and result._repr_png_()[:4] == b"\x89PNG"
    assert result.images.shape[:2] == (1, 3)


def test_hooks_see_every_tensor_argument_as_input(mha_file):
    model = load_model(mha_file)
    batch = model.encode(["w1 w2"])
    inputs = token_inputs(model, batch.ids, batch.mask)
    assert isinstance(inputs, TraceInputs) and inputs.args == (batch.ids,)
    with torch.no_grad():
        nodes, edges = hook_graph(model.net, inputs)
    assert ("input", "embed") in edges and nodes[0].shape == [1, 4]


def test_cli_graph_and_onnx_with_int64_tokens(mha_file, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out, file = tmp_path / "out", tmp_path / "m.onnx"
    assert main(["graph", mha_file, "--text", "w1 w2 w3", "--onnx", str(file), "--out", str(out)]) == 0
    assert "ONNX: inputs ids (B, T) int64" in capsys.readouterr().out
    record = json.loads((out / "graph.json").read_text())
    assert record["onnx"] == str(file) and record["input_shape"] == [1, 5]
    assert "--text" in record["command"] and record["input"]["modality"] == "tokens"
    assert {"encoder.layers.0.self_attn", "head"} <= {n["layer"] for n in record["nodes"]}
    onnx.checker.check_model(onnx.load(str(file)))
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.name == "ids" and given.type == "tensor(int64)"
    model = load_model(mha_file)
    for texts in (["w1 w2 w3", "w4 w5 w6"], ["w7 w8 w9 w10 w11 w12 w13"]):  # other batch sizes and lengths
        batch = model.encode(texts)
        got = session.run(None, {"ids": batch.ids.numpy()})[0]
        with torch.no_grad():
            want = model(batch.ids).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_torchscript_onnx_is_fixed_at_the_texts_shape(mha_file, tmp_path, capsys):
    """torchscript's tracer records nn.MultiheadAttention's reshapes as constants: its file states fixed axes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    file = tmp_path / "m.onnx"
    assert main(["graph", mha_file, "--text", "w1 w2", "--onnx", str(file), "--exporter", "torchscript", "--quiet",
                 "--out", str(tmp_path / "o")]) == 0
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 4]
    model = load_model(mha_file)
    batch = model.encode(["w5 w9"])
    with torch.no_grad():
        want = model(batch.ids).numpy()
    assert np.abs(session.run(None, {"ids": batch.ids.numpy()})[0] - want).max() < 1e-4


@pytest.mark.parametrize("argv, needle", [
    (["--text", ""], "--text number 1 is empty"),
    (["--text", "a", "--text", "b"], "graph traces one text; got 2"),
    (["--size", "32"], "--size is for image models"),
    (["--text-file", "/no/such/file.txt"], "not found"),
])
def test_bad_text_input_is_one_line_exit_2_nothing_written(argv, needle, mha_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["graph", mha_file, *argv, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_a_text_over_the_maximum_is_truncated_with_a_note(mha_file, tmp_path, capsys):
    assert main(["graph", mha_file, "--text", "w1 " * 40, "--out", str(tmp_path / "o")]) == 0
    assert "longer than the model's maximum of 32 tokens: truncated" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "graph.json").read_text())["input_shape"] == [1, 32]


def test_bad_text_file_is_one_line(mha_file, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    out = tmp_path / "out"
    assert main(["graph", mha_file, "--text-file", str(bad), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not UTF-8" in err[0] and not out.exists()


def test_image_models_refuse_text(tmp_path, capsys):
    assert main(["graph", "digits-cnn", "--text", "hello", "--weights", "random", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "takes images, not text" in capsys.readouterr().err
    with pytest.raises(NnfeatError, match="takes images, not text"):
        graph(load_model("digits-cnn", weights="random"), text="hello")


def test_same_command_same_bytes(mha_file, tmp_path):
    model = load_model(mha_file)
    for run in ("a", "b"):
        graph(model, text="w1 w2").save(tmp_path / run, timing=False)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


# -- all-MiniLM-L6-v2 (the nnfeat[text] extra) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    try:
        return load_model("minilm")
    except NnfeatError as err:
        pytest.skip(str(err))


def test_minilm_graph(minilm):
    g = graph(minilm, text="The king spoke.").graph
    names = [n.layer for n in g.nodes if n.layer]
    assert g.input_shape == [1, 6]  # [CLS] the king spoke . [SEP]
    assert names[0] == "embeddings.word_embeddings"
    for i in range(6):
        assert f"encoder.layer.{i}.attention.self.query" in names
    assert g.node("encoder.layer.5.output.LayerNorm").shape == [1, 6, 384]
    assert g.total_params == sum(p.numel() for p in minilm.net.parameters())


@pytest.mark.slow
def test_minilm_onnx_matches_torch(minilm, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from nnfeat.analysis.onnx_export import export_onnx

    file = export_onnx(minilm, tmp_path / "minilm.onnx", text="The king spoke.")
    onnx.checker.check_model(onnx.load(str(file)))
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("ids", "tensor(int64)"), ("mask", "tensor(int64)")]
    batch = minilm.encode(["a much longer sentence than the example was", "short"])
    got = session.run(None, {"ids": batch.ids.numpy(), "mask": batch.mask.long().numpy()})[0]
    with torch.no_grad():
        want = minilm(batch.ids, batch.mask).numpy()
    assert np.abs(got - want)[batch.mask.numpy()].max() < 1e-4
