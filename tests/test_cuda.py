"""The CUDA kernels against the CPU op and the references: parity over many shapes and the CPU
tests' edge cases, opcheck and gradcheck on CUDA tensors, and clear errors for mixed devices.
Skipped without a GPU and minerva's CUDA kernels."""

import hypothesis.strategies as st
import pytest
import torch
from helpers import make_gae_inputs, random_mask, tolerances
from hypothesis import given

from minerva import ops, reference

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.cuda_kernels_available()),
    reason="needs a CUDA GPU and minerva's CUDA kernels (_C_cuda)",
)

DTYPES = [torch.float32, torch.float64]
CUDA = "cuda"


def to_cuda(tensors):
    return [t.to(CUDA) for t in tensors]


def assert_gae_matches(inputs, gamma, lam, dtype, T):
    on_gpu = ops.gae(*to_cuda(inputs), gamma, lam)
    on_cpu = ops.gae(*inputs, gamma, lam)
    expected = reference.gae(*inputs, gamma, lam)
    for gpu, cpu, want in zip(on_gpu, on_cpu, expected):
        assert gpu.is_cuda and gpu.dtype == dtype and gpu.is_contiguous()
        torch.testing.assert_close(gpu.cpu(), cpu, **tolerances(dtype, scale=T))
        torch.testing.assert_close(gpu.cpu(), want, **tolerances(dtype, scale=T))


@given(
    T=st.integers(1, 600), N=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
    p_terminated=st.sampled_from([0.0, 0.05, 1.0]), p_truncated=st.sampled_from([0.0, 0.05, 1.0]),
    gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0), transposed=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_gae_matches_cpu_and_reference(T, N, dtype, p_terminated, p_truncated, gamma, lam,
                                       transposed, seed):
    torch.manual_seed(seed)
    inputs = make_gae_inputs(T, N, dtype, p_terminated, p_truncated, transposed)
    assert_gae_matches(inputs, gamma, lam, dtype, T)


# narrow and long shapes split time across blocks (the chunked pass); wide ones do not
@pytest.mark.parametrize("T,N", [(1, 1), (1, 4096), (2048, 1), (100_000, 1), (5000, 3),
                                 (128, 4096), (4096, 33), (2049, 17)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_matches_at_benchmark_shapes(T, N, dtype):
    inputs = make_gae_inputs(T, N, dtype, 0.01, 0.01)
    assert_gae_matches(inputs, 0.99, 0.95, dtype, 100)


def test_gae_single_thread_baseline_matches():
    inputs = to_cuda(make_gae_inputs(300, 5, torch.float64, 0.05, 0.05))
    baseline = torch.ops.minerva._gae_single_thread(*inputs, 0.99, 0.95)
    for got, want in zip(baseline, ops.gae(*inputs, 0.99, 0.95)):
        torch.testing.assert_close(got, want)


def test_gae_empty_rollout():
    advantages, returns = ops.gae(*to_cuda(make_gae_inputs(0, 3, torch.float32, 0.1, 0.1)),
                                  0.99, 0.95)
    assert advantages.shape == returns.shape == (0, 3) and advantages.is_cuda


@given(
    B=st.integers(0, 5000), dtype=st.sampled_from(DTYPES),
    p_valid=st.sampled_from([0.0, 0.05, 0.5, 1.0]), fraction=st.floats(1e-3, 1.0),
    ties=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_topk_mask_matches_cpu(B, dtype, p_valid, fraction, ties, seed):
    torch.manual_seed(seed)
    advantages = torch.randint(-3, 3, (B,)).to(dtype) if ties else torch.randn(B, dtype=dtype)
    valid = random_mask(B, p_valid)
    got = ops.topk_mask(advantages.to(CUDA), valid.to(CUDA), fraction)
    assert got.is_cuda and got.dtype == torch.bool
    assert torch.equal(got.cpu(), ops.topk_mask(advantages, valid, fraction))
    assert torch.equal(got.cpu(), reference.topk_mask(advantages, valid, fraction))


@pytest.mark.parametrize("B", [1, 4096, 65_536, 1 << 20, 16 << 20])
@pytest.mark.parametrize("values", ["normal", "ties", "huge", "signed_zeros", "one_bin"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_mask_matches_cpu_large(B, values, dtype):
    advantages = {
        "normal": lambda: torch.randn(B, dtype=dtype),
        "ties": lambda: torch.randint(-2, 2, (B,)).to(dtype),
        "huge": lambda: torch.randn(B, dtype=dtype) * 1e6,
        "signed_zeros": lambda: torch.where(torch.rand(B) < 0.5, 0.0, -0.0).to(dtype),
        # all in one top-bits bin: the candidate digits do all the work
        "one_bin": lambda: 1.0 + torch.rand(B, dtype=dtype) * 1e-3,
    }[values]()
    valid = random_mask(B, 0.9)
    for fraction in (1e-5, 0.1, 0.5, 1.0):
        got = ops.topk_mask(advantages.to(CUDA), valid.to(CUDA), fraction).cpu()
        assert torch.equal(got, ops.topk_mask(advantages, valid, fraction)), fraction


def test_topk_mask_ignores_nan_at_invalid_positions():
    advantages = torch.tensor([1.0, float("nan"), 3.0], device=CUDA)
    valid = torch.tensor([True, False, True], device=CUDA)
    assert ops.topk_mask(advantages, valid, 0.5).tolist() == [False, False, True]


@given(
    B=st.integers(0, 5000), dtype=st.sampled_from(DTYPES),
    p_selected=st.sampled_from([0.0, 0.05, 0.5, 1.0]), eta=st.floats(0.05, 20.0),
    scale=st.sampled_from([1.0, 100.0]), seed=st.integers(0, 2**31 - 1),
)
def test_vmpo_weights_match_cpu(B, dtype, p_selected, eta, scale, seed):
    torch.manual_seed(seed)
    advantages = torch.randn(B, dtype=dtype) * scale
    selected = random_mask(B, p_selected)
    eta_t = torch.tensor(eta, dtype=dtype)
    got = ops.vmpo_weights(advantages.to(CUDA), selected.to(CUDA), eta_t.to(CUDA))
    for gpu, cpu in zip(got, ops.vmpo_weights(advantages, selected, eta_t)):
        assert gpu.is_cuda and gpu.dtype == dtype
        torch.testing.assert_close(gpu.cpu(), cpu, **tolerances(dtype))


@pytest.mark.parametrize("B", [1 << 20, 16 << 20])
def test_vmpo_weights_large_batches_stay_normalised(B):
    advantages = torch.randn(B, device=CUDA)
    selected = torch.rand(B, device=CUDA) < 0.5
    weights, _ = ops.vmpo_weights(advantages, selected, torch.tensor(0.5, device=CUDA))
    assert abs(float(weights.double().sum()) - 1.0) < 1e-4
    assert not bool(weights[~selected].any())


def test_vmpo_weights_empty_selection():
    advantages = torch.randn(10, device=CUDA)
    weights, log_mean_exp = ops.vmpo_weights(
        advantages, torch.zeros(10, dtype=torch.bool, device=CUDA), torch.tensor(1.0, device=CUDA))
    assert not bool(weights.any()) and float(log_mean_exp) == 0.0


@pytest.mark.parametrize("with_advantage_grad", [False, True])
def test_vmpo_weights_gradcheck(with_advantage_grad):
    advantages = torch.randn(20, dtype=torch.float64, device=CUDA,
                             requires_grad=with_advantage_grad)
    selected = torch.rand(20, device=CUDA) < 0.6
    eta = torch.tensor(0.7, dtype=torch.float64, device=CUDA, requires_grad=True)

    def fn(*args):
        a, e = args if with_advantage_grad else (advantages, args[0])
        return ops.vmpo_weights(a, selected, e)

    inputs = (advantages, eta) if with_advantage_grad else (eta,)
    assert torch.autograd.gradcheck(fn, inputs)


def opcheck_samples():
    gae_inputs = to_cuda(make_gae_inputs(37, 5, torch.float32, 0.1, 0.1))
    advantages = torch.randn(300, device=CUDA)
    mask = torch.rand(300, device=CUDA) < 0.5
    eta = torch.tensor(0.8, device=CUDA, requires_grad=True)
    return [
        (torch.ops.minerva.gae.default, (*gae_inputs, 0.99, 0.95)),
        (torch.ops.minerva.topk_mask.default, (advantages, mask, 0.3)),
        (torch.ops.minerva.vmpo_weights.default, (advantages, mask, eta)),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_opcheck(sample):
    op, args = opcheck_samples()[sample]
    torch.library.opcheck(op, args)


def test_mixed_devices_are_rejected():
    rewards, values, next_values, terminated, done = make_gae_inputs(4, 3, torch.float32, 0.1, 0.1)
    with pytest.raises(ValueError, match="values is on a different device than rewards"):
        ops.gae(rewards.to(CUDA), values, next_values.to(CUDA), terminated.to(CUDA),
                done.to(CUDA), 0.99, 0.95)
    advantages = torch.randn(8, device=CUDA)
    with pytest.raises(ValueError, match="valid is on a different device"):
        ops.topk_mask(advantages, torch.ones(8, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match="eta is on a different device"):
        ops.vmpo_weights(advantages, torch.ones(8, dtype=torch.bool, device=CUDA),
                         torch.tensor(1.0))


def test_bad_values_are_named():
    advantages = torch.tensor([1.0, float("nan")], device=CUDA)
    everything = torch.ones(2, dtype=torch.bool, device=CUDA)
    with pytest.raises(ValueError, match="advantages contain NaN at valid positions"):
        ops.topk_mask(advantages, everything, 0.5)
    with pytest.raises(ValueError, match="advantages contain NaN at selected positions"):
        ops.vmpo_weights(advantages, everything, torch.tensor(1.0, device=CUDA))
    finite = torch.tensor([1.0, 2.0], device=CUDA)
    for eta in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="eta must be positive and finite"):
            ops.vmpo_weights(finite, everything, torch.tensor(eta, device=CUDA))
    with pytest.raises(ValueError, match="advantages must be finite at selected positions"):
        ops.vmpo_weights(torch.tensor([1.0, float("inf")], device=CUDA), everything,
                         torch.tensor(1.0, device=CUDA))


def test_kernels_run_on_the_current_stream():
    inputs = to_cuda(make_gae_inputs(256, 64, torch.float32, 0.01, 0.01))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        advantages, _ = ops.gae(*inputs, 0.99, 0.95)
    stream.synchronize()
    torch.testing.assert_close(advantages.cpu(), ops.gae(*[t.cpu() for t in inputs], 0.99,
                                                         0.95)[0], **tolerances(torch.float32, 100))
