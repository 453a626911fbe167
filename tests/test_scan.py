"""The chunked selective scan against the sequential reference (float64, forward and every gradient)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mambaout.models import scan as scan_mod
from mambaout.models.mixers.scan import selective_scan, selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(b, d, n, L, groups=None, dtype=torch.float64, seed=0, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    shape_bc = (b, n, L) if groups is None else (b, groups, n, L)
    return {
        "u": rand(b, d, L), "delta": rand(b, d, L) * delta_scale, "A": -torch.rand(d, n, generator=g, dtype=dtype) * 4,
        "B": rand(*shape_bc), "C": rand(*shape_bc), "D": rand(d), "delta_bias": rand(d),
    }


def run_both(inputs, grad_names=NAMES, **kwargs):
    """(y, grads) of the reference and of the chunked scan for the same inputs and output gradient."""
    out = []
    gy = None
    for fn in (selective_scan_ref, lambda *a, **k: selective_scan(*a, **k, **kwargs)):
        ts = {k: v.detach().clone().requires_grad_(k in grad_names) for k, v in inputs.items()}
        y = fn(ts["u"], ts["delta"], ts["A"], ts["B"], ts["C"], D=ts["D"], delta_bias=ts["delta_bias"])
        if gy is None:
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        grads = torch.autograd.grad(y, [ts[k] for k in grad_names], gy)
        out.append((y.detach(), dict(zip(grad_names, grads))))
    return out


def assert_match(ref, got, rtol=1e-9, atol=1e-10):
    (y_ref, g_ref), (y, g) = ref, got
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"grad of {k}: {m}")


# (batch, d, n, L, groups, chunk): lengths below, equal to and not dividing the chunk, length 1, chunk 1, groups.
SHAPES = [
    (2, 3, 4, 1, None, 8),
    (2, 3, 4, 7, None, 8),
    (2, 3, 4, 8, None, 8),
    (2, 5, 3, 37, None, 8),
    (1, 4, 2, 50, None, 1),
    (2, 6, 4, 61, 3, 16),
    (3, 4, 5, 100, 2, 7),
    (1, 2, 16, 129, None, 32),
]


@pytest.mark.parametrize("b,d,n,L,groups,chunk", SHAPES)
def test_chunked_matches_reference(b, d, n, L, groups, chunk):
    ref, got = run_both(make_inputs(b, d, n, L, groups), chunk_size=chunk)
    assert_match(ref, got)


@pytest.mark.parametrize("block_elems", [1, 40, 300])
def test_blocks_hand_the_state_on(monkeypatch, block_elems):
    # Tiny blocks split each sequence into many runs of chunks (and batch samples apart): the states and adjoints
    # carried between blocks must give the same result as one block.
    monkeypatch.setattr(scan_mod, "_BLOCK_ELEMS", block_elems)
    ref, got = run_both(make_inputs(3, 4, 3, 45, 2), chunk_size=4)
    assert_match(ref, got)


def test_gradcheck():
    inputs = make_inputs(2, 2, 3, 11, seed=3)
    args = [inputs[k].requires_grad_() for k in NAMES]

    def f(u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, delta_bias=delta_bias, chunk_size=4)

    assert torch.autograd.gradcheck(f, args)


def test_without_optional_terms():
    inp = make_inputs(2, 3, 4, 20)
    for softplus in (True, False):
        delta = inp["delta"].abs() if not softplus else inp["delta"]
        ref = selective_scan_ref(inp["u"], delta, inp["A"], inp["B"], inp["C"], delta_softplus=softplus)
        got = selective_scan(inp["u"], delta, inp["A"], inp["B"], inp["C"], delta_softplus=softplus, chunk_size=6)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_large_delta_long_sequence(dtype, tol):
    # Δ up to 50 with |A| up to 16: per-token log-decays down to -800, far beyond exp's range. The chunked scan
    # must stay finite and agree with the float64 recurrence, gradients included.
    b, d, n, L = 1, 3, 16, 1500
    inp = make_inputs(b, d, n, L, dtype=torch.float64, seed=5)
    g = torch.Generator().manual_seed(6)
    # Mostly large steps, with runs of small ones so that the state has something to remember.
    delta = torch.rand(b, d, L, generator=g, dtype=torch.float64) * 50
    delta[..., 200:400] *= 1e-3
    inp.update(delta=delta, A=-torch.arange(1, n + 1, dtype=torch.float64).repeat(d, 1))
    names = ("u", "delta", "A", "B", "C")
    ts = {k: v.clone().requires_grad_(k in names) for k, v in inp.items()}
    y_ref = selective_scan_ref(ts["u"], ts["delta"], ts["A"], ts["B"], ts["C"], D=ts["D"], delta_softplus=False)
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad(y_ref, [ts[k] for k in names], gy)

    tc = {k: v.detach().to(dtype).requires_grad_(k in names) for k, v in inp.items()}
    y = selective_scan(tc["u"], tc["delta"], tc["A"], tc["B"], tc["C"], D=tc["D"], delta_softplus=False)
    grads = torch.autograd.grad(y, [tc[k] for k in names], gy.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    scale = y_ref.abs().max()
    assert (y.double() - y_ref).abs().max() <= tol * scale
    for k, gr, gf in zip(names, g_ref, grads):
        assert torch.isfinite(gf).all(), k
        assert (gf.double() - gr).abs().max() <= tol * gr.abs().max(), k


def test_large_delta_with_softplus():
    # The same regime reached the way the mixer reaches it: a large raw delta through softplus.
    inp = make_inputs(2, 4, 16, 300, seed=7, delta_scale=30.0)
    ref, got = run_both(inp, chunk_size=32)
    assert_match(ref, got, rtol=1e-8, atol=1e-9)


def test_dtypes_follow_u():
    inp = make_inputs(1, 2, 3, 9, dtype=torch.float32)
    y32 = selective_scan(*(inp[k] for k in ("u", "delta", "A", "B", "C")), D=inp["D"])
    ybf = selective_scan(*(inp[k].bfloat16() if k == "u" else inp[k] for k in ("u", "delta", "A", "B", "C")))
    assert y32.dtype == torch.float32 and ybf.dtype == torch.bfloat16 and torch.isfinite(ybf.float()).all()


def test_meta_device_counts_the_contraction():
    b, d, n, L = 2, 8, 4, 50
    inp = {k: v.to("meta") for k, v in make_inputs(b, d, n, L).items()}
    with FlopCounterMode(display=False) as counter:
        y = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"])
    assert y.shape == (b, d, L) and y.is_meta
    # Σ_n C h: one multiply-add per state element (L = 50 splits into chunks of 10: no padding tokens)
    assert counter.get_total_flops() == 2 * b * d * n * L


def test_bad_shapes_raise():
    inp = make_inputs(2, 4, 3, 10)
    u, delta, A, B, C = (inp[k] for k in ("u", "delta", "A", "B", "C"))
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match="groups"):
        selective_scan(u, delta, A, B.unsqueeze(1).expand(-1, 3, -1, -1), C)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)


def _mamba_kernel_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("mamba_ssm")
    kernel = scan_mod._mamba_kernel()
    if kernel is None:
        pytest.skip("mamba_ssm is installed without its CUDA extension")
    return kernel


@pytest.mark.parametrize("groups", [None, 2])
def test_cuda_matches_mamba_ssm(groups):
    kernel = _mamba_kernel_or_skip()
    inp = make_inputs(2, 8, 16, 300, groups, dtype=torch.float32, seed=11)
    ts = {k: v.cuda().requires_grad_() for k, v in inp.items()}
    args = [ts[k] for k in ("u", "delta", "A", "B", "C")]
    ours = selective_scan(*args, D=ts["D"], delta_bias=ts["delta_bias"], use_kernel=False)
    theirs = kernel(*args, D=ts["D"], delta_bias=ts["delta_bias"], delta_softplus=True)
    dispatched = selective_scan(*args, D=ts["D"], delta_bias=ts["delta_bias"])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dispatched, theirs)
    gy = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, list(ts.values()), gy)
    g_theirs = torch.autograd.grad(theirs, list(ts.values()), gy)
    for k, a, b in zip(ts, g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=lambda m, k=k: f"grad of {k}: {m}")
