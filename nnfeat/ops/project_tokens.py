"""Token embeddings laid out in 2-D: :func:`project_tokens` -> :class:`TokenProjectionResult` (kind ``projection``).

Two kinds of points (:mod:`nnfeat.analysis.token_embeddings`):

* ``embeddings`` -- rows of an input embedding matrix: a token model's (its ``nn.Embedding``), or one read from a
  file (:mod:`nnfeat.models.embedding_file`); the rows of the ``top`` most frequent tokens of ``texts``, of a
  ``tokens`` list (``FILE`` with one token a line, optionally ``token<TAB>group``, or ``a,b,c``), or else the
  first ``top`` rows (word2vec files are sorted by frequency);
* ``contextual`` -- a LAYER's output at every token occurrence of ``texts`` (one point per occurrence, labelled by
  the token and its text), at most ``max_points`` of them (a seeded sample beyond).

Laid out by PCA, t-SNE or UMAP and scored as ``nnfeat project`` scores images (:mod:`nnfeat.analysis.projection`):
trustworthiness at ``k``, PCA's explained variance, and with labels (the tokens file's groups; for contextual
vectors, the token itself) leave-one-out k-NN accuracy in 2-D and in D dimensions beside chance. ``neighbours``:
the ``neighbours_k`` nearest tokens of each query word by cosine similarity, among the whole matrix (embeddings)
or among the mean vectors of the texts' distinct tokens (contextual). Files:

* ``projection.png`` -- the scatter coloured by label; ``projection.html`` -- the interactive scatter;
* ``points.tsv`` -- one line per point: index, token, id, label, x, y (contextual: text index, position, text);
* ``neighbours.tsv`` -- query, rank, token, cosine (with ``neighbours``);
* ``projection.npz`` -- ``xy`` (N, 2), ``ids`` (N,), and ``labels``, ``text``, ``position`` where they apply;
* ``projection.json`` -- settings, selection, scores, neighbours, notes;
* with ``tensorboard=DIR``: a TensorBoard Projector folder, the token strings as metadata (one column -- so no
  header line, as the Projector reads it -- or with their group / text and position as further columns).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat.analysis import token_embeddings as te
from nnfeat.analysis.projection import METHODS, chance_accuracy, explained_variance, knn_accuracy, project_2d, \
    top_channels, trustworthiness
from nnfeat.errors import NnfeatError, shorten
from nnfeat.io import atomic_path, save_image, write_text
from nnfeat.models.embedding_file import EmbeddingTable, read_embedding_file, read_token_list
from nnfeat.models.text import TokenModel
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.texts import TextSet, load_texts
from nnfeat.views import projection_page as page
from nnfeat.views.projector import Embedding, write_projector
from nnfeat.views.scatter_page import ScatterPanel, write_scatter_page

#: contextual points are coloured by their token for this many most frequent tokens; the rest are "other"
COLOURED_TOKENS = 11


def parse_words(spec: str | Sequence[str] | None) -> list[str]:
    """``--neighbours word,word`` (or a list) -> the words."""
    if spec is None:
        return []
    words = [w.strip() for w in spec.split(",")] if isinstance(spec, str) else [str(w) for w in spec]
    if not words or not all(words):
        raise NnfeatError(f"--neighbours '{shorten(str(spec))}': give WORD or WORD,WORD2,... (no empty words)")
    return words


@dataclass(repr=False)
class TokenProjectionResult(Result):
    """What :func:`project_tokens` returns: ``xy`` (N, 2) positions of ``vectors`` (N, D), one per point, each a
    token (``tokens``, ``ids``), for contextual points also its text (``text_index`` (N,), ``position`` (N,),
    ``texts``); ``labels`` (N,) ints naming ``label_names`` or None; ``neighbours``: per query
    ``{"query", "neighbours": [[token, cosine], ...]}``."""

    source: str
    mode: str
    layer: str | None
    method: str
    xy: np.ndarray
    vectors: np.ndarray
    tokens: list[str]
    ids: np.ndarray
    labels: np.ndarray | None
    label_names: list[str]
    scores: dict
    k: int
    seed: int
    selection: dict
    texts: list[str] = field(default_factory=list)
    text_index: np.ndarray | None = None
    position: np.ndarray | None = None
    neighbours: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    elapsed: float = 0.0
    command: str | None = None
    tensorboard: str | None = None
    kind: ClassVar[str] = "projection"
    sheet_columns: ClassVar[int] = 1
    run_fields: ClassVar[tuple[str, ...]] = ("timings_seconds",)

    @property
    def images(self) -> torch.Tensor:
        plot = page.plot(self.xy, self.labels, self.label_names, self.seed)
        return torch.from_numpy(plot.copy()).permute(2, 0, 1).float()[None] / 255

    def what(self) -> str:
        if self.mode == "embeddings":
            return f"input embeddings ({self.layer})" if self.layer else "embeddings"
        return f"{self.layer} token vectors"

    def caption(self) -> str:
        s = self.scores
        line = f"{self.method}: trust {s['trustworthiness']:.3f} (k={self.k})"
        if s.get("knn_accuracy_2d") is not None:
            line += (f"\nkNN by {s['labels']} {s['knn_accuracy_2d']:.3f} (space {s['knn_accuracy_space']:.3f}, "
                     f"chance {s['chance']:.3f})")
        return line

    def captions(self) -> list[str]:
        return [self.caption()]

    def title(self) -> str:
        what = "tokens" if self.mode == "embeddings" else "occurrences"
        return f"{self.source}  {self.what()}  ({len(self.xy)} {what})"

    def record(self) -> dict:
        return {"modality": "tokens", "mode": self.mode, "source": self.source, "layer": self.layer,
                "method": self.method, "points": len(self.xy), "dim": int(self.vectors.shape[1]), "k": self.k,
                "seed": self.seed, "selection": self.selection, "scores": self.scores,
                "labels": self.label_names if self.labels is not None else None, "neighbours": self.neighbours,
                "notes": self.notes, "texts": len(self.texts) if self.texts else None,
                "timings_seconds": self.timings, "tensorboard": self.tensorboard}

    def write_files(self, out: Path) -> list[str]:
        names = [self.label_names[int(i)] for i in self.labels] if self.labels is not None else None
        header = ["point", "token", "id", "label", "x", "y"] + (["text", "position", "text_line"] if self.texts else [])
        lines = ["\t".join(header)]
        for i, (tok, x, y) in enumerate(zip(self.tokens, self.xy[:, 0].tolist(), self.xy[:, 1].tolist())):
            cells = [str(i), _cell(tok), str(int(self.ids[i])), _cell(names[i]) if names else "", f"{x:.6g}",
                     f"{y:.6g}"]
            if self.texts:
                t = int(self.text_index[i])
                cells += [str(t), str(int(self.position[i])), _cell(self.texts[t])]
            lines.append("\t".join(cells))
        write_text(out / "points.tsv", "\n".join(lines) + "\n")
        files = ["points.tsv"]
        if self.neighbours:
            rows = ["query\trank\ttoken\tcosine"] + [
                f"{_cell(q['query'])}\t{r + 1}\t{_cell(t)}\t{c:.6f}"
                for q in self.neighbours for r, (t, c) in enumerate(q["neighbours"])]
            write_text(out / "neighbours.tsv", "\n".join(rows) + "\n")
            files.append("neighbours.tsv")
        arrays = {"xy": self.xy, "ids": self.ids}
        arrays.update({k: v for k, v in (("labels", self.labels), ("text", self.text_index),
                                         ("position", self.position)) if v is not None})
        with atomic_path(out / "projection.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        files.append("projection.npz")
        index, values = top_channels(self.vectors, 3)
        panel = ScatterPanel(name=f"{self.what()} · {self.method}", xy=self.xy, labels=names,
                             indices=list(range(len(self.xy))),
                             top_channels=[list(zip(map(int, r), map(float, v))) for r, v in zip(index, values)],
                             scores={key: self.scores[src] for key, src in (("trustworthiness", "trustworthiness"),
                                     ("knn_accuracy", "knn_accuracy_2d"), ("chance", "chance"))
                                     if self.scores.get(src) is not None} | {"k": self.k})
        notes = [f"point i is line i of points.tsv (its token{' and text' if self.texts else ''})", *self.notes]
        files.extend(write_scatter_page(out / "projection.html", [panel], title=self.title(), notes=notes))
        return files


def _cell(value: str, limit: int = 200) -> str:
    """A TSV cell: one line, no tabs, at most ``limit`` characters (longer ones end in an ellipsis)."""
    text = " ".join(str(value).replace("\t", " ").splitlines()) or "-"
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def project_tokens(model: TokenModel | None = None, layer: str | None = None, *,
                   embedding_file: str | EmbeddingTable | None = None, vocab=None,
                   texts: TextSet | Sequence[str] | None = None, tokens: str | Sequence[str] | None = None,
                   top: int = 500, neighbours: str | Sequence[str] | None = None, neighbours_k: int = 10,
                   method: str = "umap", k: int | None = None, seed: int = 0, batch_size: int = 64,
                   max_points: int = 5000, tensorboard: str | Path | None = None) -> TokenProjectionResult:
    """Lay out token embeddings in 2-D, score the layout, and find cosine neighbours (see the module docstring).

    Args:
        model: a :class:`TokenModel`; None with ``embedding_file``.
        layer: None: the input embedding matrix's rows; a layer name: that layer's vectors at every token of
            ``texts`` (needs ``model``).
        embedding_file: ``VECTORS.npy``, ``WEIGHTS.safetensors[:KEY]`` (with ``vocab``) or word2vec text, or a
            table already read.
        texts: a :class:`TextSet` or texts: whose tokens are counted (embeddings) or run (contextual).
        tokens: the tokens to show (``FILE``, ``a,b,c`` or a list; see
            :func:`~nnfeat.models.embedding_file.read_token_list`).
        top: how many of the most frequent tokens (or first rows) to show when ``tokens`` is not given.
        neighbours: query words (``"king,queen"`` or a list).
        k: neighbours for the scores (default 10, fewer for under 21 points).

    Raises:
        NnfeatError: one line for a bad choice, before any file is written.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise NnfeatError(f"unknown method '{method}': use {', '.join(METHODS)}")
    if (model is None) == (embedding_file is None):
        raise NnfeatError("give a token MODEL or --embedding-file FILE, one of them")
    if layer is not None and model is None:
        raise NnfeatError("contextual token vectors of a LAYER need a token MODEL, not an embedding file")
    for name, value, least in (("top", top, 1), ("neighbours-k", neighbours_k, 1), ("max-points", max_points, 3)):
        if value < least:
            raise NnfeatError(f"--{name} {value} is out of range: use {least} or more")
    if texts is not None and not isinstance(texts, TextSet):
        texts = load_texts(list(texts))
    if layer is not None and texts is None:
        raise NnfeatError(f"contextual vectors of '{layer}' need texts: give --text \"...\" or --text-file FILE")
    listed, groups = read_token_list(tokens) if tokens is not None else (None, None)
    words = parse_words(neighbours)
    table = read_embedding_file(embedding_file, vocab) if isinstance(embedding_file, (str, Path)) else embedding_file
    notes: list[str] = []
    t0 = time.perf_counter()
    if layer is None:
        pts = _embedding_points(model, table, texts, listed, groups, top, words, neighbours_k, notes)
    else:
        pts = _contextual_points(model, layer, texts, listed, groups, words, neighbours_k, batch_size, max_points,
                                 seed, notes)
    t1 = time.perf_counter()
    vectors = pts["vectors"].numpy()
    n = len(vectors)
    if n < 3:
        raise NnfeatError(f"only {n} tokens to lay out: a projection needs at least 3 (give more --tokens or texts)")
    if k is None:
        k = min(10, max(1, (n + 1) // 2 - 1))
    if not 1 <= k < n / 2:
        raise NnfeatError(f"--k {k} is out of range for {n} points: use 1 <= k < {max(1, (n + 1) // 2)}")
    xy = project_2d(vectors, method, seed=seed)
    t2 = time.perf_counter()
    scores = {"trustworthiness": trustworthiness(vectors, xy, k)}
    if method == "pca":
        scores["explained_variance"] = explained_variance(vectors)
    knn = pts["knn_labels"]
    if knn is not None and len(set(knn.tolist())) > 1:
        scores.update(labels=pts["knn_by"], knn_accuracy_2d=knn_accuracy(xy, knn, k),
                      knn_accuracy_space=knn_accuracy(vectors, knn, k), chance=chance_accuracy(knn))
    source = model.name if model is not None else table.source
    result = TokenProjectionResult(
        source=source, mode="embeddings" if layer is None else "contextual", layer=layer or pts["name"],
        method=method, xy=xy, vectors=vectors, tokens=pts["tokens"], ids=pts["ids"].numpy(), labels=pts["labels"],
        label_names=pts["label_names"], scores=scores, k=k, seed=seed, selection=pts["selection"],
        texts=list(texts.texts) if layer is not None else [], text_index=pts.get("text"),
        position=pts.get("position"), neighbours=pts["neighbours"], notes=notes,
        timings={"vectors": round(t1 - t0, 3), "layout": round(t2 - t1, 3),
                 "scores": round(time.perf_counter() - t2, 3)})
    result.command = _command(model, layer, table, embedding_file, vocab, texts, tokens, top, words, neighbours_k,
                              method, k, seed, max_points)
    if tensorboard is not None:
        metadata = {"token": result.tokens}
        if result.labels is not None and layer is None:
            metadata["group"] = [result.label_names[int(i)] for i in result.labels]
        if layer is not None:
            metadata.update(text=[_cell(result.texts[int(i)]) for i in result.text_index],
                            position=[str(int(p)) for p in result.position])
        write_projector(tensorboard, [Embedding(name=f"{source} {result.what()}", vectors=vectors, metadata=metadata)])
        result.tensorboard = str(tensorboard)
    result.elapsed = time.perf_counter() - started
    return result


def _vocab_of(tokenizer) -> list[str]:
    return tokenizer.spell(range(tokenizer.vocab_size)) if tokenizer.vocab_size else []


def _embedding_points(model, table, texts, listed, groups, top, words, neighbours_k, notes) -> dict:
    if model is not None:
        name, matrix = te.input_embedding(model)
        vocab = _vocab_of(model.tokenizer) if model.tokenizer.vocab_size == len(matrix) else \
            [f"#{i}" for i in range(len(matrix))]
        specials = sorted(set(v for v in model.tokenizer.specials.values() if 0 <= v < len(matrix)))
    else:
        name, matrix, vocab, specials = None, table.vectors, table.vocab, []
    index = te.vocab_index(vocab)
    query = te.lookup(words, index, "--neighbours word", len(vocab))  # checked before any other work
    if listed is not None:
        ids = te.lookup(listed, index, "--tokens token", len(vocab))
        seen: set[int] = set()
        twice = next((t for t, i in zip(listed, ids) if i in seen or seen.add(i)), None)
        if twice is not None:
            raise NnfeatError(f"--tokens names the vocabulary entry of '{shorten(twice, 40)}' twice: list each once")
        selection = {"by": "tokens", "tokens": len(ids), "groups": groups is not None}
    elif texts is not None:
        if model is not None:
            counts = te.token_counts(texts.texts, model.tokenizer.encode, len(matrix), specials)
            missing = 0
        else:
            counts, missing = te.word_counts(texts.texts, index, len(matrix))
        ids = te.most_frequent(counts, top).tolist()
        if not ids:
            raise NnfeatError(f"no word of the {len(texts)} texts is in the vocabulary: give texts in its language")
        selection = {"by": "frequency", "top": top, "texts": len(texts), "source": texts.source,
                     "count_of_last": int(counts[ids[-1]]), "words_not_in_vocabulary": missing}
        if missing:
            notes.append(f"{missing} words of the texts are not in the vocabulary (not counted)")
    else:
        keep = torch.ones(len(matrix), dtype=torch.bool)
        keep[torch.tensor(specials, dtype=torch.long)] = False
        ids = keep.nonzero()[:, 0][:top].tolist()
        selection = {"by": "first rows", "top": top}
        notes.append(f"no --text-file or --tokens: the first {len(ids)} rows of the vocabulary (word2vec files "
                     "are sorted by frequency; others may not be)")
    if table is not None:
        selection["embedding_file"] = table.record()
    exclude = torch.zeros(len(matrix), dtype=torch.bool)
    exclude[torch.tensor(specials, dtype=torch.long)] = True
    labels, label_names = te.group_labels(groups) if listed is not None else (None, [])
    return {"name": name, "vectors": matrix[torch.tensor(ids, dtype=torch.long)],
            "ids": torch.tensor(ids, dtype=torch.long), "tokens": [vocab[i] for i in ids], "labels": labels,
            "label_names": label_names, "knn_labels": labels, "knn_by": "group", "selection": selection,
            "neighbours": te.neighbour_table(words, query, matrix, vocab, neighbours_k, exclude)}


def _contextual_points(model, layer, texts, listed, groups, words, neighbours_k, batch_size, max_points, seed,
                       notes) -> dict:
    model.module(layer)  # one-line error for an unknown layer, before any work
    if model.kind != "seq2seq" and model.tokenizer.vocab_size:  # the words checked before any work, too
        early = te.vocab_index(_vocab_of(model.tokenizer))
        te.lookup(words, early, "--neighbours word", model.tokenizer.vocab_size)
        te.lookup(listed or [], early, "--tokens token", model.tokenizer.vocab_size)
    batch = model.encode(texts.texts)
    if batch.note(model.max_length):
        notes.append(batch.note(model.max_length))
    found = te.contextual_vectors(model, layer, batch, batch_size=batch_size)
    tokenizer = model.target_tokenizer if found.side == "decoder" and model.target_tokenizer else model.tokenizer
    vocab = _vocab_of(tokenizer)
    if not vocab:  # a tokenizer without a vocabulary: the tokens the texts gave, by id
        vocab = [f"#{i}" for i in range(int(found.ids.max()) + 1)]
        for i, t in zip(found.ids.tolist(), found.tokens):
            vocab[i] = t
    index = te.vocab_index(vocab)
    query = te.lookup(words, index, "--neighbours word", len(vocab))
    unique, means = te.type_means(found.vectors, found.ids)
    row_of = {int(u): r for r, u in enumerate(unique.tolist())}
    absent = next((w for w, q in zip(words, query) if q not in row_of), None)
    if absent is not None:
        raise NnfeatError(f"--neighbours word '{shorten(absent, 40)}' does not occur in the {len(texts)} texts: "
                          "give texts that use it, or another word")
    table = te.neighbour_table(words, [row_of[q] for q in query], means, vocab, neighbours_k,
                             rows=unique.tolist())
    keep = torch.arange(len(found.ids))
    group_of = None
    if listed is not None:
        wanted = te.lookup(listed, index, "--tokens token", len(vocab))
        keep = torch.isin(found.ids, torch.tensor(wanted)).nonzero()[:, 0]
        if not len(keep):
            raise NnfeatError(f"no token of --tokens occurs in the {len(texts)} texts")
        if groups is not None:
            group_of = {i: g for i, g in zip(wanted, groups)}
    total = len(keep)
    if total > max_points:
        g = torch.Generator().manual_seed(int(seed))
        keep = keep[torch.sort(torch.randperm(total, generator=g)[:max_points]).values]
        notes.append(f"{total} token occurrences: a sample of {max_points} drawn from --seed {seed} (--max-points)")
    ids = found.ids[keep]
    tokens = [found.tokens[i] for i in keep.tolist()]
    knn = torch.unique(ids, return_inverse=True)[1].numpy()
    if group_of is not None:
        labels, names = te.group_labels([group_of[int(i)] for i in ids])
        knn, by = labels, "group"
    else:
        labels, names = te.frequent_labels(torch.as_tensor(knn), tokens, COLOURED_TOKENS)
        by = "token"
    return {"name": layer, "vectors": found.vectors[keep], "ids": ids, "tokens": tokens, "labels": labels,
            "label_names": names, "knn_labels": knn, "knn_by": by, "text": found.text[keep].numpy(),
            "position": found.position[keep].numpy(), "neighbours": table,
            "selection": {"by": "tokens" if listed is not None else "all occurrences", "occurrences": total,
                          "shown": len(keep), "side": found.side, "texts": len(texts), "source": texts.source}}


def _command(model, layer, table, embedding_file, vocab, texts, tokens, top, words, neighbours_k, method, k, seed,
             max_points) -> str:
    text_options = texts.command_options() if texts is not None else {}
    file = str(embedding_file) if isinstance(embedding_file, (str, Path)) else (table.source if table else None)
    command = cli_command(
        "project", *([model.name] if model is not None else []), *([layer] if layer else []),
        embeddings=model is not None and layer is None, embedding_file=file,
        vocab=vocab if isinstance(vocab, (str, Path)) else (table.vocab_file if table else None),
        text_file=text_options.get("text_file"),
        n=text_options.get("n"), tokens=tokens if isinstance(tokens, str) or tokens is None else ",".join(tokens),
        top=None if top == 500 or tokens is not None or layer else top,
        neighbours=",".join(words) or None, neighbours_k=None if neighbours_k == 10 or not words else neighbours_k,
        method=method, k=None if k == 10 else k, seed=None if seed == 0 else seed,
        max_points=None if max_points == 5000 or layer is None else max_points,
        weights=weights_flag(model.weights) if model is not None else None)
    extra = [w for t in text_options.get("text", []) for w in ("--text", t)]
    return command + (" " + shlex.join(extra) if extra else "")


__all__ = ["COLOURED_TOKENS", "TokenProjectionResult", "parse_words", "project_tokens"]
