"""Find a weights file locally, or download it once, and check its SHA-256.

Search order for ``fetch_weights(filename, url)``:

1. ``$NNFEAT_HOME/weights/`` (``NNFEAT_HOME`` defaults to ``~/.cache/nnfeat``);
2. each directory of ``$NNFEAT_WEIGHTS_PATH`` (separated by ``os.pathsep``), in order;
3. otherwise ``url`` is downloaded into ``$NNFEAT_HOME/weights/`` (via a temporary file in the same
   directory and one rename, so a broken download never leaves a partial file behind).

The expected hash prefix comes from ``sha256_prefix`` or, as in torch hub, from a file name of the
form ``name-<hex>.ext`` (``resnet20-12fca82f.th`` -> ``12fca82f``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from nnfeat.errors import NnfeatError
from nnfeat.io import nnfeat_home
from nnfeat.progress import progress_bar

_HUB_HASH = re.compile(r"-([0-9a-fA-F]{8,64})$")
_CHUNK = 1 << 20


def weights_dir() -> Path:
    """Where downloaded weights are stored: ``nnfeat_home() / "weights"`` (not created here)."""
    return nnfeat_home() / "weights"


def search_dirs() -> list[Path]:
    """Directories searched for weights files, in order: ``weights_dir()``, then ``$NNFEAT_WEIGHTS_PATH``."""
    extra = os.environ.get("NNFEAT_WEIGHTS_PATH", "")
    return [weights_dir(), *(Path(p).expanduser() for p in extra.split(os.pathsep) if p)]


def hash_prefix_from_name(filename: str) -> str | None:
    """The torch-hub-style hash in ``name-<hex>.ext``, lower-cased, or ``None`` if the name has none."""
    match = _HUB_HASH.search(Path(filename).name.split(".", 1)[0])
    return match.group(1).lower() if match else None


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(what: str, digest: str, prefix: str | None, fix: str) -> None:
    if prefix and not digest.startswith(prefix):
        raise NnfeatError(
            f"{what} is corrupt or not the expected file: SHA-256 starts with {digest[:len(prefix)]}, "
            f"expected {prefix}; {fix}"
        )


def fetch_weights(filename: str, url: str, *, sha256_prefix: str | None = None, progress: bool = True) -> Path:
    """Path to a verified local copy of ``filename``, downloading it from ``url`` if no copy exists.

    Raises a one-line :class:`NnfeatError` if a found file has the wrong SHA-256 prefix, or if no
    copy exists and the download fails (the message says where to put the file by hand).
    """
    if Path(filename).name != filename or not filename:
        raise NnfeatError(f"weights file name must be a bare file name, got '{filename}'")
    prefix = (sha256_prefix or hash_prefix_from_name(filename) or "").lower() or None
    candidate = find_local(filename)
    if candidate is not None:
        fix = f"delete it and fetch it again from {url}"
        if candidate.stat().st_size == 0:
            raise NnfeatError(f"weights file {candidate} is empty (0 bytes); {fix}")
        _check_hash(f"weights file {candidate}", sha256_of(candidate), prefix, fix)
        return candidate
    return _download(filename, url, prefix, progress)


def find_local(filename: str) -> Path | None:
    """The first ``directory / filename`` of :func:`search_dirs` that is a file, or ``None`` (no hashing)."""
    return next((d / filename for d in search_dirs() if (d / filename).is_file()), None)


def _download(filename: str, url: str, prefix: str | None, progress: bool) -> Path:
    """Download ``url`` to ``weights_dir() / filename`` atomically; verify ``prefix`` before the rename."""
    target = weights_dir() / filename
    where = f"{weights_dir()} or a directory on NNFEAT_WEIGHTS_PATH"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".part")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise NnfeatError(f"cannot write weights to {target.parent} ({reason}); put {filename} in {where}") from None
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = progress_bar(total, filename, enabled=progress, unit="B", unit_scale=True, unit_divisor=1024)
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
        _check_hash(f"weights file {filename} downloaded from {url}", digest.hexdigest(), prefix, "check the URL")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        else:
            reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or type(err).__name__
        reason = " ".join(str(reason).split())
        raise NnfeatError(
            f"weights file {filename} not found locally and download failed ({reason}); "
            f"put it in {where} (get it from {url})"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target

