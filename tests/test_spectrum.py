"""nnfeat.engine.spectrum: the dataset mean Fourier magnitude for MACO, its cache, and the `spectrum` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnfeat.errors import NnfeatError
from nnfeat.engine.param import COLOR_CORRELATION_SQRT, image_param
from nnfeat.engine.spectrum import (
    dataset_spectrum,
    image_magnitudes,
    load_spectrum,
    power_law_spectrum,
    save_spectrum,
    spectrum_cache_path,
    spectrum_picture,
)


def _npz(path, n=12, h=10, w=14, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    np.savez(path, images=images)
    return path, images


def _numpy_spectrum(images: np.ndarray, space: str) -> np.ndarray:
    """Independent reference: mean over images of |orthonormal rfft2| of each centred channel."""
    x = images.astype(np.float64) / 255.0  # (N, H, W, 3)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    x = np.moveaxis(x, -1, 1)  # (N, 3, H, W)
    if space == "param":
        d = COLOR_CORRELATION_SQRT.double().numpy()
        d = d / np.linalg.norm(d, axis=0).max()
        x = 4.0 * np.einsum("oc,nchw->nohw", np.linalg.inv(d), x)
    return np.abs(np.fft.rfft2(x, norm="ortho")).mean(0)


@pytest.mark.parametrize("space", ["pixel", "param"])
def test_dataset_spectrum_matches_numpy_reference(tmp_path, space):
    path, images = _npz(tmp_path / "set.npz")
    magnitude = dataset_spectrum(str(path), (10, 14), space=space, cache=False)
    assert magnitude.shape == (3, 10, 8) and magnitude.dtype == torch.float32
    np.testing.assert_allclose(magnitude.numpy(), _numpy_spectrum(images, space), rtol=1e-4, atol=1e-6)
    assert float(magnitude[:, 0, 0].abs().max()) == 0.0  # each image's own mean is removed: no DC


def test_parseval_energy_of_pixel_magnitudes():
    images = torch.rand(3, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    power = image_magnitudes(images, "pixel").pow(2)
    weight = torch.full((12 // 2 + 1,), 2.0)
    weight[0] = weight[-1] = 1.0  # columns stored once in an rfft of even width
    centred = images - images.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close((power * weight).sum((-2, -1)), centred.pow(2).sum((-2, -1)), rtol=1e-4, atol=1e-5)


def test_resizes_to_the_requested_size_and_caches(tmp_path):
    path, _ = _npz(tmp_path / "set.npz", n=5, h=20, w=20)
    first = dataset_spectrum(str(path), 8)
    assert first.shape == (3, 8, 5)
    from nnfeat.data import load_images

    cache = spectrum_cache_path(load_images(str(path)), (8, 8), "param")
    assert cache.is_file() and cache.parent.name == "spectra"
    torch.testing.assert_close(load_spectrum(cache), first)
    # the cached file is what a second call returns (put a marker in it to prove it is read)
    save_spectrum(cache, torch.full_like(first, 7.0))
    assert torch.all(dataset_spectrum(str(path), 8) == 7.0)
    # other images, size or space: another cache entry
    other, _ = _npz(tmp_path / "other.npz", n=5, h=20, w=20, seed=3)
    assert spectrum_cache_path(load_images(str(other)), (8, 8), "param") != cache
    assert spectrum_cache_path(load_images(str(path)), (8, 10), "param") != cache
    assert spectrum_cache_path(load_images(str(path)), (8, 8), "pixel") != cache


def test_limit_uses_the_first_images(tmp_path):
    path, images = _npz(tmp_path / "set.npz", n=9, h=6, w=6)
    limited = dataset_spectrum(str(path), 6, space="pixel", limit=4, cache=False)
    np.testing.assert_allclose(limited.numpy(), _numpy_spectrum(images[:4], "pixel"), rtol=1e-4, atol=1e-6)
    with pytest.raises(NnfeatError, match="--limit"):
        dataset_spectrum(str(path), 6, limit=0, cache=False)


def test_maco_with_a_pixel_spectrum_has_dataset_like_contrast(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.15, size=(40, 16, 16, 1)).clip(0, 1)
    images = (np.repeat(base, 3, axis=-1) * 255).astype(np.uint8)
    np.savez(tmp_path / "grey.npz", images=images)
    magnitude = dataset_spectrum(str(tmp_path / "grey.npz"), 16, space="pixel", cache=False)
    param = image_param("maco", 16, 4, magnitude=magnitude, decorrelate=False, squash="clamp",
                        generator=torch.Generator().manual_seed(0))
    rendered_std = float(param().detach().std(dim=(-2, -1)).mean())
    data_std = float((images / 255.0).std(axis=(1, 2)).mean())
    assert 0.7 < rendered_std / data_std < 1.3


def test_power_law_spectrum_has_the_requested_contrast():
    magnitude = power_law_spectrum((16, 16), contrast=0.2, space="pixel")
    assert magnitude.shape == (3, 16, 9) and float(magnitude[:, 0, 0].abs().max()) == 0.0
    weight = torch.full((9,), 2.0)
    weight[0] = weight[-1] = 1.0
    energy = (magnitude.pow(2) * weight).sum((-2, -1))  # = H * W * std^2 by Parseval
    torch.testing.assert_close(energy, torch.full((3,), 16 * 16 * 0.2**2))
    param_space = power_law_spectrum((16, 16), contrast=0.2)
    assert torch.all(param_space[:, 1:, 1:] > magnitude[:, 1:, 1:])  # sigmoid gain and colour whitening


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(NnfeatError, match="unknown spectrum space 'log'"):
        dataset_spectrum("digits", 8, space="log")
    with pytest.raises(NnfeatError, match="not found"):
        load_spectrum(tmp_path / "missing.pt")
    torch.save({"magnitude": torch.zeros(2, 4, 3)}, tmp_path / "bad.pt")
    with pytest.raises(NnfeatError, match=r"\(3, H, W//2\+1\)"):
        load_spectrum(tmp_path / "bad.pt")
    with pytest.raises(NnfeatError, match="at least 2x2"):
        dataset_spectrum("digits", 1)


def test_picture_is_in_unit_range():
    picture = spectrum_picture(power_law_spectrum(12))
    assert picture.shape == (3, 12, 7) and float(picture.min()) == 0.0 and float(picture.max()) == 1.0


def test_spectrum_command(tmp_path, capsys):
    path, images = _npz(tmp_path / "set.npz", n=6, h=12, w=12)
    from nnfeat.cli import build_parser

    args = build_parser().parse_args(["spectrum", "--images", str(path), "--space", "pixel", "--out", str(tmp_path / "s.pt"),
                              "--png", str(tmp_path / "s.png"), "--quiet"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "spectrum of 6 images at 12x12 (pixel space)" in printed and str(tmp_path / "s.pt") in printed
    np.testing.assert_allclose(load_spectrum(tmp_path / "s.pt").numpy(), _numpy_spectrum(images, "pixel"),
                               rtol=1e-4, atol=1e-6)
    assert (tmp_path / "s.png").is_file()


def test_spectrum_command_through_the_cli(tmp_path, capsys):
    from nnfeat import cli

    path, _ = _npz(tmp_path / "set.npz", n=4, h=8, w=8)
    assert cli.main(["spectrum", "--images", str(path), "--size", "6", "--n", "3", "--quiet"]) == 0
    assert "spectrum of 3 images at 6x6 (param space)" in capsys.readouterr().out
    assert cli.main(["spectrum", "--images", str(tmp_path / "none.npz")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "models").is_dir(),
                    reason="../shared is absent (CI has it)")
def test_render_and_microscope_take_a_spectrum_file(tmp_path, capsys):
    """`nnfeat spectrum --out` -> `nnfeat render --spectrum` (maco) and `nnfeat microscope --spectrum`;
    a spectrum of another size, maco without a spectrum, and a spectrum with another param are one-line errors."""
    from nnfeat import cli

    path, _ = _npz(tmp_path / "set.npz", n=8, h=32, w=32)
    spectrum = tmp_path / "s.pt"
    assert cli.main(["spectrum", "--images", str(path), "--out", str(spectrum), "--quiet"]) == 0
    out = tmp_path / "render"
    assert cli.main(["render", "cifar10-resnet20", "layer3:5", "--spectrum", str(spectrum), "--steps", "4",
                     "--quiet", "--out", str(out)]) == 0
    settings = json.loads((out / "render.json").read_text())["settings"]
    assert settings["param"] == "MagnitudeConstrainedImage" and settings["size"] == [32, 32]
    micro = tmp_path / "micro"
    assert cli.main(["microscope", "cifar10-resnet20", "layer1:0..1", "--batch", "2", "--steps", "2",
                     "--spectrum", str(spectrum), "--quiet", "--out", str(micro)]) == 0
    assert json.loads((micro / "microscope.json").read_text())["settings"]["spectrum"]["tensor"] == [3, 32, 17]
    capsys.readouterr()
    for extra, fragment in ((["--spectrum", str(spectrum), "--size", "48"], "--size 48"),
                            (["--param", "maco"], "needs --spectrum"),
                            (["--spectrum", str(spectrum), "--param", "pixel"], "not --param pixel")):
        assert cli.main(["render", "cifar10-resnet20", "layer3:5", "--steps", "2", "--quiet",
                         "--out", str(tmp_path / "bad"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, err


def test_spectrum_operation_returns_a_result(tmp_path):
    """nnfeat.ops.spectrum.spectrum: the engine's magnitude as a Result (images, save, record with the command)."""
    from nnfeat.data import load_images
    from nnfeat.ops.spectrum import SpectrumResult, spectrum

    path, images = _npz(tmp_path / "set.npz", n=6, h=12, w=12)
    result = spectrum(load_images(str(path)).sample(4, 1), space="pixel", cache=False)
    assert isinstance(result, SpectrumResult) and result.size == (12, 12) and result.count == 4
    torch.testing.assert_close(result.magnitude, dataset_spectrum(load_images(str(path)).sample(4, 1), 12,
                                                                  space="pixel", cache=False))
    assert result.images.shape == (1, 3, 12, 7) and float(result.images.max()) == 1.0
    assert result.command == f"nnfeat spectrum --images {path} --n 4 --seed 1 --space pixel"
    record = json.loads(result.save(tmp_path / "out").read_text())
    assert record["kind"] == "spectrum" and record["size"] == [12, 12] and record["space"] == "pixel"
    assert set(record["files"]) == {"spectrum.png", "spectrum.pt"} and record["cache"] is None
    torch.testing.assert_close(load_spectrum(tmp_path / "out" / "spectrum.pt"), result.magnitude)
    assert "spectrum" in result._repr_html_() and spectrum(str(path), 8, cache=False).magnitude.shape == (3, 8, 5)


def test_a_saved_spectrum_has_the_same_bytes_wherever_it_is_written(tmp_path):
    """``torch.save`` to a path names the archive's inner folder after the (temporary) file; the spectrum file is
    written so that the same spectrum gives the same bytes under any name."""
    from nnfeat.engine.spectrum import load_spectrum, save_spectrum

    magnitude = torch.rand((3, 8, 5), generator=torch.Generator().manual_seed(0))
    a = save_spectrum(tmp_path / "a.pt", magnitude, {"size": 8})
    b = save_spectrum(tmp_path / "other-name.npz", magnitude, {"size": 8})
    assert a.read_bytes() == b.read_bytes()
    assert torch.equal(load_spectrum(b), magnitude)
