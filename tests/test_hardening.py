"""Fuzzing the native RolloutStorage.insert against the pure-Python reference: random layouts,
input dtypes, memory layouts (strided, transposed, reversed, byte-swapped, torch tensors),
NaN payloads, and bad steps that must raise without touching the buffers."""

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from minerva import reference
from minerva.storage import RolloutStorage as NativeStorage

pytestmark = pytest.mark.skipif(NativeStorage is reference.RolloutStorage,
                                reason="native storage not built")

FIELDS = ["observations", "actions", "log_probs", "dist_params", "values", "rewards",
          "terminated", "truncated", "valid"]

INTEGERS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"]
# buffer dtype -> (input dtypes the native storage converts, input dtypes it must refuse)
DTYPES = {
    "float32": (["float32", "float64", *INTEGERS, "bool"], ["float16", "uint64", "complex64"]),
    "int64": (INTEGERS, ["float32", "float64", "bool", "uint64"]),
    "uint8": (["uint8"], ["int8", "float32", "bool"]),
    "bool": (["bool"], ["uint8", "float32", "int64"]),
}

LAYOUTS = ["contiguous", "strided", "transposed", "reversed", "byteswapped", "torch",
           "torch_strided", "torch_transposed"]


def random_values(rng, shape, dtype):
    return np.asarray(_random_values(rng, shape, np.dtype(dtype)))  # 0-d arrays, not scalars


def _random_values(rng, shape, dtype):
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    values = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)
    if dtype.kind == "c":
        return values.astype(dtype)
    values = values.astype(dtype)
    if dtype.itemsize >= 4 and values.size:
        # NaNs with random payloads (quiet and signalling), infinities and -0.0
        special = rng.random(shape) < 0.2
        bits = np.dtype(f"u{dtype.itemsize}")
        exponent = {4: 0x7F800000, 8: 0x7FF0000000000000}[dtype.itemsize]
        payload = rng.integers(1, {4: 1 << 23, 8: 1 << 52}[dtype.itemsize], shape, dtype=bits)
        sign = rng.integers(0, 2, shape, dtype=bits) << np.asarray(8 * dtype.itemsize - 1, bits)
        nans = (exponent | payload | sign).astype(bits).view(dtype)
        pick = rng.integers(0, 4, shape)
        extra = np.where(pick == 0, np.inf, np.where(pick == 1, -np.inf, -0.0)).astype(dtype)
        values = np.where(special, np.where(pick >= 2, nans, extra), values)
    return values


def laid_out(array, layout):
    """The same values in another memory layout (what the native storage must read)."""
    if layout == "contiguous" or array.ndim == 0:  # (0-d: from a wrong shape)
        return array
    if layout in ("strided", "torch_strided"):  # every other row of a twice-as-long array
        wide = np.zeros((2 * array.shape[0], *array.shape[1:]), array.dtype)
        wide[::2] = array
        array = wide[::2]
    elif layout in ("transposed", "torch_transposed"):  # Fortran order: a transposed view
        array = np.ascontiguousarray(array.T).T
    elif layout == "reversed":  # negative strides
        array = array[::-1].copy()[::-1]
    elif layout == "byteswapped" and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("S"))
    return torch.from_numpy(array) if layout.startswith("torch") else array


@st.composite
def storage_layouts(draw):
    discrete = draw(st.booleans())
    return dict(
        num_steps=draw(st.integers(1, 4)), num_envs=draw(st.integers(1, 5)),
        observation_shape=tuple(draw(st.lists(st.integers(1, 4), max_size=3))),
        action_shape=() if discrete else tuple(draw(st.lists(st.integers(1, 3), min_size=1,
                                                             max_size=2))),
        discrete_actions=discrete, dist_params_dim=draw(st.integers(0, 3)),
        observation_dtype=draw(st.sampled_from([torch.float32, torch.uint8])),
    )


@st.composite
def steps(draw, layout):
    """One insert: per field a dtype and a memory layout, and now and then one bad field."""
    buffer_dtypes = {name: str(tensor.dtype).removeprefix("torch.")
                     for name, tensor in reference.RolloutStorage(**layout).buffers.items()}
    fields = {name: (draw(st.sampled_from(DTYPES[buffer_dtypes[name]][0])),
                     draw(st.sampled_from(LAYOUTS))) for name in FIELDS}
    # None stands for valid = all True, and for dist_params when there are none
    omittable = ["valid"] + (["dist_params"] if layout["dist_params_dim"] == 0 else [])
    omit = {name for name in omittable if draw(st.booleans())}
    fault = draw(st.sampled_from([None] * 6 + ["dtype", "shape"]))
    bad_field = draw(st.sampled_from(sorted(set(FIELDS) - omit))) if fault else None
    bad_dtype = draw(st.sampled_from(DTYPES[buffer_dtypes[bad_field]][1])) if fault else None
    bad_shape = draw(st.sampled_from(["wider", "extra", "fewer"])) if fault else None
    return fields, omit, fault, bad_field, bad_dtype, bad_shape


def make_step(rng, layout, step):
    """(native inputs, reference inputs, bad field or None) for one insert."""
    fields, omit, fault, bad_field, bad_dtype, bad_shape = step
    n = layout["num_envs"]
    trailing = {"observations": layout["observation_shape"], "actions": layout["action_shape"],
                "dist_params": (layout["dist_params_dim"],)}
    native, python = {}, {}
    for name, (dtype, memory) in fields.items():
        if name in omit:
            native[name] = python[name] = None
            continue
        shape = (n, *trailing.get(name, ()))
        if name == bad_field and fault == "dtype":
            dtype = bad_dtype
        if name == bad_field and fault == "shape":
            shape = {"wider": (shape[0] + 1, *shape[1:]), "extra": (*shape, 1),
                     "fewer": shape[:-1]}[bad_shape]
        values = random_values(rng, shape, dtype)
        native[name] = laid_out(values, memory)
        # the reference defines the values; it reads them plainly (torch cannot take
        # byte-swapped or negatively strided arrays)
        python[name] = torch.from_numpy(values) if memory.startswith("torch") else values
    return native, python, bad_field


def bits(tensor):
    return tensor.contiguous().view(torch.uint8)


def snapshot(storage):
    return {name: tensor.clone() for name, tensor in storage.buffers.items()}


@settings(max_examples=150, deadline=None)
@given(layout=storage_layouts(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_native_insert_matches_reference(layout, data, seed):
    rng = np.random.default_rng(seed)
    native, python = NativeStorage(**layout), reference.RolloutStorage(**layout)
    for _ in range(data.draw(st.integers(1, 2 * layout["num_steps"]))):
        if native.full:
            break
        native_inputs, python_inputs, bad_field = make_step(rng, layout,
                                                            data.draw(steps(layout)))
        if bad_field is None:
            native.insert(**native_inputs)
            python.insert(**python_inputs)
            continue
        before = snapshot(native)
        with pytest.raises((TypeError, ValueError), match=f"RolloutStorage.insert: {bad_field} "
                                                          "(must have shape|cannot be stored)"
                           ) as native_error:
            native.insert(**native_inputs)
        assert native.step == python.step
        for name, tensor in before.items():  # nothing was written
            assert torch.equal(bits(native.buffers[name]), bits(tensor)), name
        # where the reference refuses too (it is laxer about some dtypes), it says the same
        probe = reference.RolloutStorage(**layout)
        try:
            probe.insert(**python_inputs)
        except (TypeError, ValueError) as python_error:
            assert type(python_error) is native_error.type
            assert str(python_error) == str(native_error.value)

    assert native.step == python.step
    t = native.step  # the reference may leave partial rows behind a refused insert: compare
    for name in native.buffers:  # the inserted ones, bit for bit (NaN payloads included)
        if name not in ("advantages", "returns"):
            assert torch.equal(bits(getattr(native, name)[:t]),
                               bits(getattr(python, name)[:t])), name
