"""Whole-layer renders: one image per channel, many channels per batch, resumable.

Outputs in ``out``: ``channel-<c>.png`` per channel, ``contact.png`` (all channels, in order) and
``microscope.json`` (settings and each channel's final objective value). ``microscope.json`` is
rewritten atomically after every batch; a re-run with the same settings skips finished channels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nnfeat.errors import NnfeatError
from nnfeat.io import read_json, save_grid, save_image, write_json
from nnfeat.layouts import channel_count
from nnfeat.models.base import Model
from nnfeat.objectives import channel as channel_objective
from nnfeat.rendering import render


def _json_value(value):
    """A settings value as JSON: tensors (a maco spectrum) become a short content digest."""
    if torch.is_tensor(value):
        import hashlib

        data = value.detach().cpu().contiguous().float().numpy().tobytes()
        return {"tensor": list(value.shape), "sha256": hashlib.sha256(data).hexdigest()[:16]}
    return value


def microscope(model: Model, layer: str, channels: str | list[int] | None, *, out: Path, batch: int = 16,
               images: str | None = None, model_name: str | None = None, progress: bool = True,
               examples_k: int = 4, **render_kwargs) -> dict:
    """Render every channel in ``channels`` of ``layer`` (``"A:B"``, a list, or None for all).

    Returns the ``microscope.json`` content: ``{"settings": ..., "channels": {c: {"value", "image"}}}``.
    """
    from nnfeat.cli import parse_channel_range

    model.check_layer(layer)
    size = render_kwargs.get("size") or model.input_size[0]
    render_kwargs["size"] = size
    n_channels = channel_count(tuple(model.layer_shapes([layer], (size, size))[layer][1:]))
    if channels is None:
        channel_list = list(range(n_channels))
    elif isinstance(channels, str):
        channel_list = parse_channel_range(channels, n_channels, layer)
    else:
        channel_list = parse_channel_range(",".join(map(str, channels)), n_channels, layer)
    if batch < 1:
        raise NnfeatError(f"--batch must be at least 1; got {batch}")

    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "microscope.json"
    settings = {"model": model_name or model.name, "layer": layer, "batch": batch,
                **{k: _json_value(v) for k, v in render_kwargs.items() if k != "progress"}}
    manifest = {"settings": settings, "channels": {}}
    if manifest_path.exists():
        previous = read_json(manifest_path)
        if previous.get("settings") == settings:
            manifest = previous
    done = {int(c) for c in manifest["channels"] if (out / f"channel-{c}.png").exists()}
    # Chunks are fixed by the channel list, so a resumed run renders exactly the batches an uninterrupted one would.
    chunks = [channel_list[i:i + batch] for i in range(0, len(channel_list), batch)]
    todo = [chunk for chunk in chunks if not set(chunk) <= done]

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc=f"microscope {layer}", unit="batch")
    for chunk in todo:
        kwargs = dict(render_kwargs)
        kwargs["seed"] = int(render_kwargs.get("seed", 0)) * 100003 + chunk[0]
        result = render(model, channel_objective(layer, chunk), batch=len(chunk), progress=False, **kwargs)
        for c, image, value in zip(chunk, result.images, result.final_values.tolist()):
            save_image(out / f"channel-{c}.png", image)
            manifest["channels"][str(c)] = {"value": value, "image": f"channel-{c}.png"}
        write_json(manifest_path, manifest)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    from PIL import Image
    import numpy as np

    rendered = torch.stack([
        torch.from_numpy(np.array(Image.open(out / f"channel-{c}.png").convert("RGB"))).permute(2, 0, 1).float() / 255
        for c in channel_list
    ])
    sheet = rendered
    if images:
        sheet = rows_with_examples(model, layer, channel_list, rendered, images, k=examples_k)
        save_grid(out / "contact.png", sheet, ncol=1 + examples_k)
    else:
        save_grid(out / "contact.png", sheet)
    manifest["contact"] = "contact.png"
    write_json(manifest_path, manifest)
    print(f"wrote {len(channel_list)} channel renders and {out / 'contact.png'}")
    return manifest


def rows_with_examples(model: Model, layer: str, channels: list[int], rendered: torch.Tensor, source: str,
                       k: int = 4) -> torch.Tensor:
    """Contact-sheet rows: each channel's render (B,3,H,W) followed by its top-``k`` dataset examples.

    Returns (len(channels) * (1 + k), 3, H, W), row-major, for ``save_grid(..., ncol=1 + k)``.
    """
    import torch.nn.functional as F

    from nnfeat.data import load_images
    from nnfeat.examples import example_images, top_examples

    image_set = load_images(source, size=model.input_size)
    found = top_examples(model, layer, channels, image_set, k=k)
    size = tuple(rendered.shape[-2:])
    tiles = []
    for c, render_image in zip(channels, rendered):
        examples = example_images(image_set, found[c].top, model.input_size)
        examples = F.interpolate(examples, size=size, mode="bilinear", align_corners=False)
        blank = torch.ones(k - len(examples), 3, *size)
        tiles.append(torch.cat([render_image.unsqueeze(0), examples, blank]))
    return torch.cat(tiles)
