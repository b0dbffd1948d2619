"""``nnfeat heatmap`` on token models: a hand-built network whose channel 5 fires only on a planted token (known
answer: it ranks first and its strip lights only that token's column), Hugging Face outputs, files, JSON, bad
input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnfeat.cli import main
from nnfeat.errors import NnfeatError
from nnfeat.models.zoo import load_model
from nnfeat.ops.token_heatmap import capture_token_layer, rank_channels, token_heatmap
from nnfeat.views.token_strip import strip_colours

PLANTED_FILE = '''
import torch
from torch import nn
import nnfeat

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(20)] + ["zap"]


class Pair(nn.Module):
    """Returns a tuple, as Hugging Face layers do: the token vectors first."""

    def forward(self, x):
        return x, x.sum()


class Planted(nn.Module):
    """Channel c of every token is 0.01 * (c + 1), except channel 5: 0 everywhere, 4 on the token 'zap'."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), 16)
        with torch.no_grad():
            self.embed.weight.copy_(0.01 * torch.arange(1, 17).float().expand(len(WORDS), 16))
            self.embed.weight[:, 5] = 0
            self.embed.weight[WORDS.index("zap"), 5] = 4.0
        self.features = nn.Identity()
        self.block = Pair()
        self.head = nn.Linear(16, 2)

    def forward(self, ids):
        return self.head(self.block(self.features(self.embed(ids)))[0].mean(1))


def make():
    return nnfeat.TokenModel(Planted(), name="planted", tokenizer=nnfeat.WordTokenizer(WORDS, wrap=("cls", "sep")),
                             kind="classifier", max_length=16, classes=["a", "b"])
'''

TEXTS = ["w1 zap w2", "w3 w4 w5 w6 zap w7 w8", "w9 w10"]


@pytest.fixture()
def planted_file(tmp_path):
    path = tmp_path / "planted.py"
    path.write_text(PLANTED_FILE)
    return f"{path}:make"


@pytest.fixture()
def planted(planted_file):
    return load_model(planted_file)


@pytest.mark.parametrize("layer", ["features", "block"])
def test_the_planted_channel_ranks_first_and_lights_only_its_token(planted, layer):
    result = token_heatmap(planted, layer, TEXTS)
    assert result.tokens[0] == ["[CLS]", "w1", "zap", "w2", "[SEP]"]
    for i, at in ((0, 2), (1, 5)):
        assert result.channels[i][0] == 5 and len(result.channels[i]) == 8
        row = result.values[i][0]
        assert row.shape == (len(result.tokens[i]),)  # padded tokens are excluded
        assert float(row[at]) == 4.0 and int((row != 0).sum()) == 1
        assert result.strength[i][0] == pytest.approx(4.0 / len(result.tokens[i]))
        colours = strip_colours(result.values[i][:1], result.scales[i])[0]  # (T, 3)
        top = (result.scales[i].table[-1] * 255).round().to(torch.uint8).numpy()
        lit = [t for t in range(len(row)) if (colours[t] == top).all()]
        assert lit == [at]
    assert 5 not in result.channels[2]  # no 'zap': channel 5 is 0 there, the weakest
    assert result.channels[2][:3] == [15, 14, 13]
    assert not result.scales[0].signed and result.scales[0].high == 4.0 and result.scales[0].low == 0.0


def test_the_strip_draws_the_planted_cell(planted):
    result = token_heatmap(planted, "features", ["w1 zap w2"], top=2)
    strip = result.strip(0)
    top = (result.scales[0].table[-1] * 255).round().to(torch.uint8).numpy()
    hit = np.argwhere((strip == top).all(-1))  # pixels of the scale's top colour
    assert len(hit) > 0
    columns = np.unique(hit[:, 1])
    assert columns.max() - columns.min() < 60  # one token's cell, not the whole row
    assert result.channels == [[5, 15]]


def test_given_channels_sum_and_norm(planted):
    given = token_heatmap(planted, "features:5,2", TEXTS)
    assert given.channels == [[5, 2]] * 3 and given.labels[0] == ["5", "2"]
    assert torch.allclose(given.values[1][1], torch.full((9,), 0.03))
    total = token_heatmap(planted, "features", TEXTS[:1], reduce="sum")
    assert total.labels == [["sum"]] and total.values[0].shape == (1, 5)
    assert torch.allclose(total.values[0][0], torch.tensor([1.30, 1.30, 5.30, 1.30, 1.30]), atol=1e-5)
    own = token_heatmap(planted, "features:5", TEXTS[:2], scale="per-map")
    assert [(s.low, s.high) for s in own.scales] == [(0.0, 4.0), (0.0, 4.0)]
    own = token_heatmap(planted, "features:4", TEXTS, scale="per-map")  # constant rows: widened, not divided by 0
    assert own.scales[0].high - own.scales[0].low == pytest.approx(1.0) and not own.scales[0].signed
    norm = token_heatmap(planted, "features:5", TEXTS[:1], reduce="norm")
    assert torch.allclose(norm.values[0][0], torch.tensor([0.0, 0.0, 4.0, 0.0, 0.0]))


def test_one_pass_per_length_matches_each_text_alone(planted):
    batch = planted.encode(TEXTS)
    act = capture_token_layer(planted, "features", batch)
    assert act.shape == (3, 9, 16)
    alone = capture_token_layer(planted, "features", planted.encode(TEXTS[2:]))
    assert torch.equal(act[2, :4], alone[0]) and float(act[2, 4:].abs().sum()) == 0
    order, strength = rank_channels(act, batch.mask, 3)
    assert order[0].tolist() == [5, 15, 14] and strength.shape == (3, 3)
    whole, single = token_heatmap(planted, "features", TEXTS), token_heatmap(planted, "features", TEXTS, batch_size=1)
    assert whole.channels == single.channels and all(torch.equal(a, b) for a, b in zip(whole.values, single.values))


def test_cli_files_json_and_notebook(planted_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["heatmap", planted_file, "features", "--text", TEXTS[0], "--text", TEXTS[1], "--top", "3",
                 "--out", str(out)]) == 0
    record = json.loads((out / "heatmap.json").read_text())
    assert record["channels"][0] == [5, 15, 14] and record["tokens"][1][5] == "zap"
    assert record["input"]["modality"] == "tokens" and "--text" in record["command"]
    assert record["files"] == ["heatmap.png", "strip-0.png", "strip-1.png", "heatmap.npz"]
    arrays = np.load(out / "heatmap.npz")
    assert arrays["text1"].shape == (3, 9) and arrays["text1"][0, 5] == 4.0
    result = token_heatmap(load_model(planted_file), "features", TEXTS)
    assert result._repr_png_()[:4] == b"\x89PNG" and "<img" in result._repr_html_()
    assert result.images.shape[:2] == (1, 3) and "heatmap" in result.command


def test_same_command_same_bytes(planted, tmp_path):
    for run in ("a", "b"):
        token_heatmap(planted, "features", TEXTS).save(tmp_path / run, timing=False)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("argv, needle", [
    (["features", "--text", ""], "--text number 1 is empty"),
    (["features"], "is a token model: give it text with --text"),
    (["features", "--images", "digits"], "is a token model: give it text"),
    (["features", "--text", "w1", "--target-text", "x"], "--target-text is for encoder-decoder (seq2seq) models"),
    (["nope", "--text", "w1"], "unknown layer 'nope' of planted"),
    (["head", "--text", "w1"], "not one vector per token"),
    (["features:99", "--text", "w1"], "channel 99 out of range"),
    (["features:5@1", "--text", "w1"], "without @POSITION"),
    (["features", "--text", "w1", "--batch", "0"], "--batch"),
    (["features", "--text-file", "/no/such/file.txt"], "not found"),
])
def test_bad_text_input_is_one_line_exit_2_nothing_written(argv, needle, planted_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["heatmap", planted_file, *argv, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_a_text_file_that_is_not_utf8(planted_file, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["heatmap", planted_file, "features", "--text-file", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not UTF-8" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_image_models_keep_images(tmp_path, capsys):
    assert main(["heatmap", "digits-cnn", "conv1", "--text", "hello", "--weights", "random", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "takes images, not text" in capsys.readouterr().err
    assert main(["heatmap", "digits-cnn", "conv1", "--weights", "random", "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "heatmap needs --images SRC" in capsys.readouterr().err


# -- all-MiniLM-L6-v2 (the nnfeat[text] extra) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    try:
        return load_model("minilm")
    except NnfeatError as err:
        pytest.skip(str(err))


def test_minilm_layer_strips_equal_transformers_hidden_states(minilm):
    texts = ["The king spoke to the queen.", "An apple"]
    result = token_heatmap(minilm, "encoder.layer.2", texts, top=4)
    batch = minilm.encode(texts)
    with torch.no_grad():
        hidden = minilm.net(input_ids=batch.ids, attention_mask=batch.mask.long(),
                            output_hidden_states=True).hidden_states[3]  # after layer 2
    for i in range(2):
        n = int(batch.mask[i].sum())
        want = hidden[i, :n]
        strongest = want.abs().mean(0).topk(4).indices.tolist()
        assert result.channels[i] == strongest
        assert torch.allclose(result.values[i], want[:, strongest].T, atol=1e-5)
    assert result.tokens[1] == ["[CLS]", "an", "apple", "[SEP]"] and result.scales[0].signed


# -- an encoder-decoder network: which side a layer's vectors belong to -------------------------------------------
class TinySeq2seq(torch.nn.Module):
    """forward(src, tgt, src_mask): source and decoder tokens embedded on their own; the logits add the source's
    mean vector to each decoder vector. Channel 3 of the decoder embedding fires only on the character 'z'."""

    def __init__(self, vocab: int):
        super().__init__()
        self.src_embed = torch.nn.Embedding(vocab, 6)
        self.tgt_embed = torch.nn.Embedding(vocab, 6)
        with torch.no_grad():
            self.src_embed.weight.fill_(0.1)
            self.tgt_embed.weight.fill_(0.1)
            self.tgt_embed.weight[:, 3] = 0
            self.tgt_embed.weight[4 + 25, 3] = 2.0  # 'z': the 26th letter after 4 specials
        self.out = torch.nn.Linear(6, vocab)

    def forward(self, src, tgt, src_mask=None):
        m = (src_mask if src_mask is not None else torch.ones_like(src, dtype=torch.bool)).float()[..., None]
        memory = (self.src_embed(src) * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return self.out(self.tgt_embed(tgt) + memory)


@pytest.fixture()
def seq2seq():
    from nnfeat.models.text import TokenModel
    from nnfeat.models.tokenizers import CharTokenizer

    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz")
    return TokenModel(TinySeq2seq(len(tok.vocab)), name="tiny-seq2seq", tokenizer=tok, target_tokenizer=tok,
                      kind="seq2seq", max_length=16)


@pytest.mark.parametrize("target", ["xzy", "abcde"])  # "abcde": as long as the source, told apart by one more token
def test_a_decoder_layer_is_drawn_under_the_decoder_tokens(seq2seq, target):
    result = token_heatmap(seq2seq, "tgt_embed", ["abcde"], target_texts=[target], top=2)
    assert result.side == "decoder" and result.tokens[0] == ["<bos>", *target, "<eos>"]
    assert result.decoder_texts == [target]
    if "z" in target:
        assert result.channels[0][0] == 3 and result.values[0][0].tolist() == [0, 0, 2.0, 0, 0]
    source = token_heatmap(seq2seq, "src_embed", ["abcde"], target_texts=[target], top=2)
    assert source.side == "input" and source.tokens[0] == ["<bos>", "a", "b", "c", "d", "e", "<eos>"]
    assert "--target-text" in source.command


def test_a_text_over_the_maximum_is_truncated_with_a_note(planted_file, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["heatmap", planted_file, "features", "--text", "w1 " * 20 + "zap", "--text", "zap",
                 "--out", str(out)]) == 0
    assert "1 of 2 texts are longer than the model's maximum of 16 tokens: truncated" in capsys.readouterr().out
    record = json.loads((out / "heatmap.json").read_text())
    assert len(record["tokens"][0]) == 16 and record["tokens"][0][-1] == "[SEP]" and record["notes"]
