"""Hugging Face token models from local folders: all-MiniLM-L6-v2 (the ``minilm`` package) against
transformers' own outputs, known semantic answers, one-line errors, and tiny random classifier / GPT-2 folders."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded here; local_files_only everywhere
transformers = pytest.importorskip("transformers")

from nnfeat.analysis.hf_attention import hf_attention_layer_names, hf_attentions  # noqa: E402
from nnfeat.errors import NnfeatError  # noqa: E402
from nnfeat.models.hf import HFTokenizer, load_hf, mean_pool, minilm_path  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
TEXTS = ["The king spoke.", "A man is eating food in the kitchen tonight", "hello"]


@pytest.fixture(scope="module")
def folder():
    try:
        return minilm_path()
    except NnfeatError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def minilm(folder):
    return load_hf(folder)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and 0 < len(text) < 400, text
    return text


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


# -- minilm ------------------------------------------------------------------------------------------------
def test_minilm_spec_and_tokens(minilm):
    assert minilm.kind == "encoder" and minilm.call == "hf" and minilm.max_length == 512
    assert minilm.embedding == "embeddings.word_embeddings"
    assert isinstance(minilm.module(minilm.embedding), torch.nn.Embedding)
    tok = minilm.tokenizer
    assert tok.wrap == ("cls", "sep")
    assert tok.specials == {"pad": 0, "cls": 101, "sep": 102, "mask": 103, "unk": 100}
    assert tok.description == "WordPiece of 30522 (all-MiniLM-L6-v2)" and tok.vocab_size == 30522
    assert minilm.name == "minilm"
    batch = minilm.encode(["The king spoke."])
    assert batch.tokens == [["[CLS]", "the", "king", "spoke", ".", "[SEP]"]]
    assert batch.ids.tolist() == [[101, 1996, 2332, 3764, 1012, 102]]
    assert tok.spell(tok._ids("unbelievably")) == ["un", "##bel", "##ie", "##va", "##bly"]
    assert tok.decode(tok.encode("Unbelievably, the king spoke.")) == "unbelievably, the king spoke."
    assert "WordPiece of 30522" in minilm.spec.describe() and minilm.spec.record()["max_length"] == 512


def test_minilm_hidden_states_equal_transformers(minilm, folder):
    ref = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()  # default attention
    batch = minilm.encode(TEXTS)
    assert not bool(batch.mask.all())  # padded: the mask matters
    with torch.no_grad():
        expected = ref(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state
    got = minilm(batch.ids, batch.mask)
    assert got.shape == (3, batch.ids.shape[1], 384)
    m = batch.mask
    assert torch.allclose(got[m], expected[m], atol=1e-5, rtol=0)
    assert not torch.allclose(got[0, 1], got[0, 2], atol=1e-2)  # token vectors differ


def test_minilm_attention_equals_transformers(minilm, folder):
    ref = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                 attn_implementation="eager").eval()
    batch = minilm.encode(TEXTS)
    with torch.no_grad():
        expected = ref(input_ids=batch.ids, attention_mask=batch.mask.long(), output_attentions=True).attentions
    got = hf_attentions(minilm, batch)
    names = [f"encoder.layer.{i}.attention.self" for i in range(6)]
    assert list(got) == names == hf_attention_layer_names(minilm)
    T = batch.ids.shape[1]
    for name, want in zip(names, expected):
        assert got[name].shape == (3, 12, T, T) and got[name].dtype == torch.float32
        assert torch.allclose(got[name], want, atol=1e-5, rtol=0)  # SDPA vs eager layers: ~1e-6
    first = got[names[0]]
    assert torch.allclose(first.sum(-1), torch.ones(3, 12, T), atol=1e-5)
    assert bool((first[2][..., ~batch.mask[2]] == 0).all())  # padded keys get exactly 0
    # known answer, independent of transformers' attention code: layer 0 from its own query/key weights
    net, n = minilm.net, int(batch.mask[0].sum())
    with torch.no_grad():
        x = net.embeddings(input_ids=batch.ids[:1, :n])  # text 0 unpadded
        sa = net.encoder.layer[0].attention.self
        q = sa.query(x).view(1, -1, 12, 32).transpose(1, 2)
        k = sa.key(x).view(1, -1, 12, 32).transpose(1, 2)
        by_hand = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), -1)
    assert torch.allclose(first[0, :, :n, :n], by_hand[0], atol=1e-5)


def test_minilm_sentence_vectors(minilm):
    batch = minilm.encode(["a man is eating food", "a man eats a meal", "the stock market fell"])
    vec = mean_pool(minilm(batch.ids, batch.mask), batch.mask)
    assert vec.shape == (3, 384)
    near, far = _cos(vec[0], vec[1]), _cos(vec[0], vec[2])
    assert near > far + 0.3, (near, far)
    # mean over real tokens only: padding a text does not change its vector
    alone = minilm.encode(["the stock market fell"])
    assert torch.allclose(mean_pool(minilm(alone.ids, alone.mask), alone.mask)[0], vec[2], atol=1e-5)


def test_minilm_word_embeddings(minilm):
    weight = minilm.module(minilm.embedding).weight
    tok = minilm.tokenizer
    king, queen, apple = (weight[tok._ids(w)[0]] for w in ("king", "queen", "apple"))
    assert all(len(tok._ids(w)) == 1 for w in ("king", "queen", "apple"))
    assert _cos(king, queen) > _cos(king, apple) + 0.1


def test_minilm_truncates_long_text(minilm):
    text = " ".join(["word"] * 600)
    batch = minilm.encode([text, "short text"])
    assert batch.ids.shape == (2, 512) and batch.lengths == [512, 4]
    assert batch.tokens[0][0] == "[CLS]" and batch.tokens[0][-1] == "[SEP]"
    assert batch.truncated == [90, 0]
    note = batch.note(minilm.max_length)
    assert note is not None and "512" in note and "\n" not in note
    assert minilm(batch.ids, batch.mask).shape == (2, 512, 384)
    with pytest.raises(NnfeatError) as err:
        minilm.encode([text], truncate=False)
    assert "602 tokens" in _one_line(err)


# -- bad folders ------------------------------------------------------------------------------------------------
def test_bad_folders(tmp_path, folder, monkeypatch):
    with pytest.raises(NnfeatError) as err:
        load_hf(tmp_path / "absent")
    assert "no model folder" in _one_line(err)
    with pytest.raises(NnfeatError) as err:
        load_hf(tmp_path)
    assert "no config.json" in _one_line(err)
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    shutil.copy(folder / "config.json", no_tok / "config.json")
    with pytest.raises(NnfeatError) as err:
        load_hf(no_tok)
    assert "no tokenizer" in _one_line(err)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "nosuchformer", "hidden_size": 8}))
    with pytest.raises(NnfeatError) as err:
        load_hf(unknown)
    assert "does not know model_type 'nosuchformer'" in _one_line(err)
    seq2seq = tmp_path / "t5"
    seq2seq.mkdir()
    (seq2seq / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(NnfeatError) as err:
        load_hf(seq2seq)
    assert "encoder-decoder" in _one_line(err)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(no_tok, no_weights)
    for name in TOKENIZER_FILES:
        shutil.copy(folder / name, no_weights / name)
    with pytest.raises(NnfeatError) as err:
        load_hf(no_weights)
    assert "cannot load the bert model" in _one_line(err)
    headless = tmp_path / "headless"  # minilm's weights named a classifier: its head would be random
    shutil.copytree(no_weights, headless)
    (headless / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(NnfeatError) as err:
        load_hf(headless)
    assert "2 parameters missing" in _one_line(err) and "classifier.bias" in str(err.value)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(NnfeatError) as err:
        load_hf(folder)
    assert "pip install 'nnfeat[text]'" in _one_line(err)


# -- tiny random models of other kinds -----------------------------------------------------------------------------
def test_tiny_bert_classifier(tmp_path, folder):
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=128, num_labels=3,
                                     id2label={0: "negative", 1: "neutral", 2: "positive"},
                                     label2id={"negative": 0, "neutral": 1, "positive": 2})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = transformers.BertForSequenceClassification(config).eval()
    net.save_pretrained(tmp_path)
    for name in TOKENIZER_FILES:
        shutil.copy(folder / name, tmp_path / name)
    model = load_hf(tmp_path, name="tiny-bert")
    assert model.kind == "classifier" and model.classes == ["negative", "neutral", "positive"]
    assert model.max_length == 128 and model.embedding == "bert.embeddings.word_embeddings"
    assert model.spec.describe().endswith("classifier, 3 classes")
    batch = model.encode(["The king spoke.", "hi"])
    logits = model(batch.ids, batch.mask)
    with torch.no_grad():
        expected = net(input_ids=batch.ids, attention_mask=batch.mask.long()).logits
    assert logits.shape == (2, 3) and torch.allclose(logits, expected, atol=1e-5)
    att = hf_attentions(model, batch)
    assert list(att) == ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"]
    assert att["bert.encoder.layer.0.attention.self"].shape == (2, 2, 6, 6)


def _bpe_tokenizer():
    """A byte-level BPE tokenizer trained here, offline, on a few sentences (GPT-2's kind)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["the king spoke to the queen", "a man is eating food", "the stock market fell today"] * 20
    tok.train_from_iterator(corpus, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def test_tiny_gpt2_lm(tmp_path):
    hf_tok = _bpe_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = transformers.GPT2LMHeadModel(config).eval()
    net.save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    model = load_hf(tmp_path, name="tiny-gpt2")
    assert model.kind == "lm" and model.classes is None
    assert model.max_length == 64  # the config's positions; the tokenizer has no limit of its own
    assert model.embedding == "transformer.wte" and model.unembed == "lm_head"
    tok = model.tokenizer
    assert isinstance(tok, HFTokenizer) and tok.description == f"BPE of {len(hf_tok)} (tiny-gpt2)"
    assert tok.wrap == (None, None) and tok.specials["eos"] == tok.specials["bos"] == hf_tok.eos_token_id
    text = "the king spoke to the queen"
    ids = tok.encode(text)
    assert ids == hf_tok(text)["input_ids"] and tok.decode(ids) == text
    assert "Ġking" in tok.spell(ids)  # spelled as the tokenizer does (byte-level space marker)
    batch = model.encode([text, "the man"])
    logits = model(batch.ids, batch.mask)
    assert logits.shape == (2, batch.ids.shape[1], len(hf_tok))
    att = hf_attentions(model, batch)
    assert list(att) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    causal = att["transformer.h.0.attn"][0, 0]
    assert float(causal.triu(1).abs().max()) == 0.0  # a causal lm attends to no later token
    more = model.generate(model.encode(["the king"]), max_new=3)
    assert more.lengths == [len(tok.encode("the king")) + 3]


def test_hf_attentions_refuses_other_models():
    from nnfeat.models.text import TokenModel
    from nnfeat.models.tokenizers import CharTokenizer

    model = TokenModel(torch.nn.Embedding(8, 4), name="plain", tokenizer=CharTokenizer("abc"), kind="encoder",
                       max_length=8)
    with pytest.raises(NnfeatError) as err:
        hf_attentions(model, model.encode(["abc"]))
    assert "plain is not a Hugging Face model" in _one_line(err)
