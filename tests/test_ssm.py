"""The ``ssm`` token mixer (the Mamba block's SSM(act(conv(Z)))) and models built with it."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout import count_macs, count_params, create_model
from mambaout.models.mixers.scan import selective_scan_ref
from mambaout.models.mixers.ssm import SCANS, SSMMixer


def reference_mixer(m: SSMMixer, x: torch.Tensor) -> torch.Tensor:
    """The mixer written out directly: explicit token orders and the sequential scan per direction."""
    b, H, W, c = x.shape
    L, N, R = H * W, m.d_state, m.dt_rank
    if m.causal:
        u = F.conv1d(F.pad(x.reshape(b, L, c).transpose(1, 2), (m.kernel - 1, 0)), m.conv_weight, m.conv_bias,
                     groups=c)
    else:
        u = F.conv2d(x.permute(0, 3, 1, 2), m.conv_weight, m.conv_bias, padding=m.kernel // 2, groups=c)
        u = u.reshape(b, c, L)
    u = F.silu(u)
    raster = torch.arange(L)
    column = torch.arange(L).view(H, W).t().reshape(-1)  # j-th token of a column-major walk, as a raster index
    orders = {"1d": [raster], "bidirectional": [raster, raster.flip(0)],
              "cross": [raster, raster.flip(0), column, column.flip(0)]}[m.scan]
    out = torch.zeros_like(u)
    for k, idx in enumerate(orders):
        uk = u[:, :, idx]
        dt, Bk, Ck = torch.einsum("bcl,jc->bjl", uk, m.x_proj_weight[k]).split((R, N, N), dim=1)
        delta = torch.einsum("brl,cr->bcl", dt, m.dt_proj_weight[k])
        part = slice(k * c, (k + 1) * c)
        y = selective_scan_ref(uk, delta, -torch.exp(m.A_log[part]), Bk, Ck, D=m.D[part],
                               delta_bias=m.dt_proj_bias[part])
        out[:, :, idx] += y
    return out.transpose(1, 2).reshape(b, H, W, c)


def make_mixer(scan, channels=6, **kw):
    torch.manual_seed(0)
    m = SSMMixer(channels, kernel_size=3, scan=scan, dtype=torch.float64, **kw)
    with torch.no_grad():  # larger Δ than the init so that the scan carries information a long way
        m.dt_proj_bias.add_(3.0)
    return m


@pytest.mark.parametrize("scan", SCANS)
def test_mixer_matches_reference(scan):
    m = make_mixer(scan, chunk_size=4)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)  # H != W catches a transposed column-major order
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, reference_mixer(m, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("scan", SCANS)
def test_causality(scan):
    m = make_mixer(scan)
    assert m.causal == (scan == "1d")
    H, W, C = 6, 5, 6
    x = torch.randn(1, H, W, C, dtype=torch.float64)
    t = 12  # raster position: tokens after it change
    x2 = x.clone()
    x2.view(1, H * W, C)[:, t + 1:] = torch.randn(1, H * W - t - 1, C, dtype=torch.float64)
    with torch.no_grad():
        before, after = m(x).view(1, H * W, C), m(x2).view(1, H * W, C)
    unchanged = torch.allclose(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=1e-12)
    assert unchanged == m.causal
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])


@pytest.mark.parametrize("scan", SCANS)
def test_model_forward_backward(scan):
    torch.manual_seed(0)
    model = create_model("mambaout_test", token_mixer="ssm", mixer_kwargs={"scan": scan})
    assert isinstance(model.stages[0].blocks[0].conv, SSMMixer) and model.stages[0].blocks[0].conv.scan == scan
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()
    y.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    mixer_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if ".conv." in n]
    assert all(g > 0 for g in mixer_grads)


def test_mixer_kwargs_pass_through():
    model = create_model("mambaout_test", token_mixer="ssm",
                         mixer_kwargs={"scan": "cross", "d_state": 4, "dt_rank": 2, "out_norm": True})
    m = model.stages[1].blocks[0].conv
    assert (m.d_state, m.dt_rank, m.x_proj_weight.shape) == (4, 2, (4, 2 + 8, m.channels))
    assert m.out_norm is not None
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_initialisation_survives_the_model_init():
    # The network re-initialises nn.Linear/nn.Conv2d modules after building; Mamba's Δ bias, A and D must survive.
    model = create_model("mambaout_test", token_mixer="ssm", mixer_kwargs={"scan": "bidirectional"})
    m = model.stages[2].blocks[1].conv
    dt = F.softplus(m.dt_proj_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    torch.testing.assert_close(torch.exp(m.A_log), torch.arange(1, 17.0).expand(2 * m.channels, 16))
    assert torch.equal(m.D, torch.ones(2 * m.channels))
    assert m.dt_rank == -(-m.channels // 16)
    assert m.conv_weight.shape == (m.channels, 1, 7, 7)  # the block's kernel_size for a non-causal scan
    one_d = create_model("mambaout_test", token_mixer="ssm").stages[0].blocks[0].conv
    assert one_d.conv_weight.shape == (one_d.channels, 1, 4)  # d_conv for the causal scan


def test_unknown_scan_names_the_choices():
    with pytest.raises(ValueError, match="1d, bidirectional, cross"):
        SSMMixer(8, scan="spiral")


def test_macs_counted():
    conv = count_macs(create_model("mambaout_test"), (3, 64, 64))
    for scan in SCANS:
        model = create_model("mambaout_test", token_mixer="ssm", mixer_kwargs={"scan": scan})
        assert count_macs(model, (3, 64, 64)) > conv, scan
    femto_conv = count_macs(create_model("mambaout_femto"))
    femto_ssm = count_macs(create_model("mambaout_femto", token_mixer="ssm"))
    assert femto_ssm > femto_conv > 1.1e9


def test_default_mixer_unchanged():
    assert "ssm" in mambaout.list_token_mixers()
    model = create_model("mambaout_femto")
    assert count_params(model) == 7_304_536
    # Exactly torch's depthwise conv, as in timm's model: type-dispatching tools (ptflops, quantizers) rely on it.
    assert type(model.stages[0].blocks[0].conv) is torch.nn.Conv2d


def test_import_does_not_load_mamba_ssm():
    code = "import sys, mambaout; assert 'ssm' in mambaout.list_token_mixers(); assert 'mamba_ssm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_autocast_and_half_models():
    x = torch.randn(2, 3, 64, 64)
    model = create_model("mambaout_test", token_mixer="ssm")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().sum().backward()
    assert torch.isfinite(y.float()).all()
    half = create_model("mambaout_test", token_mixer="ssm", mixer_kwargs={"scan": "cross"}).to(torch.bfloat16)
    y = half(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
