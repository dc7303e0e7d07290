"""The native ops against the references: parity over random shapes and masks (hypothesis),
opcheck, gradcheck, torch.compile, and clear errors for every bad argument."""

import math

import hypothesis.strategies as st
import pytest
import torch
from helpers import make_gae_inputs, random_mask, tolerances
from hypothesis import given

from minerva import native_available, ops, reference

pytestmark = pytest.mark.skipif(not native_available(), reason="native ops not built")

DTYPES = [torch.float32, torch.float64]


mask_probability = st.sampled_from([0.0, 0.05, 0.5, 1.0])


@given(
    T=st.integers(1, 48), N=st.integers(1, 48), dtype=st.sampled_from(DTYPES),
    p_terminated=mask_probability, p_truncated=mask_probability,
    gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0), transposed=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_gae_matches_reference(T, N, dtype, p_terminated, p_truncated, gamma, lam, transposed,
                               seed):
    torch.manual_seed(seed)
    inputs = make_gae_inputs(T, N, dtype, p_terminated, p_truncated, transposed)
    native = ops.gae(*inputs, gamma, lam)
    expected = reference.gae(*inputs, gamma, lam)
    for got, want in zip(native, expected):
        assert got.dtype == dtype and got.shape == (T, N) and got.is_contiguous()
        torch.testing.assert_close(got, want, **tolerances(dtype, scale=T))


@pytest.mark.parametrize("T,N", [(2048, 1), (1, 4096), (128, 4096), (64, 1000), (7, 33)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_matches_reference_at_benchmark_shapes(T, N, dtype):
    # wide shapes take the multi-threaded path; long ones the single-column loop
    inputs = make_gae_inputs(T, N, dtype, 0.01, 0.01)
    for got, want in zip(ops.gae(*inputs, 0.99, 0.95), reference.gae(*inputs, 0.99, 0.95)):
        torch.testing.assert_close(got, want, **tolerances(dtype, scale=100))


def test_gae_empty_rollout():
    inputs = make_gae_inputs(0, 3, torch.float32, 0.1, 0.1)
    advantages, returns = ops.gae(*inputs, 0.99, 0.95)
    assert advantages.shape == returns.shape == (0, 3)


@given(
    B=st.integers(0, 300), dtype=st.sampled_from(DTYPES), p_valid=mask_probability,
    fraction=st.floats(1e-3, 1.0), ties=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_topk_mask_matches_reference(B, dtype, p_valid, fraction, ties, seed):
    torch.manual_seed(seed)
    advantages = (torch.randint(-3, 3, (B,)).to(dtype) if ties else torch.randn(B, dtype=dtype))
    valid = random_mask(B, p_valid)
    selected = ops.topk_mask(advantages, valid, fraction)
    assert selected.dtype == torch.bool and selected.shape == (B,)
    assert torch.equal(selected, reference.topk_mask(advantages, valid, fraction))
    n = int(valid.sum())
    if n:
        assert selected.sum() >= max(1, math.floor(fraction * n))
    assert not (selected & ~valid).any()


@pytest.mark.parametrize("B", [1, 5000, 20_000, 200_000, 1 << 20])
@pytest.mark.parametrize("values", ["normal", "ties", "wide"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_mask_matches_reference_large(B, values, dtype):
    # sizes on both sides of the selection / 11-bit / 16-bit histogram switches
    advantages = {"normal": torch.randn(B, dtype=dtype),
                  "ties": torch.randint(-2, 3, (B,)).to(dtype),
                  "wide": torch.randn(B, dtype=dtype) * 1e6}[values]
    valid = random_mask(B, 0.9)
    for fraction in (1e-5, 0.01, 0.5, 0.999, 1.0):
        assert torch.equal(ops.topk_mask(advantages, valid, fraction),
                           reference.topk_mask(advantages, valid, fraction))


def test_topk_mask_ignores_nan_at_invalid_positions():
    advantages = torch.tensor([1.0, float("nan"), 3.0, 2.0])
    valid = torch.tensor([True, False, True, True])
    assert ops.topk_mask(advantages, valid, 0.5).tolist() == [False, False, True, False]


def test_topk_mask_non_contiguous():
    advantages, valid = torch.randn(2, 500)[:, 7], random_mask((2, 500), 0.5)[:, 7]
    base = torch.randn(1000)
    advantages, valid = base[::2], random_mask(1000, 0.6)[::2]
    assert torch.equal(ops.topk_mask(advantages, valid, 0.3),
                       reference.topk_mask(advantages, valid, 0.3))


@given(
    B=st.integers(0, 300), dtype=st.sampled_from(DTYPES), p_selected=mask_probability,
    eta=st.floats(0.05, 20.0), scale=st.sampled_from([1.0, 100.0]), strided=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_vmpo_weights_match_reference(B, dtype, p_selected, eta, scale, strided, seed):
    torch.manual_seed(seed)
    advantages = torch.randn(2 * B if strided else B, dtype=dtype) * scale
    selected = random_mask(advantages.shape, p_selected)
    if strided:
        advantages, selected = advantages[::2], selected[::2]
    eta_native = torch.tensor(eta, dtype=dtype, requires_grad=True)
    eta_reference = eta_native.detach().clone().requires_grad_()
    weights, log_mean_exp = ops.vmpo_weights(advantages, selected, eta_native)
    want_weights, want_lme = reference.vmpo_weights(advantages, selected, eta_reference)
    tol = tolerances(dtype)
    torch.testing.assert_close(weights, want_weights, **tol)
    torch.testing.assert_close(log_mean_exp, want_lme, rtol=tol["rtol"], atol=tol["atol"] * scale)
    if selected.any():
        torch.testing.assert_close(weights.sum(), torch.ones((), dtype=dtype), **tol)
        # the temperature loss of V-MPO, differentiated through each implementation
        loss = eta_native * 0.1 + eta_native * log_mean_exp + (weights * advantages).sum()
        want = eta_reference * 0.1 + eta_reference * want_lme + (want_weights * advantages).sum()
        (grad,), (want_grad,) = torch.autograd.grad(loss, eta_native), torch.autograd.grad(
            want, eta_reference)
        torch.testing.assert_close(grad, want_grad, rtol=1e-3 if dtype == torch.float32 else 1e-8,
                                   atol=1e-3 * scale if dtype == torch.float32 else 1e-8 * scale)


@pytest.mark.parametrize("B", [1 << 17, 1 << 20])
def test_vmpo_weights_large_batches_stay_normalised(B):
    advantages, selected = torch.randn(B) * 3, random_mask(B, 0.5)
    eta = torch.tensor(0.7)
    weights, log_mean_exp = ops.vmpo_weights(advantages, selected, eta)
    want_weights, want_lme = reference.vmpo_weights(advantages, selected, eta)
    torch.testing.assert_close(weights, want_weights, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(log_mean_exp, want_lme, rtol=1e-5, atol=1e-5)
    assert abs(weights.double().sum().item() - 1.0) < 1e-5


def test_vmpo_weights_empty_selection_has_zero_weights_and_gradient():
    eta = torch.tensor(1.0, requires_grad=True)
    weights, log_mean_exp = ops.vmpo_weights(torch.randn(5), torch.zeros(5, dtype=bool), eta)
    assert weights.eq(0).all() and log_mean_exp.item() == 0.0
    (grad,) = torch.autograd.grad(log_mean_exp + weights.sum(), eta)
    assert grad.item() == 0.0


@pytest.mark.parametrize("with_advantage_grad", [False, True])
def test_vmpo_weights_gradcheck(with_advantage_grad):
    advantages = torch.randn(12, dtype=torch.float64, requires_grad=with_advantage_grad)
    selected = random_mask(12, 0.6)
    selected[0] = True
    eta = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    inputs = (advantages, eta) if with_advantage_grad else (eta,)

    def fn(*args):
        a = args[0] if with_advantage_grad else advantages
        return ops.vmpo_weights(a, selected, args[-1])

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def _gae_gradients(impl, inputs, cotangents, gamma, lam, wrt=(0, 1, 2)):
    leaves = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(inputs[:3])]
    advantages, returns = impl.gae(*leaves, *inputs[3:], gamma, lam)
    loss = sum((out * c).sum() for out, c in zip((advantages, returns), cotangents)
               if c is not None)
    return torch.autograd.grad(loss, [leaves[i] for i in wrt], materialize_grads=True)


@given(
    T=st.integers(1, 24), N=st.integers(1, 24), p_terminated=mask_probability,
    p_truncated=mask_probability, gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0),
    transposed=st.booleans(), used=st.sampled_from(["both", "advantages", "returns"]),
    wrt=st.sampled_from([(0, 1, 2), (0,), (1,), (2,), (1, 2)]), seed=st.integers(0, 2**31 - 1),
)
def test_gae_gradients_match_reference(T, N, p_terminated, p_truncated, gamma, lam, transposed,
                                       used, wrt, seed):
    torch.manual_seed(seed)
    inputs = make_gae_inputs(T, N, torch.float64, p_terminated, p_truncated, transposed)
    cotangents = [torch.randn(T, N, dtype=torch.float64) for _ in range(2)]
    if used != "both":
        cotangents[0 if used == "returns" else 1] = None
    native = _gae_gradients(ops, inputs, cotangents, gamma, lam, wrt)
    expected = _gae_gradients(reference, inputs, cotangents, gamma, lam, wrt)
    for got, want in zip(native, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * T)


@pytest.mark.parametrize("T,N", [(0, 3), (1, 1), (6, 3), (64, 40)])
def test_gae_gradcheck(T, N):
    rewards, values, next_values, terminated, done = make_gae_inputs(T, N, torch.float64, 0.2,
                                                                     0.2)
    leaves = [t.requires_grad_() for t in (rewards, values, next_values)]

    def fn(*args):
        return ops.gae(*args, terminated, done, 0.97, 0.9)

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=T * N > 100)
    assert torch.autograd.gradgradcheck(fn, leaves, fast_mode=T * N > 100)


def test_gae_float32_gradients_keep_the_dtype():
    inputs = make_gae_inputs(8, 4, torch.float32, 0.2, 0.2)
    cotangents = [torch.randn(8, 4), torch.randn(8, 4)]
    for got, want in zip(_gae_gradients(ops, inputs, cotangents, 0.99, 0.95),
                         _gae_gradients(reference, inputs, cotangents, 0.99, 0.95)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, **tolerances(torch.float32, scale=8))


def test_gae_gradient_through_torch_compile():
    inputs = make_gae_inputs(16, 4, torch.float32, 0.1, 0.1)
    values = inputs[1].clone().requires_grad_()

    def value_loss(values):
        _, returns = ops.gae(inputs[0], values, inputs[2], *inputs[3:], 0.99, 0.95)
        return (returns - values).square().mean()

    compiled = torch.compile(value_loss, backend="aot_eager", fullgraph=True)
    (got,) = torch.autograd.grad(compiled(values), values)
    (want,) = torch.autograd.grad(value_loss(values), values)
    torch.testing.assert_close(got, want)


def test_topk_mask_claims_no_gradient():
    # a bool mask is not differentiable: it must not pretend to be
    advantages = torch.randn(10, requires_grad=True)
    selected = ops.topk_mask(advantages, torch.ones(10, dtype=bool), 0.5)
    assert not selected.requires_grad and selected.grad_fn is None


def opcheck_samples():
    T, N = 5, 3
    gae_inputs = make_gae_inputs(T, N, torch.float32, 0.2, 0.2)
    advantages, valid = torch.randn(20, dtype=torch.float64), random_mask(20, 0.7)
    return [
        (torch.ops.minerva.gae.default, (*gae_inputs, 0.99, 0.95)),
        (torch.ops.minerva.gae.default, (*make_gae_inputs(4, 6, torch.float64, 0, 1, True), 1.0,
                                         0.0)),
        (torch.ops.minerva.gae.default,
         (*[t.clone().requires_grad_() for t in gae_inputs[:3]], *gae_inputs[3:], 0.99, 0.95)),
        (torch.ops.minerva.topk_mask.default, (advantages, valid, 0.5)),
        (torch.ops.minerva.topk_mask.default, (advantages, torch.zeros(20, dtype=bool), 0.5)),
        (torch.ops.minerva.vmpo_weights.default,
         (advantages, valid, torch.tensor(0.5, dtype=torch.float64, requires_grad=True))),
        (torch.ops.minerva.vmpo_weights.default,
         (advantages.float().requires_grad_(), valid, torch.tensor(2.0, requires_grad=True))),
    ]


@pytest.mark.parametrize("sample", range(7))
def test_opcheck(sample):
    op, args = opcheck_samples()[sample]
    torch.library.opcheck(op, args)


def test_ops_trace_under_torch_compile():
    def e_step(rewards, values, next_values, terminated, done, eta):
        advantages, returns = ops.gae(rewards, values, next_values, terminated, done, 0.99, 0.95)
        flat = advantages.flatten()
        selected = ops.topk_mask(flat, torch.ones_like(flat, dtype=torch.bool), 0.5)
        weights, log_mean_exp = ops.vmpo_weights(flat, selected, eta)
        return returns, weights, eta * 0.1 + eta * log_mean_exp

    inputs = make_gae_inputs(16, 4, torch.float32, 0.1, 0.1)
    eta = torch.tensor(1.0, requires_grad=True)
    compiled = torch.compile(e_step, backend="aot_eager", fullgraph=True)
    got, want = compiled(*inputs, eta), e_step(*inputs, eta)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    got[2].backward()
    assert eta.grad is not None and torch.isfinite(eta.grad)


# --- bad arguments: the same clear error from the native op and the reference -------------

def _gae_args(**changes):
    args = dict(zip(["rewards", "values", "next_values", "terminated", "done"],
                    make_gae_inputs(4, 3, torch.float32, 0.1, 0.1)))
    args.update(gamma=0.99, lam=0.95)
    args.update(changes)
    return args


GAE_ERRORS = [
    (dict(rewards=torch.zeros(4, 3, dtype=torch.int64)), "rewards must be float32 or float64"),
    (dict(rewards=torch.zeros(4, 3, dtype=torch.float16)), "rewards must be float32 or float64"),
    (dict(values=torch.zeros(4, 3, dtype=torch.float64)), "values has dtype float64"),
    (dict(next_values=torch.zeros(4, 2)), r"next_values has shape \[4, 2\]"),
    (dict(terminated=torch.zeros(4, 3)), "terminated must be bool"),
    (dict(done=torch.zeros(4, 3, dtype=torch.uint8)), "done must be bool"),
    (dict(done=torch.zeros(3, 4, dtype=torch.bool)), r"done has shape \[3, 4\]"),
    (dict(rewards=torch.zeros(12), values=torch.zeros(12)), "rewards must be 2-D"),
    (dict(values=torch.zeros(4, 3, device="meta")), "values is on a different device"),
    (dict(gamma=1.5), r"gamma must be in \[0, 1\]"),
    (dict(lam=-0.1), r"lam must be in \[0, 1\]"),
]


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
@pytest.mark.parametrize("changes,message", GAE_ERRORS)
def test_gae_rejects_bad_arguments(impl, changes, message):
    with pytest.raises(ValueError, match=message):
        impl.gae(**_gae_args(**changes))


TOPK_ERRORS = [
    (dict(fraction=0.0), r"fraction must be in \(0, 1\]"),
    (dict(fraction=1.01), r"fraction must be in \(0, 1\]"),
    (dict(fraction=-0.5), r"fraction must be in \(0, 1\]"),
    (dict(advantages=torch.zeros(5, dtype=torch.int32)), "advantages must be float32 or float64"),
    (dict(valid=torch.ones(5)), "valid must be bool"),
    (dict(valid=torch.ones(4, dtype=bool)), r"valid has shape \[4\]"),
    (dict(advantages=torch.zeros(5, 1), valid=torch.ones(5, 1, dtype=bool)), "must be 1-D"),
    (dict(valid=torch.ones(5, dtype=bool, device="meta")), "valid is on a different device"),
    (dict(advantages=torch.tensor([1.0, float("nan"), 0, 0, 0])), "NaN"),
]


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
@pytest.mark.parametrize("changes,message", TOPK_ERRORS)
def test_topk_mask_rejects_bad_arguments(impl, changes, message):
    args = dict(advantages=torch.randn(5), valid=torch.ones(5, dtype=bool), fraction=0.5)
    args.update(changes)
    with pytest.raises(ValueError, match=message):
        impl.topk_mask(**args)


WEIGHT_ERRORS = [
    (dict(eta=torch.tensor(0.0)), "eta must be positive"),
    (dict(eta=torch.tensor(-2.0)), "eta must be positive"),
    (dict(eta=torch.tensor(float("nan"))), "eta must be positive"),
    (dict(eta=torch.tensor([1.0])), "eta must be a 0-d tensor"),
    (dict(eta=torch.tensor(1.0, dtype=torch.float64)), "eta has dtype float64"),
    (dict(eta=torch.tensor(1.0, device="meta")), "eta is on a different device"),
    (dict(selected=torch.ones(5, dtype=torch.int64)), "selected must be bool"),
    (dict(selected=torch.ones(6, dtype=bool)), r"selected has shape \[6\]"),
    (dict(advantages=torch.zeros(5, dtype=torch.bfloat16)), "float32 or float64"),
    (dict(advantages=torch.tensor([0.0, 1, 2, float("nan"), 4])), "NaN"),
]


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
@pytest.mark.parametrize("changes,message", WEIGHT_ERRORS)
def test_vmpo_weights_rejects_bad_arguments(impl, changes, message):
    args = dict(advantages=torch.randn(5), selected=torch.ones(5, dtype=bool),
                eta=torch.tensor(1.0))
    args.update(changes)
    with pytest.raises(ValueError, match=message):
        impl.vmpo_weights(**args)


def test_non_tensor_arguments_raise_type_error():
    with pytest.raises(TypeError):
        ops.topk_mask([1.0, 2.0], torch.ones(2, dtype=bool), 0.5)
    with pytest.raises(TypeError, match="advantages must be a torch.Tensor"):
        reference.topk_mask([1.0, 2.0], torch.ones(2, dtype=bool), 0.5)


@pytest.mark.parametrize("module", [ops, reference], ids=["native", "reference"])
@pytest.mark.parametrize("dtype,eta", [(torch.float32, 2e-39), (torch.float64, 1e-320)])
def test_vmpo_weights_at_a_denormal_eta_put_all_weight_on_the_maximum(module, dtype, eta):
    """A positive, finite eta so small that 1 / eta overflows: the limit, not NaN."""
    advantages = torch.tensor([1.0, 2.0, 2.0, -1.0, 5.0], dtype=dtype)
    selected = torch.tensor([True, True, True, True, False])
    weights, log_mean_exp = module.vmpo_weights(advantages, selected,
                                                torch.tensor(eta, dtype=dtype))
    assert weights.tolist() == [0.0, 0.5, 0.5, 0.0, 0.0]  # the tie shares it
    assert log_mean_exp.item() == math.inf  # log mean exp(a / eta) -> max / eta
