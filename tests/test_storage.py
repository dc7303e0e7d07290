"""RolloutStorage: round trips, next-value chaining, advantages in place, flattened batches,
bad arrays, and the native storage against the pure-Python reference, also fuzzed (hypothesis:
random layouts, input dtypes, memory layouts, NaN payloads, and bad steps that must raise
without touching the buffers)."""

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import minerva
from minerva import reference
from minerva.storage import RolloutStorage as NativeStorage

STORAGES = [NativeStorage, reference.RolloutStorage]
IDS = ["native", "reference"]

T, N, OBS, ACT, P = 4, 3, (5,), (2,), 4


def step_arrays(rng, t, *, obs_dtype=np.float64, torch_inputs=False):
    arrays = dict(
        observations=rng.standard_normal((N, *OBS)).astype(obs_dtype),
        actions=rng.uniform(-1, 1, (N, *ACT)).astype(np.float32),
        log_probs=rng.standard_normal(N).astype(np.float32),
        dist_params=rng.standard_normal((N, P)).astype(np.float32),
        values=rng.standard_normal(N).astype(np.float32),
        rewards=rng.standard_normal(N).astype(np.float32),
        terminated=rng.random(N) < 0.3,
        truncated=rng.random(N) < 0.3,
        valid=rng.random(N) < 0.8,
    )
    if torch_inputs:
        arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return arrays


def fill(storage, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    steps = [step_arrays(rng, t, **kwargs) for t in range(storage.num_steps)]
    for arrays in steps:
        storage.insert(**arrays)
    return steps


def test_native_storage_is_the_default():
    assert minerva.RolloutStorage is NativeStorage
    assert NativeStorage.__mro__[2].__module__ == "minerva._rollout_storage"


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
@pytest.mark.parametrize("torch_inputs", [False, True])
def test_round_trip(Storage, torch_inputs):
    storage = Storage(T, N, OBS, ACT, dist_params_dim=P)
    assert storage.step == 0 and not storage.full
    steps = fill(storage, torch_inputs=torch_inputs)
    assert storage.step == T and storage.full
    for t, arrays in enumerate(steps):
        for name, value in arrays.items():
            got = getattr(storage, name)[t]
            want = torch.as_tensor(np.asarray(value)).to(got.dtype)
            assert torch.equal(got, want), name
    # float64 observations land in float32 buffers
    assert storage.observations.dtype == torch.float32
    assert storage.observations.shape == (T, N, *OBS)


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_full_reset_and_overflow(Storage):
    storage = Storage(T, N, OBS, ACT, dist_params_dim=P)
    fill(storage)
    with pytest.raises(ValueError, match="full"):
        fill(storage)
    storage.reset()
    assert storage.step == 0 and not storage.full
    fill(storage, seed=1)
    assert storage.full


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_valid_defaults_to_true(Storage):
    storage = Storage(1, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    del arrays["valid"]
    storage.valid.fill_(False)
    storage.insert(**arrays)
    assert storage.valid.all()


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_batch_is_a_flat_view(Storage):
    storage = Storage(T, N, OBS, ACT, dist_params_dim=P)
    fill(storage)
    batch = storage.batch()
    assert batch.observations.shape == (T * N, *OBS)
    assert batch.actions.shape == (T * N, *ACT)
    assert batch.dist_params.shape == (T * N, P)
    for name in ("log_probs", "values", "advantages", "returns", "valid"):
        assert getattr(batch, name).shape == (T * N,)
    # a view: writing the buffer shows in the batch
    storage.advantages[1, 2] = 123.0
    assert batch.advantages[1 * N + 2].item() == 123.0
    assert storage.batch(device="cpu").advantages[1 * N + 2].item() == 123.0


def test_native_buffers_share_memory_and_outlive_python_references():
    storage = NativeStorage(T, N, OBS, ACT, dist_params_dim=P)
    observations = storage.observations
    fill(storage)
    del storage  # the tensor keeps the native buffers alive
    assert observations.abs().sum() > 0


def test_native_matches_reference_storage():
    native = NativeStorage(T, N, OBS, ACT, dist_params_dim=P)
    python = reference.RolloutStorage(T, N, OBS, ACT, dist_params_dim=P)
    for storage in (native, python):
        fill(storage, seed=7)
    assert native.buffers.keys() == python.buffers.keys()
    for name in ("observations", "actions", "log_probs", "dist_params", "values", "rewards",
                 "terminated", "truncated", "valid"):
        assert torch.equal(getattr(native, name), getattr(python, name)), name


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_discrete_actions(Storage):
    storage = Storage(2, N, (4,), discrete_actions=True, dist_params_dim=2)
    arrays = step_arrays(np.random.default_rng(0), 0)
    arrays.update(observations=np.zeros((N, 4)), actions=np.array([0, 1, 1], dtype=np.int32),
                  dist_params=np.zeros((N, 2), np.float32))
    storage.insert(**arrays)
    assert storage.actions.dtype == torch.int64
    assert storage.actions[0].tolist() == [0, 1, 1]
    arrays["actions"] = np.array([0.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="actions cannot be stored as int64"):
        storage.insert(**arrays)


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_uint8_observations(Storage):
    storage = Storage(1, N, (2, 2), ACT, observation_dtype=torch.uint8)
    arrays = step_arrays(np.random.default_rng(0), 0)
    arrays.update(observations=np.full((N, 2, 2), 200, np.uint8), dist_params=None)
    storage.insert(**arrays)
    assert storage.observations.dtype == torch.uint8 and storage.observations.eq(200).all()


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
@pytest.mark.parametrize("field,bad,message", [
    ("observations", np.zeros((N, 4)), r"observations must have shape \(3, 5\), got \(3, 4\)"),
    ("observations", np.zeros((N + 1, 5)), r"observations must have shape \(3, 5\)"),
    ("actions", np.zeros((N,), np.float32), r"actions must have shape \(3, 2\)"),
    ("log_probs", np.zeros((N, 1), np.float32), r"log_probs must have shape \(3,\)"),
    ("values", np.zeros((2,), np.float32), r"values must have shape \(3,\)"),
    ("rewards", np.zeros((N, N), np.float32), r"rewards must have shape \(3,\)"),
    ("dist_params", np.zeros((N, P + 1), np.float32), r"dist_params must have shape \(3, 4\)"),
    ("terminated", np.zeros((4,), bool), r"terminated must have shape \(3,\)"),
])
def test_insert_rejects_wrong_shapes(Storage, field, bad, message):
    storage = Storage(T, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    arrays[field] = bad
    with pytest.raises(ValueError, match=message):
        storage.insert(**arrays)
    assert storage.step == 0  # nothing was stored


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_insert_rejects_bad_types(Storage):
    storage = Storage(T, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    with pytest.raises(TypeError, match="terminated cannot be stored as bool"):
        storage.insert(**{**arrays, "terminated": np.zeros(N, np.float32)})
    with pytest.raises(TypeError, match="observations cannot be stored as float32"):
        storage.insert(**{**arrays, "observations": np.zeros((N, 5), np.complex64)})
    assert storage.step == 0


def test_native_insert_names_non_array_inputs():
    storage = NativeStorage(T, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    with pytest.raises(TypeError, match="rewards must be a numpy array or a torch tensor"):
        storage.insert(**{**arrays, "rewards": [0.0, 1.0, 2.0]})


def test_non_contiguous_inputs_are_accepted():
    storage = NativeStorage(1, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    wide = np.zeros((N, 10))
    wide[:, ::2] = arrays["observations"]
    storage.insert(**{**arrays, "observations": wide[:, ::2]})
    assert torch.equal(storage.observations[0], torch.from_numpy(arrays["observations"]).float())


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
@pytest.mark.parametrize("kwargs,message", [
    (dict(num_steps=0), "num_steps must be an integer >= 1"),
    (dict(num_envs=-1), "num_envs must be an integer >= 1"),
    (dict(observation_shape=(0,)), "observation_shape and action_shape entries must be >= 1"),
    (dict(discrete_actions=True), "discrete actions are one integer per env"),
    (dict(dist_params_dim=-2), "dist_params_dim must be an integer >= 0, got -2"),
    (dict(dist_params_dim=2.5), "dist_params_dim must be an integer >= 0, got 2.5"),
    (dict(observation_dtype=torch.float64), "observation_dtype must be"),
])
def test_constructor_rejects_bad_layouts(Storage, kwargs, message):
    args = dict(num_steps=T, num_envs=N, observation_shape=OBS, action_shape=ACT)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Storage(**args)


# --- sizes: checked before anything is allocated -------------------------------------------

NativeClass = NativeStorage.__mro__[2]  # the pybind11 class, without the Python-side checks


@pytest.mark.parametrize("args,buffer,arguments", [
    ((2**62, 4, [1], [], True, 0, False), "observations",
     "num_steps, num_envs or observation_shape"),
    ((4, 2**40, [1], [2**30], False, 0, False), "actions", "action_shape"),
    ((1, 1, [2**31, 2**31, 2**31], [], True, 0, True), "observations", "observation_shape"),
    ((1, 2, [1], [], True, 2**62, False), "dist_params", "dist_params_dim"),
    ((2**61, 2, [1], [], True, 0, True), "actions", "num_steps, num_envs"),
])
def test_native_constructor_rejects_sizes_that_overflow(args, buffer, arguments):
    # a wrapped-around product would allocate a tiny buffer that inserts then overrun
    with pytest.raises(OverflowError, match=rf"the {buffer} buffer of shape .* would need "
                                            rf"[0-9.e+]+ bytes.*reduce .*{arguments}"):
        NativeClass(*args)


def test_public_storage_reports_overflow_the_same_way():
    with pytest.raises(OverflowError, match=r"observations buffer of shape "
                                            r"\(4611686018427387904, 4, 1\) \(float32\) would "
                                            r"need 7.38e\+19 bytes"):
        NativeStorage(2**62, 4, (1,), discrete_actions=True)


@pytest.mark.parametrize("Storage", [NativeStorage, reference.RolloutStorage])
@pytest.mark.parametrize("kwargs,name", [
    (dict(num_steps=2**64), "num_steps"),
    (dict(observation_shape=(3, 2**70)), "observation_shape"),
    (dict(dist_params_dim=2**63), "dist_params_dim"),
])
def test_sizes_beyond_int64_are_named(Storage, kwargs, name):
    arguments = {"num_steps": 2, "num_envs": 2, "observation_shape": (3,), **kwargs}
    with pytest.raises(OverflowError, match=rf"RolloutStorage: {name} holds \d+, more than"):
        Storage(**arguments)


def test_native_constructor_names_an_allocation_that_fails():
    # 2**52 bytes (4 PiB) fit a 64-bit size but no x86-64 or arm64 process can map them
    with pytest.raises(MemoryError, match=r"cannot allocate 4.5e\+15 bytes for the observations "
                                          r"buffer of shape \(1048576, 1048576, 1024\)"):
        NativeStorage(2**20, 2**20, (2**10,))


@pytest.mark.parametrize("args,message", [
    ((0, 1, [1], [], True, 0, False), "num_steps must be >= 1, got 0"),
    ((1, -3, [1], [], True, 0, False), "num_envs must be >= 1, got -3"),
    ((1, 1, [2, -1], [], True, 0, False), "every observation_shape entry must be >= 1, got -1"),
    ((1, 1, [2], [0], False, 0, False), "every action_shape entry must be >= 1, got 0"),
    ((1, 1, [2], [], True, -1, False), "dist_params_dim must be >= 0, got -1"),
])
def test_native_constructor_rejects_non_positive_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        NativeClass(*args)


# --- inputs the copies must not misread ----------------------------------------------------

def test_native_insert_reads_byte_swapped_arrays_by_value():
    storage = NativeStorage(1, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    swapped = {name: value.astype(value.dtype.newbyteorder(">")) if value.dtype.itemsize > 1
               else value for name, value in arrays.items()}
    storage.insert(**swapped)
    for name, value in arrays.items():
        got = getattr(storage, name)[0]
        assert torch.equal(got, torch.from_numpy(value).to(got.dtype)), name


def test_native_insert_stores_bool_bytes_as_zero_or_one():
    # a bool view of arbitrary bytes: loading a 2 as bool is undefined, so it must be read as
    # a byte and stored as True (1)
    storage = NativeStorage(1, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    flags = np.array([0, 2, 255], np.uint8).view(bool)
    storage.insert(**{**arrays, "terminated": flags, "observations": np.stack([flags] * 5, 1)})
    assert storage.terminated[0].view(torch.uint8).tolist() == [0, 1, 1]
    assert storage.observations[0, :, 0].tolist() == [0.0, 1.0, 1.0]


def test_native_insert_accepts_its_own_rows():
    # the source may be the very row being written (a view of the storage's own buffer)
    storage = NativeStorage(2, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    storage.observations[0] = torch.arange(N * 5, dtype=torch.float32).reshape(N, 5)
    storage.insert(**{**arrays, "observations": storage.observations[0]})
    assert torch.equal(storage.observations[0].flatten(), torch.arange(N * 5).float())


def test_native_insert_names_tensors_numpy_cannot_read():
    storage = NativeStorage(1, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(np.random.default_rng(0), 0)
    with pytest.raises(TypeError, match="observations cannot be read as a numpy array.*BFloat16"):
        storage.insert(**{**arrays, "observations": torch.zeros(N, 5, dtype=torch.bfloat16)})
    assert storage.step == 0


def test_native_insert_takes_one_writer_at_a_time():
    """Two threads inserting into one storage would write one row twice and leave another
    unwritten (the copies run without the GIL): while one copies, the other is refused, and
    every row holds exactly one insert."""
    import threading

    steps, envs, obs = 64, 256, (2048,)
    storage = NativeStorage(steps, envs, obs, (), discrete_actions=True)
    refusals, inserted = [], {1: 0, 2: 0}
    barrier = threading.Barrier(2)

    def insert(writer):
        arrays = dict(observations=np.full((envs, *obs), writer, np.float64),
                      actions=np.zeros(envs, np.int64), log_probs=np.zeros(envs, np.float32),
                      dist_params=None, values=np.zeros(envs, np.float32),
                      rewards=np.full(envs, writer, np.float32),
                      terminated=np.zeros(envs, bool), truncated=np.zeros(envs, bool))
        barrier.wait()
        while True:
            try:
                storage.insert(**arrays)
                inserted[writer] += 1
            except RuntimeError as error:
                refusals.append(str(error))
            except ValueError:  # full
                return

    threads = [threading.Thread(target=insert, args=(writer,)) for writer in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.full and inserted[1] + inserted[2] == steps
    rows = storage.rewards[:, 0].tolist()
    assert rows.count(1.0) == inserted[1] and rows.count(2.0) == inserted[2]
    for t in range(steps):  # no row mixes the two writers
        assert storage.observations[t].unique().numel() == 1
    assert all("another thread is inserting into this storage" in e for e in refusals)


@pytest.mark.parametrize("Storage", STORAGES, ids=IDS)
def test_both_storages_take_and_refuse_the_same_dtypes(Storage):
    rng = np.random.default_rng(0)
    storage = Storage(2, N, OBS, ACT, dist_params_dim=P)
    arrays = step_arrays(rng, 0)
    for name, value in (("observations", arrays["observations"].astype(np.float16)),
                        ("rewards", arrays["rewards"].astype(np.uint64))):
        with pytest.raises(TypeError, match=f"RolloutStorage.insert: {name} cannot be stored"):
            storage.insert(**{**arrays, name: value})
    big_endian = arrays["observations"].astype(">f8")  # converted, as numpy would read it
    storage.insert(**{**arrays, "observations": big_endian})
    torch.testing.assert_close(storage.observations[0],
                               torch.from_numpy(big_endian.astype("<f4")))


# --- the native insert fuzzed against the reference ----------------------------------------

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


@pytest.mark.skipif(NativeStorage is reference.RolloutStorage,
                    reason="native storage not built")
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
