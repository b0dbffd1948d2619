"""The one progress-bar helper: a tqdm bar on stderr (a widget in Jupyter), or a no-op when disabled."""

from __future__ import annotations


class _NoBar:
    """Stands in for a bar when progress is off: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "it", initial: int = 0,
                 leave: bool = False, **kwargs):
    """``tqdm.auto.tqdm(total=..., desc=..., unit=...)`` when ``enabled``, else an object with the same
    ``update``/``set_postfix_str``/``close`` that does nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm  # lazy: tqdm.auto probes for Jupyter widgets when imported; a quiet run never does

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, **kwargs)


__all__ = ["progress_bar"]
