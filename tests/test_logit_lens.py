"""The logit lens (``nnfeat logit-lens``): a hand-built two-layer residual model whose layer 0 writes token X's
embedding and layer 1 token Y's (known answer: the lens reads X after layer 0, Y after layer 1, and the last
layer's lens is the model's own logits, bit for bit); the trained tiny-lm on a repeated sequence (the next token's
rank in the second copy falls from layer 0 to the last layer); files byte-identical; bad input one line, exit 2,
nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nnfeat import cli
from nnfeat.analysis.logit_lens import capture_lens, decode_lens, find_blocks, lens_readout
from nnfeat.cli import logit_lens as logit_lens_cli
from nnfeat.errors import NnfeatError
from nnfeat.models import load_model
from nnfeat.models.text import TokenModel
from nnfeat.models.tiny_lm import WORDS as LM_WORDS
from nnfeat.models.tokenizers import WordTokenizer
from nnfeat.ops.logit_lens import logit_lens

WORDS = ["<pad>", "<bos>", "x", "y", "a", "b", "c", "d", "e"]
X, Y = WORDS.index("x"), WORDS.index("y")

PLANTED_FILE = '''
import torch
from torch import nn
import nnfeat

WORDS = {words!r}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), 6)
        self.layers = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
        self.head = nn.Linear(6, 2)

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = h + layer(h)
        return self.head(h.mean(1))


def make():
    return nnfeat.TokenModel(Net(), name="classifier", tokenizer=nnfeat.WordTokenizer(WORDS, wrap=("bos", None)),
                             kind="classifier", max_length=16, classes=["p", "q"])
'''


class Write(nn.Module):
    """A block that adds ``scale`` x the embedding of ``token`` to the residual stream: (B, T, D) -> (B, T, D)."""

    def __init__(self, embed: nn.Embedding, token: int, scale: float) -> None:
        super().__init__()
        self.embed, self.token, self.scale = embed, token, scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.scale * self.embed.weight[self.token]


class Planted(nn.Module):
    """Embeddings: orthonormal rows, each orthogonal to the all-ones vector (so the final LayerNorm only rescales);
    unembedding tied to them. Layer 0 writes 4 x E[x], layer 1 writes 9 x E[y]."""

    def __init__(self) -> None:
        super().__init__()
        v, d = len(WORDS), 12
        g = torch.Generator().manual_seed(0)
        basis = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, d - 1, generator=g)], 1))[0]
        rows = basis[:, 1:v + 1].T.contiguous()  # (V, D), orthonormal, orthogonal to ones
        self.embed = nn.Embedding(v, d)
        self.blocks = nn.ModuleList([Write(self.embed, X, 4.0), Write(self.embed, Y, 9.0)])
        self.final = nn.LayerNorm(d)
        self.out = nn.Linear(d, v, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(rows)
            self.out.weight.copy_(rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return self.out(self.final(h))


def planted(kind: str = "lm", unembed: str | None = "out") -> TokenModel:
    return TokenModel(Planted(), name="planted", tokenizer=WordTokenizer(WORDS, wrap=("bos", None)), kind=kind,
                      max_length=16, embedding="embed", unembed=unembed)


def test_planted_layers_read_x_then_y_and_the_last_layer_is_the_models_logits():
    model = planted()
    result = logit_lens(model, ["a b c d e", "c a"], top=3)
    assert result.layers == ["blocks.0", "blocks.1"]  # found: the first ModuleList whose outputs are (B, T, D)
    assert (result.final_norm, result.norm_source) == ("final", "found")
    for i, n in enumerate(result.lengths):
        assert result.top_ids[0, i, :n, 0].tolist() == [X] * n
        assert result.top_ids[1, i, :n, 0].tolist() == [Y] * n
        assert result.top_tokens[i][0][0][0] == "x" and result.top_tokens[i][1][n - 1][0] == "y"
    # last position's target: the model's own prediction (y), rank 1 at layer 1; x's rank there is 2
    assert result.target_tokens[0][-1] == "y" and int(result.rank[1, 0, 5]) == 1
    assert result.last_layer_gap == 0.0
    # the analysis layer on its own: the last layer decoded equals the model's logits exactly
    ids = model.encode(["a b c"]).ids
    seen = capture_lens(model, ids, ["blocks.0", "blocks.1"], "out")
    lens = decode_lens(model, seen.residual, "out", seen.final_norm)
    assert torch.equal(lens[-1], model(ids)) and torch.equal(seen.logits, model(ids))
    read = lens_readout(lens, torch.full_like(ids, X), 2)
    assert read["rank"][0].tolist() == [[1, 1, 1, 1]] and read["rank"][1].tolist() == [[2, 2, 2, 2]]
    # no hook is left behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.net.modules())


def test_mixed_lengths_equal_each_text_alone_and_files_are_byte_identical(tmp_path):
    model = planted()
    both = logit_lens(model, ["a b c d e", "c a"])
    alone = logit_lens(model, ["c a"])
    n = alone.lengths[0]
    assert torch.equal(both.rank[:, 1, :n], alone.rank[:, 0])
    assert torch.equal(both.top_ids[:, 1, :n], alone.top_ids[:, 0])
    assert torch.allclose(both.top_probs[:, 1, :n], alone.top_probs[:, 0])
    first, second = both.save(tmp_path / "a", timing=False), logit_lens(model, ["a b c d e", "c a"]).save(
        tmp_path / "b", timing=False)
    for name in ("logit-lens.json", "logit-lens.html", "logit-lens.png", "lens-0.png", "lens-1.png"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes(), name
    page = (first.parent / "logit-lens.html").read_text(encoding="ascii")
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page
    record = json.loads(first.read_text())
    assert record["command"] == "nnfeat logit-lens planted --text 'a b c d e' --text 'c a'"
    assert record["per_text"][1]["top_tokens"][1][0][0] == "y" and record["last_layer_gap"] == 0.0


@pytest.fixture(scope="module")
def tiny_lm():
    return load_model("tiny-lm")  # trained on first use into the session's NNFEAT_HOME, then cached


def test_tiny_lm_rank_of_the_next_token_in_a_repeat_improves_with_depth(tiny_lm):
    g = torch.Generator().manual_seed(3)
    words = [LM_WORDS[i] for i in torch.randint(0, len(LM_WORDS), (20,), generator=g)]
    result = logit_lens(tiny_lm, [" ".join(words + words)])
    assert result.layers == ["blocks.0", "blocks.1"] and result.final_norm == "norm"
    assert result.last_layer_gap == 0.0
    second = result.rank[:, 0, 21:40].float().mean(1)  # positions of the second copy whose next word repeats
    first = result.rank[:, 0, 1:20].float().mean(1)
    print(f"tiny-lm mean rank of the next word, second copy: {second.tolist()}; first copy: {first.tolist()}")
    # measured: second copy 35.8 at blocks.0 -> 1.0 at blocks.1; first copy (unpredictable) 32.2 -> 36.9
    assert float(second[-1]) <= 1.5 and float(second[0]) >= 5 * float(second[-1])
    assert float(first[-1]) > 10  # the first copy's words are random: no layer predicts them


def test_find_blocks_of_a_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    from nnfeat.models.tokenizers import CallableTokenizer
    config = transformers.GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=3, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = transformers.GPT2LMHeadModel(config).eval()
    tok = CallableTokenizer(lambda text: [int(w) for w in text.split()], vocab=[f"t{i}" for i in range(40)])
    model = TokenModel(net, name="gpt2", tokenizer=tok, kind="lm", call="hf", max_length=32, unembed="lm_head")
    result = logit_lens(model, ["1 2 3 4 5 6", "7 8"])
    assert result.layers == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert (result.final_norm, result.norm_source) == ("transformer.ln_f", "found")
    assert result.last_layer_gap < 1e-5
    assert find_blocks(model, model.encode(["1 2"]).ids) == result.layers


def _run(argv, capsys, monkeypatch):
    if logit_lens_cli not in cli.COMMAND_MODULES:  # until the lead registers the command
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, logit_lens_cli))
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_cli_writes_figures_and_table(tmp_path, capsys, monkeypatch):
    out = tmp_path / "lens"
    code, io = _run(["logit-lens", "tiny-lm", "--weights", "random", "--text", "the cat sit on the big red box",
                     "--top", "3", "--out", str(out), "--quiet"], capsys, monkeypatch)
    assert code == 0, io.err
    record = json.loads((out / "logit-lens.json").read_text())
    assert sorted(record["files"]) == ["lens-0.png", "logit-lens.html", "logit-lens.png"]
    assert record["top"] == 3 and record["layers"] == ["blocks.0", "blocks.1"] and record["final_norm"] == "norm"
    assert len(record["per_text"][0]["top_tokens"][0][0]) == 3


@pytest.mark.parametrize("extra, words", [
    (["--unembed", "nope"], "unknown layer 'nope'"),
    (["--layers", "blocks.0.attn.probs"], "not the residual stream"),
    (["--final-norm", "blocks.0.attn.probs"], "not the residual stream"),
    (["--unembed", "blocks.0.attn.probs"], "not vocabulary logits"),
    (["--text", "   "], "empty"),
    (["--top", "0"], "--top"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, extra, words):
    out = tmp_path / "lens"
    text = [] if "--text" in extra else ["--text", "the cat sit"]
    code, io = _run(["logit-lens", "tiny-lm", "--weights", "random", *text, *extra, "--out", str(out)], capsys,
                    monkeypatch)
    assert code == 2 and words in io.err and len(io.err.strip().splitlines()) == 1, io.err
    assert not out.exists()


def test_a_classifier_without_unembed_is_refused(tmp_path, capsys, monkeypatch):
    factory = tmp_path / "clf.py"
    factory.write_text(PLANTED_FILE.format(words=WORDS))
    out = tmp_path / "lens"
    code, io = _run(["logit-lens", f"{factory}:make", "--text", "a b", "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "--unembed MODULE" in io.err and len(io.err.strip().splitlines()) == 1, io.err
    assert not out.exists()
    with pytest.raises(NnfeatError, match="encoder-decoder"):
        logit_lens(load_model("dates-seq2seq", weights="random"), ["1 may 2020"])
    with pytest.raises(NnfeatError, match="--unembed"):
        logit_lens(planted(kind="classifier", unembed=None), ["a b"])
