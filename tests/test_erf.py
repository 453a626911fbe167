"""The effective receptive field: properties every token mixer's map must have, the area measure, the command."""
import json

import numpy as np
import pytest
import torch
from conftest import cli_in_process

from mambaout.lab.erf import area_ratios, display_map, erf_centre, erf_map, theoretical_rf
from mambaout.models import create_model

SIZE = 128


def _map(name: str, stage: int = 1, size: int = SIZE, n: int = 2, **kwargs) -> np.ndarray:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return erf_map(model, [torch.randn(n, 3, size, size)], stage=stage)


def _outside(box, shape) -> np.ndarray:
    top, left, bottom, right = box
    mask = np.ones(shape, bool)
    mask[top:bottom + 1, left:right + 1] = False
    return mask


def test_theoretical_rf_follows_the_convolutions():
    model = create_model("mambaout_test", device="meta")
    # stem 3×3/2 twice: 7 px, stride 4; a 7×7 block: +6·4 = 31. Downsample 3×3/2: +2·4, stride 8; a block: +6·8.
    assert theoretical_rf(model, 0, 256)["side"] == 31
    assert theoretical_rf(model, 1, 256)["side"] == 87
    rf = theoretical_rf(model, 1, SIZE)
    assert rf["size"] == [87, 87] and rf["area_ratio"] == pytest.approx(87 * 87 / SIZE ** 2)
    # at 64² the 87-pixel field is cut by the border; the box stays inside the image
    small = theoretical_rf(model, 1, 64)
    assert small["side"] == 87 and max(small["box"]) <= 63 and min(small["box"]) >= 0
    for mixer in ("mambaout_test_ssm", "mambaout_test_attn", "vit_tiny"):
        assert theoretical_rf(create_model(mixer, device="meta"), 1, 224) is None


def test_conv_map_is_exactly_zero_outside_its_theoretical_field_and_fills_it():
    erf = _map("mambaout_test")
    rf = theoretical_rf(create_model("mambaout_test", device="meta"), 1, SIZE)
    top, left, bottom, right = rf["box"]
    assert (erf[_outside(rf["box"], erf.shape)] == 0).all()
    # the box is tight: every edge row and column of it is reached
    assert erf[top].max() > 0 and erf[bottom].max() > 0 and erf[:, left].max() > 0 and erf[:, right].max() > 0


@pytest.mark.parametrize("name", ["mambaout_test_ssm", "mambaout_test_causal_attn"])
def test_causal_mixer_reaches_earlier_rows_far_outside_the_conv_field_and_no_later_ones(name):
    erf = _map(name)
    top, _, bottom, _ = theoretical_rf(create_model("mambaout_test", device="meta"), 1, SIZE)["box"]
    assert top > 16
    assert erf[:top - 8].sum() > 0, "a raster-order scan sees every earlier row"
    assert (erf[:8] > 0).any(), "down to the first rows of the image"
    assert (erf[bottom + 1:] == 0).all(), "and nothing after the central position beyond the local convolutions"


@pytest.mark.parametrize("name", ["mambaout_test_attn", "mambaout_test_ssm_bi", "mambaout_test_ssm_cross"])
def test_global_mixers_reach_every_pixel(name):
    assert (_map(name) > 0).all()


def test_vit_attention_reaches_every_pixel():
    erf = _map("vit_tiny", stage=-1, size=64, n=1, img_size=64, depth=2)
    assert erf.shape == (64, 64) and (erf > 0).all()


def test_area_ratios_measure_squares_around_the_centre():
    delta = np.zeros((65, 65))
    delta[32, 32] = 1.0
    assert all(r == pytest.approx(1 / 65 ** 2) for r in area_ratios(delta).values())
    uniform = np.ones((100, 100))
    ratios = area_ratios(uniform)
    # t of a uniform map needs a square of about t of the area (odd sides around the centre pixel)
    assert ratios["0.5"] == pytest.approx(0.5, abs=0.03) and ratios["0.99"] == pytest.approx(1.0, abs=0.02)
    assert list(ratios) == ["0.2", "0.3", "0.5", "0.99"]
    off = np.zeros((64, 64))
    off[10, 10] = 1.0
    assert area_ratios(off, centre=(10, 10))["0.99"] == pytest.approx(1 / 64 ** 2)
    assert display_map(uniform * 9).max() == 1.0 and (display_map(np.zeros((4, 4))) == 0).all()


def test_centre_is_where_the_central_position_sits():
    model = create_model("mambaout_test", device="meta")
    # a 7×7 stride-32 map at 224²: cell 3 covers pixels around 3·32 = 96, not the image centre 112
    assert erf_centre(model, 3, 224) == (96, 96)
    vit = create_model("vit_tiny", device="meta")
    assert erf_centre(vit, -1, 224) == (7 * 16 + 7, 7 * 16 + 7)


def test_erf_command_writes_maps_ratios_and_plot(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    ckpt, causal_ckpt = tmp_path / "conv.pth", tmp_path / "causal.pth"
    torch.save({"model": create_model("mambaout_test").state_dict()}, ckpt)
    torch.save(create_model("mambaout_test_causal_attn").state_dict(), causal_ckpt)
    out = tmp_path / "erf"
    code, stdout, stderr = cli_in_process(
        ["erf", "--models", "mambaout_test,mambaout_test_causal_attn", "--checkpoint", f"{ckpt},{causal_ckpt}",
         "--images", images, "--stage", "1", "--img-size", "96", "--output", out], capsys)
    assert code == 0, stderr
    assert "broken.jpg" in stdout + stderr
    result = json.loads((out / "erf.json").read_text())
    conv, causal = result["models"]["mambaout_test"], result["models"]["mambaout_test_causal_attn"]
    assert conv["images"] == 3 and conv["stage"] == 1 and conv["weights"] == "checkpoint"
    assert conv["theoretical_rf"]["side"] == 87 and causal["theoretical_rf"] is None and causal["rf_note"]
    assert set(conv["area_ratio"]) == {"0.2", "0.3", "0.5", "0.99"}
    assert 0 < conv["area_ratio"]["0.2"] <= conv["area_ratio"]["0.99"] <= 1
    erf = np.load(out / "erf_mambaout_test.npy")
    assert erf.shape == (96, 96) and erf.min() >= 0 and erf.max() > 0
    assert (out / "erf.png").stat().st_size > 10_000


def test_erf_command_refuses_mismatched_checkpoints(tmp_path, capsys):
    ckpt = tmp_path / "one.pth"
    torch.save(create_model("mambaout_test").state_dict(), ckpt)
    code, _, stderr = cli_in_process(["erf", "--models", "mambaout_test,mambaout_test_ssm", "--checkpoint", ckpt,
                                      "--output", tmp_path / "o"], capsys)
    assert code != 0 and "one checkpoint per model" in stderr
    code, _, stderr = cli_in_process(["erf", "--models", "mambaout_test", "--checkpoint", tmp_path / "none.pth",
                                      "--output", tmp_path / "o"], capsys)
    assert code != 0 and "none.pth" in stderr
