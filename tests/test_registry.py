"""The registry of model cards: `nnfeat models`, the cards' facts against the real networks, timm:NAME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnfeat.device import resolve_device
from nnfeat.errors import NnfeatError
from nnfeat.models import cards, digits, find_card, get_card, known_models, load_model
from nnfeat.models.registry import PUBLISHED, TRAINED, zoo_cards

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
needs_shared = pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason="../shared/models is absent")
VIT = "timm:vit_tiny_patch16_224"


def run_python(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def nnfeat_models(home: Path, weights_path: str, *extra: str) -> subprocess.CompletedProcess:
    proc = run_python("-m", "nnfeat.cli", "models", *extra,
                      env_extra={"NNFEAT_HOME": str(home), "NNFEAT_WEIGHTS_PATH": weights_path})
    assert proc.returncode == 0, proc.stderr
    return proc


def table(stdout: str) -> dict[str, str]:
    """``nnfeat models`` output -> {name: its line}; checks the columns line up under the header."""
    header, *lines = stdout.splitlines()
    starts = [header.index(column) for column in ("input", "classes", "licence", "weights")]
    for line in lines:
        for start in starts:
            assert line[start - 2 : start] == "  " and line[start] != " ", f"misaligned: {line!r}"
    return {line.split()[0]: line for line in lines}


# --- nnfeat models --------------------------------------------------------------------------------------
@needs_shared
def test_models_command_lists_every_card_and_where_its_weights_are(tmp_path):
    local = table(nnfeat_models(tmp_path / "home", str(SHARED_MODELS)).stdout)
    assert list(local) == known_models()
    r20 = local["cifar10-resnet20"]
    assert f"local: {SHARED_MODELS / 'resnet20-12fca82f.th'}" in r20
    assert "32x32 RGB" in r20 and "10: airplane, automobile, bird" in r20 and "BSD-2-Clause" in r20
    assert "32x32 grey" in local["digits-cnn"] and "trained on first use" in local["digits-cnn"]
    assert "1008" in local["inceptionv1"] and "downloadable: https://" in local["inceptionv1"]
    assert "timm" in local["timm:NAME"] and "torch hub" in local["torchvision:NAME"]

    empty = table(nnfeat_models(tmp_path / "home", "").stdout)
    assert list(empty) == known_models()
    assert "downloadable: https://github.com/akamaster/" in empty["cifar10-resnet20"]
    assert "local:" not in empty["cifar10-resnet20"]


def test_models_json_and_cached_digits(tmp_path):
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    (home / "weights" / digits.CACHE_FILE).write_bytes(b"")  # only its existence is checked
    listed = json.loads(nnfeat_models(home, "", "--json").stdout)
    assert [card["name"] for card in listed] == known_models()
    by_name = {card["name"]: card for card in listed}
    assert by_name["digits-cnn"]["weights_status"] == f"cached: {home / 'weights' / digits.CACHE_FILE}"
    assert by_name["digits-cnn"]["in_channels"] == 1 and by_name["digits-cnn"]["colour"] == "grey"
    assert by_name["cifar10-resnet56"]["sha256_prefix"] == "4bfd9763"
    assert by_name["timm:NAME"]["pattern"] is True


# --- the cards' facts ----------------------------------------------------------------------------------
def test_every_name_is_listed_once_and_patterns_resolve():
    names = known_models()
    assert len(names) == len(set(names)) == len(cards())
    assert {"timm:NAME", "torchvision:NAME", "FILE.py:FACTORY"} <= set(names)
    assert find_card("timm:resnet18") == (get_card("timm:NAME"), "resnet18")
    assert find_card("torchvision:resnet18") == (get_card("torchvision:NAME"), "resnet18")
    assert find_card("cifar10-resnet20") == (get_card("cifar10-resnet20"), None)
    assert find_card("net.py:make") == (get_card("FILE.py:FACTORY"), "net.py:make")
    with pytest.raises(NnfeatError, match="did you mean digits-cnn"):
        find_card("digit-cnn")


#: the cards of networks that take images (token models' cards have no normalization or pixel size)
IMAGE_CARDS = [card for card in cards() if card.modality == "images"]


@pytest.mark.parametrize("card", IMAGE_CARDS, ids=lambda card: card.name)
def test_card_normalization_matches_its_channels(card):
    if card.pattern:
        assert card.mean is None and card.std is None  # per model: read from the library when loaded
        return
    assert len(card.mean) == len(card.std) == card.in_channels
    assert card.colour == {3: "RGB", 1: "grey"}[card.in_channels]
    assert all(s > 0 for s in card.std) and len(card.input_size) == 2
    assert card.licence and card.summary and card.weights_source in (PUBLISHED, TRAINED)
    if card.weights_source == PUBLISHED:
        assert card.weights_url.startswith("https://") and card.weights_url.endswith(card.weights_file)


@pytest.mark.parametrize("card", [c for c in zoo_cards() if c.modality == "images"], ids=lambda card: card.name)
def test_card_facts_match_the_network_it_builds(card):
    model = load_model(card.name, weights="random", device="cpu")
    assert model.name == card.name and model.card is card and model.weights == "random"
    assert model.in_channels == card.in_channels and model.input_size == card.input_size
    assert torch.allclose(model.mean.flatten(), torch.tensor(card.mean))
    assert torch.allclose(model.std.flatten(), torch.tensor(card.std))
    assert model.classes == (list(card.classes) if card.classes else None)
    with torch.no_grad():
        logits = model(torch.full((1, 3, *card.input_size), 0.5))
    assert logits.shape == (1, card.num_classes)


def test_digits_card_normalization_is_its_training_data():
    train_x, _ = digits.digits_dataset("train", rgb=False)
    assert get_card("digits-cnn").mean == (train_x.mean().item(),)
    assert get_card("digits-cnn").std == (train_x.std().item(),)


@needs_shared
def test_pretrained_model_records_weights_and_card(cifar_resnet20):
    assert cifar_resnet20.weights == "pretrained"
    assert cifar_resnet20.card.name == "cifar10-resnet20"
    assert cifar_resnet20.card.weights_status() == f"local: {SHARED_MODELS / 'resnet20-12fca82f.th'}"


def test_device_auto_is_the_default_and_none_leaves_it():
    assert load_model("cifar10-resnet20", weights="random").device == resolve_device("auto")
    assert load_model("cifar10-resnet20", weights="random", device=None).device == torch.device("cpu")


def test_family_models_get_a_concrete_card(tmp_path):
    resnet = load_model("torchvision:resnet18", weights="random", device="cpu")
    assert resnet.card.name == "torchvision:resnet18" and not resnet.card.pattern
    assert resnet.card.weights_url.endswith("resnet18-f37072fd.pth") and resnet.card.sha256_prefix == "f37072fd"
    assert resnet.card.input_size == (224, 224) and resnet.card.num_classes == 1000
    source = tmp_path / "mynet.py"
    source.write_text("from torch import nn\ndef make():\n    return nn.Conv2d(3, 2, 1)\n")
    mine = load_model(f"{source}:make", device="cpu")
    assert mine.weights is None and mine.card is None


# --- timm:NAME -----------------------------------------------------------------------------------------
def test_timm_random_vit_tiny():
    pytest.importorskip("timm")
    state = torch.get_rng_state()
    model = load_model(VIT, weights="random", device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    assert model.name == VIT and model.weights == "random" and model.card.name == VIT
    assert model.input_size == (224, 224) and model.in_channels == 3
    assert len(model.classes) == 1000 and model.classes[1] == "goldfish"
    assert torch.allclose(model.mean.flatten(), torch.full((3,), 0.5))  # from timm's pretrained_cfg
    assert model.card.licence == "apache-2.0"
    again = load_model(VIT, weights="random", device="cpu")
    for name, tensor in model.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[name], tensor), name
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert tuple(model.layer_shapes(["blocks.11"])["blocks.11"]) == (1, 197, 192)


def test_timm_unknown_name_is_one_line_with_nearest():
    pytest.importorskip("timm")
    with pytest.raises(NnfeatError) as err:
        load_model("timm:vit_tinny_patch16_224", weights="random")
    text = str(err.value)
    assert "\n" not in text and text.startswith("unknown timm model 'vit_tinny_patch16_224'")
    assert "timm:vit_tiny_patch16_224" in text


PRINT_ERROR = """
import sys
from nnfeat.errors import NnfeatError
from nnfeat.models import load_model
try:
    load_model(sys.argv[1], weights=sys.argv[2], device="cpu")
except NnfeatError as err:
    print(err)
"""


def test_timm_pretrained_offline_is_one_line(tmp_path):
    pytest.importorskip("timm")
    proc = run_python("-c", PRINT_ERROR, "timm:resnet18", "pretrained",
                      env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "'timm:resnet18'" in lines[0] and "--weights random" in lines[0]


def test_timm_missing_is_one_line():
    proc = run_python("-c", "import sys; sys.modules['timm'] = None\n" + PRINT_ERROR, VIT, "random")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip().endswith("pip install timm (or pip install nnfeat[timm])")
