"""Images as they are: folder sources of other shapes and channel counts are fitted by a stated policy
(``--fit``), said once and recorded; captions name the files; small sources get defaults that fit them."""

import json

import numpy as np
import pytest
from PIL import Image

from nnfeat import cli
from nnfeat.data import load_images

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _wide_and_grey(folder):
    """A 64x48 RGB image (left half red, right half green) in cat/ and a 32x32 grey ramp in dog/."""
    wide = np.zeros((48, 64, 3), np.uint8)
    wide[:, :32] = RED
    wide[:, 32:] = GREEN
    (folder / "cat").mkdir(parents=True)
    (folder / "dog").mkdir()
    Image.fromarray(wide).save(folder / "cat" / "wide.png")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8), "L").save(folder / "dog" / "grey.png")
    return folder


def _tensor(folder, fit):
    images = load_images(folder)
    images.size, images.fit = (32, 32), fit
    return images.tensors([0], (32, 32))[0]  # (3, 32, 32): the wide image


def test_fit_geometry(tmp_path):
    folder = _wide_and_grey(tmp_path / "f")
    pad, crop, stretch = (_tensor(folder, fit) for fit in ("pad", "crop", "stretch"))
    assert pad.shape == crop.shape == stretch.shape == (3, 32, 32)
    # pad: 64x48 -> 32x24 centred, a 4-row bar above and below of the image's mean colour (half red, half green)
    mean = np.round(np.array([127.5, 127.5, 0.0])) / 255
    for bar in (pad[:, :4], pad[:, -4:]):
        assert np.allclose(bar.permute(1, 2, 0).reshape(-1, 3).numpy(), mean, atol=1 / 255)
    assert pad[0, 16, 2] > 0.99 and pad[1, 16, -3] > 0.99  # the picture itself: red left, green right
    # crop: 64x48 -> 43x32, the centre 32 columns kept: red and green meet in the middle, no padding rows
    assert crop[0, 0, 2] > 0.99 and crop[1, -1, -3] > 0.99
    assert crop[0, :, :14].min() > 0.99 and crop[1, :, 18:].min() > 0.99
    # stretch: the whole image fills the square, red exactly on the left half
    assert stretch[0, :, :15].min() > 0.99 and stretch[1, :, 17:].min() > 0.99
    assert not np.allclose(pad.numpy(), stretch.numpy()) and not np.allclose(crop.numpy(), stretch.numpy())


def test_same_size_sources_untouched(tmp_path):
    folder = tmp_path / "sq"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    images = load_images(folder)
    for fit in ("pad", "crop", "stretch"):
        images.fit = fit
        assert np.array_equal(images.read([0], (32, 32))[0], pixels)
    assert images.survey((32, 32)) == {"fitted": 0, "grey": 0, "colour": 1}
    assert images.names == ["a.png"] and load_images("digits").names is None
    assert load_images("digits").command_options() == {"images": "digits", "n": None, "seed": None, "fit": None}


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_heatmap_records_fit_and_names(tmp_path, capsys, fit):
    folder = _wide_and_grey(tmp_path / "f")
    out = tmp_path / "out"
    assert cli.main(["heatmap", "digits-cnn", "relu1", "--weights", "random", "--images", str(folder), "--fit", fit,
                     "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert said.count("note: 1 of 2 images are not 32x32") == 1 and f"fitted by {fit}" in said
    assert said.count("colour; converted to grey") == 1
    record = json.loads((out / "heatmap.json").read_text())
    assert record["image_fit"] == {"policy": fit, "fitted": 1, "of": 2, "size": [32, 32]}
    assert [image["name"] for image in record["images"]] == ["cat/wide.png", "dog/grey.png"]
    assert record["input_size"] == [32, 32]


def test_heatmap_captions_name_files(tmp_path):
    from nnfeat.models import load_model
    from nnfeat.ops.heatmap import heatmap

    images = load_images(_wide_and_grey(tmp_path / "f"))
    result = heatmap(load_model("digits-cnn", weights="random", device="cpu"), "relu1", images, top=2)
    assert result.image_caption(0).splitlines()[0] == "cat/wide.png"
    assert result.captions()[3].startswith("dog/grey.png")
    digits = heatmap(load_model("digits-cnn", weights="random", device="cpu"), "relu1", load_images("digits", limit=2))
    assert digits.image_caption(1).startswith("image 1") and "name" not in digits.record()["images"][0]


def test_same_size_folder_records_no_fit(tmp_path, capsys):
    folder = tmp_path / "sq"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert cli.main(["heatmap", "digits-cnn", "relu1", "--weights", "random", "--images", str(folder),
                     "--out", str(out), "--quiet"]) == 0
    assert "fitted by" not in capsys.readouterr().out
    assert "image_fit" not in json.loads((out / "heatmap.json").read_text())


def test_project_small_folder_default_k(tmp_path, capsys):
    folder = _wide_and_grey(tmp_path / "f")
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "cat" / f"{i:03d}.png")
    out = tmp_path / "out"
    assert cli.main(["project", "digits-cnn", "relu1", "--weights", "random", "--images", str(folder),
                     "--method", "pca", "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "note: --k 3 " in said and said.count("fitted by pad") == 1
    record = json.loads((out / "projection.json").read_text())
    assert record["k"] == 3 and record["image_fit"]["policy"] == "pad"
    # an explicit --k out of range stays an error
    assert cli.main(["project", "digits-cnn", "relu1", "--weights", "random", "--images", str(folder),
                     "--method", "pca", "--k", "4", "--out", str(out), "--quiet"]) != 0
    assert "--k 4 is out of range for 8 images" in capsys.readouterr().err
