"""Token models: tokenizers, TokenModel (batches, padding, truncation, generation), text sources, and a user's
token network from FILE.py:FACTORY."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnfeat.cli import main
from nnfeat.errors import NnfeatError
from nnfeat.models import load_model
from nnfeat.models.text import TokenModel
from nnfeat.models.tokenizers import CallableTokenizer, CharTokenizer, WordTokenizer
from nnfeat.texts import load_texts

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "."]

#: a user's token classifier file: nn.Embedding + nn.TransformerEncoder, and the documented adapter
USER_FILE = '''
import torch
from torch import nn
import nnfeat

WORDS = {words!r}


class TextClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(len(WORDS), 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 2)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def make():
    tokenizer = nnfeat.WordTokenizer(WORDS, wrap=("cls", "sep"), lower=True)
    return nnfeat.TokenModel(TextClassifier(), name="my-text", tokenizer=tokenizer, kind="classifier",
                             max_length=32, classes=["neg", "pos"], embedding="embed")


def bare():
    return TextClassifier()
'''


class Lengths(nn.Module):
    """(B, T) ids -> (B, T, 1): each token's id times the length of the sequence it was called with, so a padded
    call would change every value."""

    def forward(self, ids):
        return (ids * ids.shape[1]).float()[..., None]


def word_model(net=None, **kw) -> TokenModel:
    tok = WordTokenizer(WORDS, wrap=("cls", "sep"), lower=True)
    return TokenModel(net or Lengths(), name="words", tokenizer=tok, kind=kw.pop("kind", "encoder"),
                      max_length=kw.pop("max_length", 8), **kw)


def test_tokenizers_spell_and_wrap():
    tok = WordTokenizer(WORDS, wrap=("cls", "sep"), lower=True)
    assert tok.spell(tok.encode("The cat sat.")) == ["[CLS]", "the", "cat", "sat", ".", "[SEP]"]
    assert tok.specials == {"pad": 0, "unk": 1, "cls": 2, "sep": 3}
    assert tok.encode("the dog") == [2, 4, 1, 3]  # an unknown word is [UNK]
    char = CharTokenizer("0123456789-", specials=("pad", "bos", "eos"))
    assert char.decode(char.encode("2009-06-25")) == "2009-06-25"
    calls = CallableTokenizer(lambda text: [len(w) for w in text.split()], vocab=[str(i) for i in range(10)])
    assert calls.spell(calls.encode("ab cde")) == ["2", "3"]
    with pytest.raises(NnfeatError, match="outside its vocabulary of 10"):
        calls.encode("a" * 12)
    with pytest.raises(NnfeatError, match="not in the model's alphabet"):
        char.encode("june")


def test_padding_never_changes_what_a_mask_free_network_computes():
    model = word_model()
    batch = model.encode(["the cat", "the cat sat on the mat"])
    out = model(batch.ids, batch.mask)
    alone = model(*(lambda b: (b.ids, b.mask))(model.encode(["the cat"])))
    assert torch.equal(out[0, :4], alone[0])  # the short text ran at its own length
    assert float(out[0, 4:].abs().sum()) == 0  # its padding positions are zeros, not outputs of padded input


def test_truncation_is_noted_and_refusal_is_one_line():
    model = word_model(max_length=5)
    batch = model.encode(["the cat sat on the mat"])
    assert batch.tokens[0] == ["[CLS]", "the", "cat", "sat", "[SEP]"] and batch.truncated == [3]
    assert "longer than the model's maximum of 5 tokens: truncated" in batch.note(5)
    with pytest.raises(NnfeatError, match="has 8 tokens, more than the model's maximum of 5"):
        model.encode(["the cat sat on the mat"], truncate=False)
    with pytest.raises(NnfeatError, match="text 1 is empty"):
        model.encode(["the cat", "  "])


def test_text_sources(tmp_path):
    file = tmp_path / "texts.txt"
    file.write_text("one\n\ntwo\nthree\nfour\n", encoding="utf-8")
    texts = load_texts(file=file)
    assert texts.texts == ["one", "two", "three", "four"] and texts.indices == [0, 2, 3, 4]
    sample = load_texts(file=file, n=2, seed=3)
    assert sample == load_texts(file=file, n=2, seed=3) and len(sample) == 2
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    for kwargs, needle in [({"file": tmp_path / "latin1.txt"}, r"is not UTF-8 \(line 1"),
                           ({"file": tmp_path / "none.txt"}, "not found"),
                           ({"texts": ["a", ""]}, "--text number 2 is empty"),
                           ({"file": file, "n": 9}, "--n 9 is out of range for 4 texts")]:
        with pytest.raises(NnfeatError, match=needle):
            load_texts(**kwargs)


def test_a_users_token_classifier_from_a_file(tmp_path, capsys):
    (tmp_path / "text_model.py").write_text(USER_FILE.format(words=WORDS))
    model = load_model(f"{tmp_path}/text_model.py:make", device="cpu")
    assert isinstance(model, TokenModel) and model.classes == ["neg", "pos"]
    batch = model.encode(["The cat sat.", "the mat"])
    assert model(batch.ids, batch.mask).shape == (2, 2)
    assert main(["layers", f"{tmp_path}/text_model.py:make"]) == 0
    said = capsys.readouterr().out
    assert "input: text, words of a vocabulary of 10 (a list), at most 32 tokens, classifier, 2 classes" in said
    assert "encoder.layers.0.self_attn" in said


def test_a_bare_token_network_is_told_how_to_give_its_tokenizer(tmp_path, capsys):
    (tmp_path / "text_model.py").write_text(USER_FILE.format(words=WORDS))
    assert main(["layers", f"{tmp_path}/text_model.py:bare"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes token ids (its first layer is an nn.Embedding)" in err[0]
    assert "nnfeat.TokenModel(" in err[0] and "WordTokenizer" in err[0]
