"""A user's weights file, loaded into a network nnfeat built: ``load_weights_file(net, path)``.

What a file may hold (found from its bytes, not its name):

* a **state_dict** (``torch.save(net.state_dict(), FILE)``): ``{parameter or buffer name: tensor}``;
* a **checkpoint** dict holding one under :data:`CHECKPOINT_KEYS` (``state_dict``, ``model``, ...; the first of
  those keys whose value is a tensor dict, else the first key in the file that holds one);
* **safetensors** (needs the ``safetensors`` package);
* a **TorchScript** module (``torch.jit.save``): its own state_dict is loaded into the built network (the
  scripted module does not replace it, so hooks, layer names and the input contract stay nnfeat's);
* a **torch.export** program (``torch.export.save``, ``.pt2``): its state_dict, read from the archive by nnfeat
  itself (``torch.export.load`` may unpickle objects with the unrestricted loader, so it is not called).

The names may carry the prefixes of ``nn.DataParallel``/DDP (``module.``) and ``torch.compile``
(``_orig_mod.``): they are stripped. Pickles are read only with ``torch.load(..., weights_only=True)``: a file
whose pickle would import or call anything other than tensors and plain containers is refused, and nothing
of it runs. Keys and shapes must match the network exactly (a BatchNorm's ``num_batches_tracked`` may be
absent); every problem is one :class:`~nnfeat.errors.NnfeatError` line saying what would fix it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from nnfeat.errors import NnfeatError, shorten
from nnfeat.models.weights import sha256_of

#: Checkpoint keys tried in order for the tensor dict (after them, any key of the file that holds one).
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights", "ema", "state_dict_ema",
                   "model_ema", "module", "params")
#: Name prefixes that wrappers add and that are stripped (repeatedly, in any order).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: The formats a file may be in, for messages.
FORMATS = "a state_dict or checkpoint (torch.save), safetensors, TorchScript or a torch.export .pt2"
SHOWN = 3  # keys named in a message before "and N more"

_SAFE_SAVE = "save the weights alone: torch.save(net.state_dict(), FILE)"
#: torch.export's serialized scalar types (the ``ScalarType`` numbers of its versioned schema) -> dtype.
_PT2_DTYPES = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
               7: torch.float32, 8: torch.float64, 9: torch.complex32, 10: torch.complex64, 11: torch.complex128,
               12: torch.bool, 13: torch.bfloat16}


@dataclass(frozen=True)
class WeightsFile:
    """Which file a model's weights came from.

    Attributes:
        path: the file, as given.
        sha256: the hex SHA-256 of its bytes.
        kind: what it held, in words (``"state_dict"``, ``"checkpoint['model']"``, ``"safetensors"``, ...).
    """

    path: Path
    sha256: str
    kind: str
    #: ``(module name, class count)`` when the file's output layer had another class count than the built
    #: network's and that layer was rebuilt to fit it (``load_weights_file(..., fit_head=True)``), else None
    head: tuple[str, int] | None = None

    @property
    def label(self) -> str:
        """``"file:PATH sha256:PREFIX"`` (16 hex digits): what ``Model.weights`` and the JSON records hold."""
        return f"file:{self.path} sha256:{self.sha256[:16]}"


def weights_option(weights: str | None) -> str | None:
    """The ``--weights`` value that gives a model with :attr:`Model.weights` ``weights`` again: ``"random"``, a
    weights file's path (from ``"file:PATH sha256:PREFIX"``), or ``None`` (pretrained, the default, or unknown)."""
    if weights == "random":
        return weights
    if isinstance(weights, str) and weights.startswith("file:"):
        return weights[len("file:"):].rpartition(" sha256:")[0] or None
    return None


def load_weights_file(net: nn.Module, path: str | os.PathLike, *, name: str = "the model",
                      fit_head: bool = False) -> WeightsFile:
    """Load the weights file at ``path`` into ``net`` (in place; parameters keep their device and dtype).

    Args:
        net: the built network; its ``state_dict()`` names and shapes are what the file must match.
        path: the weights file (any format of the module docstring).
        name: the network's name, for messages (``"torchvision:resnet18"``).
        fit_head: when the only difference is the class count of the network's last ``nn.Linear`` (or 1x1
            ``nn.Conv2d``) output layer (a network fine-tuned to other classes), rebuild that layer with the
            file's count first (:func:`fit_output_layer`); the result's ``head`` says so.

    Returns:
        The :class:`WeightsFile` (path, SHA-256 and what it held).

    Raises:
        NnfeatError: one line, for a file that is missing, empty, unreadable, not a weights file, holding
            pickled code, needing ``safetensors`` when it is not installed, or not matching ``net`` (the first
            missing and unexpected keys and the first shape clash).
    """
    path = Path(path)
    state, kind = read_state_dict(path)
    state = strip_wrappers(state)
    head = fit_output_layer(net, state) if fit_head else None
    check_fits(state, net, path, name)
    net.load_state_dict(state, strict=False)  # check_fits allowed only absent num_batches_tracked counters
    return WeightsFile(path, sha256_of(path), kind, head)


def fit_output_layer(net: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """Rebuild ``net``'s output layer (in place) when ``state`` holds the same network with another class count.

    The output layer is the last ``nn.Linear`` or 1x1 ``nn.Conv2d`` registered in ``net``. It is rebuilt only
    when every name of ``state`` is one of ``net``'s, the shapes differ nowhere else, and the file's layer takes
    the same input width: ``weight`` (K, C[, 1, 1]) and ``bias`` (K,) -> a layer with K outputs.

    Returns:
        ``(the layer's name, K)`` when it was rebuilt, else None (then :func:`check_fits` says what differs).
    """
    want = net.state_dict()
    clashes = {k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)}
    if not clashes or any(k not in want for k in state):
        return None
    layers = [(n, m) for n, m in net.named_modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)]
    if not layers or not layers[-1][0]:
        return None
    layer_name, layer = layers[-1]
    prefix = f"{layer_name}."
    if not clashes <= {f"{prefix}weight", f"{prefix}bias"}:
        return None
    weight = state.get(f"{prefix}weight")
    width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if weight is None or weight.dim() < 2 or weight.shape[1] != width or tuple(weight.shape[2:]) != \
            tuple(layer.weight.shape[2:]):
        return None
    count = int(weight.shape[0])
    factory = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    bias = layer.bias is not None
    new = (nn.Linear(width, count, bias=bias, **factory) if isinstance(layer, nn.Linear)
           else nn.Conv2d(width, count, 1, bias=bias, **factory))
    parent = net.get_submodule(layer_name.rpartition(".")[0]) if "." in layer_name else net
    setattr(parent, layer_name.rpartition(".")[2], new)
    return layer_name, count


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file, as named in it, on the CPU.

    Returns:
        ``({name: tensor of any shape}, what the file held in words)``.

    Raises:
        NnfeatError: one line for a missing, empty, unreadable or unsafe file, or one that is no weights file.
    """
    path = Path(path)
    head = _head(path)
    if head.startswith(b"PK\x03\x04"):
        return _read_zip(path)
    if _looks_like_safetensors(head, path):
        return _read_safetensors(path), "safetensors"
    if not head.startswith(b"\x80"):  # torch.save's pickles start with the PROTO opcode
        raise _not_weights(path, "its first bytes are no pickle, zip or safetensors header")
    return tensor_dict(_torch_load(path), path)


def tensor_dict(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict in a loaded file: ``obj`` itself, or its first :data:`CHECKPOINT_KEYS` entry (then any
    entry) that is a tensor dict -> (the tensors, what held them). One-line error when there is none."""
    if _is_tensor_dict(obj):
        return dict(obj), "state_dict"
    if isinstance(obj, Mapping):
        keys = [k for k in CHECKPOINT_KEYS if k in obj] + [k for k in obj if k not in CHECKPOINT_KEYS]
        for key in keys:
            if _is_tensor_dict(obj[key]):
                return dict(obj[key]), f"checkpoint[{key!r}]"
        held = ", ".join(repr(k) for k in list(obj)[:SHOWN]) + _more(len(obj))
        raise NnfeatError(f"weights file {path} is a dict with no tensor dict in it (keys {held or 'none'}); "
                          f"expected a state_dict, or a checkpoint holding one under "
                          f"{', '.join(CHECKPOINT_KEYS[:4])}, ...: {_SAFE_SAVE}")
    raise NnfeatError(f"weights file {path} holds a {type(obj).__name__}, not a state_dict; {_SAFE_SAVE}")


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the :data:`WRAPPER_PREFIXES` taken off the front of every name
    (``module._orig_mod.conv1.weight`` -> ``conv1.weight``)."""
    stripped = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def check_fits(state: Mapping[str, torch.Tensor], net: nn.Module, path: Path, name: str) -> None:
    """Raise one line unless ``state`` has exactly ``net``'s state_dict names with the same shapes
    (an absent BatchNorm ``num_batches_tracked`` is allowed: it only counts training steps)."""
    want = net.state_dict()
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    clashes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(want[k].shape)}"
               for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or clashes):
        return
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:SHOWN])}{_more(len(missing))}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected[:SHOWN])}{_more(len(unexpected))}")
    if clashes:
        parts.append(f"shapes differ at {clashes[0]}" + (f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""))
    raise NnfeatError(f"weights file {path} does not fit {name}: {'; '.join(parts)}; "
                      f"{_fix(list(state), want, missing, unexpected)}")


# ---------------------------------------------------------------------------------------------------
def _fix(file_keys: list[str], want: Mapping[str, torch.Tensor], missing: list[str], unexpected: list[str]) -> str:
    """What would make a file that does not fit load."""
    if not (missing or unexpected):
        return ("it was saved from a variant of this network (other channel or class counts): build that variant "
                "(e.g. FILE.py:FACTORY) or use the file with the network it was saved from")
    first = {k.split(".", 1)[0] for k in file_keys}
    if len(first) == 1 and "." in file_keys[0]:
        prefix = f"{first.pop()}."
        if any(k[len(prefix):] in want for k in file_keys):
            return (f"its names all start with '{prefix}': save that part alone: "
                    f"torch.save(model.{prefix[:-1]}.state_dict(), FILE)")
    return ("it holds another network's weights: name the architecture it was saved from (nnfeat models lists "
            "them) or build it with FILE.py:FACTORY")


def _more(count: int) -> str:
    return f" and {count - SHOWN} more" if count > SHOWN else ""


def _head(path: Path) -> bytes:
    """The first 16 bytes of ``path``; one line for a file that is missing, a folder, empty or unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        raise NnfeatError(f"weights file {shorten(str(path))} not found; expected {FORMATS}") from None
    except IsADirectoryError:
        raise NnfeatError(f"weights file {path} is a folder; expected a file: {FORMATS}") from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise NnfeatError(f"cannot read weights file {shorten(str(path))} ({reason})") from None
    if not head:
        raise NnfeatError(f"weights file {path} is empty (0 bytes); expected {FORMATS}")
    return head


def _is_tensor_dict(obj: object) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()))


def _not_weights(path: Path, what: str) -> NnfeatError:
    return NnfeatError(f"{path} is not a weights file ({what}); expected {FORMATS}")


def _torch_load(path: Path, data: bytes | None = None) -> object:
    """``torch.load(weights_only=True)`` of ``data`` (default: the file at ``path``): a pickle that would import
    or call code is refused, and none of it runs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's concern
            return torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = " ".join(str(err).split())
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise NnfeatError(
                f"weights file {path} holds a pickled Python object ({found.group(1)}), which nnfeat never "
                f"loads: pickles run code; {_SAFE_SAVE}, or use safetensors") from None
        operand = re.search(r"Unsupported operand \d+", text)
        why = operand.group(0) if operand else "unreadable"
        raise _not_weights(path, f"a pickle that torch's safe loader refuses, {why}; none of it ran") from None
    except Exception as err:  # noqa: BLE001 - any other failure: the bytes are not a torch file
        raise _not_weights(path, f"torch.load: {type(err).__name__}") from None


# ---------------------------------------------------------------------------------------------------
def _read_zip(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A zip archive: torch.save's, TorchScript's or torch.export's, told apart by the names inside."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("archive_format") for n in names):
                return _read_pt2(path, archive, names), "torch.export program"
    except zipfile.BadZipFile as err:
        raise _not_weights(path, f"a broken zip archive: {err}") from None
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return _read_torchscript(path), "TorchScript"
    if any(n.endswith("data.pkl") for n in names):
        return tensor_dict(_torch_load(path), path)
    raise _not_weights(path, "a zip archive without torch data")


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a TorchScript file. ``torch.jit.load`` has its own loader, which builds TorchScript
    objects and never imports or calls Python code; the scripted module is read for its tensors only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a broken archive of any kind
        raise _not_weights(path, f"TorchScript that does not load: {type(err).__name__}") from None
    return {k: v.detach() for k, v in scripted.state_dict().items()}


def _read_pt2(path: Path, archive: zipfile.ZipFile, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights of a torch.export archive (``data/weights/<model>_weights_config.json`` and the raw tensor
    payloads it lists; pickled payloads only through the safe loader)."""
    configs = sorted(n for n in names if re.search(r"(^|/)data/weights/[^/]+_weights_config\.json$", n))
    configs.sort(key=lambda n: not n.endswith("/model_weights_config.json"))  # the default program first
    legacy = [n for n in names if re.search(r"(^|/)data/weights/[^/]+\.pt$", n)]
    if not configs:
        if legacy:
            return tensor_dict(_torch_load(path, archive.read(legacy[0])), path)[0]
        raise _not_weights(path, "a .pt2 archive without weights")
    folder = configs[0].rpartition("/")[0]
    try:
        entries = json.loads(archive.read(configs[0]))["config"]
        state = {fqn: _pt2_tensor(path, archive, f"{folder}/{meta['path_name']}", meta)
                 for fqn, meta in entries.items()}
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise _not_weights(path, f"a broken .pt2 weights table: {type(err).__name__}") from None
    return state


def _pt2_tensor(path: Path, archive: zipfile.ZipFile, member: str, meta: dict) -> torch.Tensor:
    """One weight of a .pt2 archive: raw bytes viewed with its dtype, sizes, strides and offset."""
    data = archive.read(member)
    if meta.get("use_pickle"):
        return _pickled_tensor(path, data)
    spec = meta["tensor_meta"]
    dtype = _PT2_DTYPES.get(spec["dtype"])
    if dtype is None:
        raise _not_weights(path, f"a .pt2 weight of serialized dtype {spec['dtype']}, which nnfeat does not read")
    sizes = [int(s["as_int"]) for s in spec["sizes"]]
    if not data:
        return torch.zeros(sizes, dtype=dtype)
    flat = torch.frombuffer(bytearray(data), dtype=dtype)
    strides = [int(s["as_int"]) for s in spec["strides"]]
    return torch.as_strided(flat, sizes, strides, int(spec["storage_offset"]["as_int"])).clone()


def _pickled_tensor(path: Path, data: bytes) -> torch.Tensor:
    loaded = _torch_load(path, data)
    if not torch.is_tensor(loaded):
        raise _not_weights(path, f"a .pt2 weight that is a {type(loaded).__name__}")
    return loaded


# ---------------------------------------------------------------------------------------------------
def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header (``{``)."""
    if path.suffix == ".safetensors":
        return True
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file  # optional extra: safetensors files only
    except ImportError:
        raise NnfeatError(f"weights file {path} is safetensors, which needs the safetensors package: "
                          "pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors' own errors name the broken header
        reason = " ".join(str(err).split())[:120]
        raise _not_weights(path, f"safetensors that does not load: {reason or type(err).__name__}") from None


__all__ = ["CHECKPOINT_KEYS", "FORMATS", "WRAPPER_PREFIXES", "WeightsFile", "check_fits", "load_weights_file",
           "read_state_dict", "strip_wrappers", "tensor_dict", "weights_option"]
