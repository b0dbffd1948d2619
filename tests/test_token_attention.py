"""``nnfeat attention`` on token models: capture from probes, nn.MultiheadAttention and Hugging Face models; head
scores with known answers; files, JSON and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nnfeat.analysis.token_capture import capture_token_attention
from nnfeat.cli import main
from nnfeat.models.text import TokenModel
from nnfeat.models.text_blocks import AttentionProbs
from nnfeat.models.tokenizers import WordTokenizer
from nnfeat.ops.token_attention import token_attention

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(40)]


class FixedOffset(nn.Module):
    """A hand-built attention layer: head 0 attends to the previous token (the first token to itself), head 1
    to the token itself. Its weights pass through an AttentionProbs probe, as nnfeat's own models' do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), 4)
        self.attn = nn.Module()
        self.attn.probs = AttentionProbs()

    def forward(self, ids, mask=None):
        b, t = ids.shape
        w = torch.zeros(b, 2, t, t)
        rows = torch.arange(t)
        w[:, 0, rows, (rows - 1).clamp_min(0)] = 1
        w[:, 1, rows, rows] = 1
        w = self.attn.probs(w)
        return w.sum(1) @ self.embed(ids)


def offset_model() -> TokenModel:
    return TokenModel(FixedOffset(), name="fixed-offset", tokenizer=WordTokenizer(WORDS, wrap=("cls", "sep")),
                      kind="encoder", max_length=64, call="ids_mask", embedding="embed")


def test_a_fixed_offset_layer_scores_one_as_previous_token_head():
    result = token_attention(offset_model(), ["w1 w2 w3 w4 w5", "w6 w7 w8"])
    scores = result.scores["attn.probs"]
    assert scores["previous_token"] == [1.0, 0.0] and scores["diagonal"][1] == 1.0
    assert scores["diagonal"][0] == round(2 / 12, 4)  # only each text's first query (of 7 + 5) looks at itself
    assert scores["induction"][0] < 0.01 and scores["duplicate"][0] < 0.01  # neither looks back a period
    assert result.tokens[1] == ["[CLS]", "w6", "w7", "w8", "[SEP]"]


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


@pytest.fixture()
def mha_file(tmp_path):
    path = tmp_path / "text_model.py"
    path.write_text(MHA_FILE.format(words=WORDS))
    return f"{path}:make"


def test_a_users_transformer_encoder_from_a_file(mha_file, tmp_path, capsys):
    """nn.TransformerEncoder's fused inference path forms no weights; nnfeat turns it off for the capture, and
    texts of different lengths (the network takes no mask) run at their own lengths."""
    out = tmp_path / "out"
    assert main(["attention", mha_file, "--text", "w1 w2 w3", "--text", "w4 w5 w6 w7 w8 w9", "--quiet", "--save-weights",
                 "--out", str(out)]) == 0
    record = json.loads((out / "attention.json").read_text())
    assert [layer["name"] for layer in record["layers"]] == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    weights = torch.from_numpy(__import__("numpy").load(out / "attention.npz")["encoder.layers.0.self_attn"])
    assert weights.shape == (2, 2, 8, 8)
    assert torch.allclose(weights[0, :, :5, :5].sum(-1), torch.ones(2, 5), atol=1e-5)  # rows over its 5 tokens
    assert float(weights[0, :, :, 5:].abs().sum()) == 0 and float(weights[0, :, 5:].abs().sum()) == 0
    for name in ("model-view-0.png", "model-view-1.html", "model-view-1.svg", "attention.png"):
        assert (out / name).stat().st_size > 0


def test_same_command_same_bytes(tmp_path):
    model = offset_model()
    for run in ("a", "b"):
        token_attention(model, ["w1 w2 w3", "w4 w5"]).save(tmp_path / run, timing=False)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("argv, needle", [
    (["--images", "digits"], "is a token model: give it text"),
    ([], "is a token model: give it text with --text"),
    (["--text", "w1", "--text", " "], "--text number 2 is empty"),
    (["--text", "w1", "--target-text", "x"], "--target-text is for encoder-decoder (seq2seq) models"),
    (["--text", "w1", "--layer", "nope"], "'nope' is not an attention layer of mha-text"),
])
def test_bad_text_input_is_one_line_exit_2_nothing_written(argv, needle, mha_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["attention", mha_file, *argv, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_an_image_model_refuses_text(tmp_path, capsys):
    assert main(["attention", "digits-vit", "--text", "hello", "--weights", "random", "--out",
                 str(tmp_path / "o")]) == 2
    assert "takes images, not text" in capsys.readouterr().err


def test_probe_capture_removes_its_hooks():
    model = offset_model()
    batch = model.encode(["w1 w2"])
    capture_token_attention(model, batch)
    assert not model.net.attn.probs._forward_hooks


# -- the known answers, through nnfeat attention's own scores ------------------------------------------
def _best(result, score: str) -> float:
    return max(max(row.get(score, [0.0])) for row in result.scores.values())


def test_dates_seq2seq_best_cross_head_aligns_and_a_random_copy_does_not():
    from nnfeat.models import load_model

    trained = token_attention(load_model("dates-seq2seq", device="cpu"), ["25th of June, 2009", "6/25/2009"])
    assert trained.generated == ["2009-06-25", "2009-06-25"]
    assert _best(trained, "alignment") >= 0.90  # 200 held-out dates; each output character's field span
    layer, head = trained.best_cross_head()
    assert trained.scores[layer]["alignment"][head] == _best(trained, "alignment")
    random = token_attention(load_model("dates-seq2seq", weights="random", device="cpu"), ["25th of June, 2009"])
    assert _best(random, "alignment") < 0.6


def test_tiny_lm_induction_flags_a_head_and_a_random_copy_has_none():
    from nnfeat.models import load_model

    text = ["the cat eat the fish and the cat eat the fish"]
    trained = token_attention(load_model("tiny-lm", device="cpu"), text)
    random = token_attention(load_model("tiny-lm", weights="random", device="cpu"), text)
    assert _best(trained, "induction") >= 0.5 and _best(random, "induction") < 0.2
    assert _best(trained, "previous_token") >= 0.5
    assert max(trained.scores["blocks.1.attn.probs"]["induction"]) == _best(trained, "induction")  # layer 1, as
    # an induction head needs a previous-token head below it


def test_minilm_attention_equals_transformers_own():
    pytest.importorskip("transformers")
    import transformers
    from nnfeat.models import load_model
    from nnfeat.models.hf import minilm_path

    model = load_model("minilm", device="cpu")
    batch = model.encode(["The king spoke to the queen.", "A man eats."])
    ours = capture_token_attention(model, batch)
    ref = transformers.AutoModel.from_pretrained(str(minilm_path()), local_files_only=True,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = ref(input_ids=batch.ids, attention_mask=batch.mask.long(), output_attentions=True).attentions
    assert len(ours) == len(theirs) == 6
    for mine, other in zip(ours.values(), theirs):
        assert torch.allclose(mine, other, atol=1e-6)
        assert float(mine[1][..., ~batch.mask[1]].abs().max()) == 0  # the short text's padded keys
