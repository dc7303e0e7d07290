// RolloutStorage: preallocated [T, N, ...] buffers for one V-MPO rollout.
// Python hands in envpool's numpy arrays (or CPU torch tensors); each insert
// validates every array, then converts and copies all of them in one pass with
// the GIL released. The buffers are exposed as numpy arrays that share this
// object's memory; minerva/storage.py wraps them as torch tensors (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iomanip>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace minerva {
namespace {

enum class Kind { Float32, Int64, UInt8, Bool };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Float32: return "float32";
    case Kind::Int64: return "int64";
    case Kind::UInt8: return "uint8";
    case Kind::Bool: return "bool";
  }
  return "?";
}

size_t kind_size(Kind kind) {
  switch (kind) {
    case Kind::Float32: return 4;
    case Kind::Int64: return 8;
    case Kind::UInt8: return 1;
    case Kind::Bool: return 1;
  }
  return 1;
}

py::dtype kind_dtype(Kind kind) {
  switch (kind) {
    case Kind::Float32: return py::dtype::of<float>();
    case Kind::Int64: return py::dtype::of<int64_t>();
    case Kind::UInt8: return py::dtype::of<uint8_t>();
    case Kind::Bool: return py::dtype::of<bool>();
  }
  return py::dtype::of<float>();
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t d = 0; d < shape.size(); ++d) {
    out += (d ? ", " : "") + std::to_string(shape[d]);
  }
  return out + (shape.size() == 1 ? ",)" : ")");
}

// "7.38e+19 bytes": sizes in messages, including ones no integer type holds.
std::string bytes_string(long double bytes) {
  std::ostringstream out;
  out << std::setprecision(3) << static_cast<double>(bytes) << " bytes";
  return out.str();
}

// A std::bad_alloc that says what failed to allocate: pybind11 raises it as MemoryError
// with this message.
class AllocationError : public std::bad_alloc {
 public:
  explicit AllocationError(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// The most bytes one buffer may take: numpy and torch index arrays with signed 64-bit
// sizes, and the allocation is rounded up to a whole 64-byte line.
constexpr uint64_t kMaxBufferBytes =
    static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - 63;

// The layout of one [T, N, *trailing] buffer, its size checked: a product that wrapped
// around would allocate a tiny buffer that inserts then write far past.
struct BufferSpec {
  std::string name;
  Kind kind;
  std::vector<int64_t> trailing;  // shape after [T, N]
  const char* arguments;          // the constructor arguments its size comes from
  std::vector<int64_t> shape;     // [T, N, *trailing]
  int64_t row_elements = 0;       // N * prod(trailing): one time step
  size_t bytes = 0;

  BufferSpec(std::string name_, Kind kind_, std::vector<int64_t> trailing_,
             const char* arguments_, int64_t T, int64_t N)
      : name(std::move(name_)), kind(kind_), trailing(std::move(trailing_)),
        arguments(arguments_), shape({T, N}) {
    shape.insert(shape.end(), trailing.begin(), trailing.end());
    // Every factor is >= 0 (checked by the constructor), so overflow is the only failure.
    uint64_t row = static_cast<uint64_t>(N);
    bool overflow = false;
    for (int64_t d : trailing) {
      overflow |= __builtin_mul_overflow(row, static_cast<uint64_t>(d), &row);
    }
    uint64_t total = 0;
    overflow |= __builtin_mul_overflow(row, static_cast<uint64_t>(T), &total);
    overflow |= __builtin_mul_overflow(total, static_cast<uint64_t>(kind_size(kind)), &total);
    if (overflow || total > kMaxBufferBytes) {
      long double wanted = kind_size(kind);
      for (int64_t d : shape) wanted *= d;
      throw std::overflow_error("RolloutStorage: the " + name + " buffer of shape " +
                                shape_string(shape) + " (" + kind_name(kind) +
                                ") would need " + bytes_string(wanted) + ", more than the " +
                                bytes_string(kMaxBufferBytes) + " an array can hold; reduce " +
                                arguments);
    }
    row_elements = static_cast<int64_t>(row);
    bytes = static_cast<size_t>(total);
  }
};

// One buffer, 64-byte aligned and zeroed.
struct Buffer : BufferSpec {
  std::unique_ptr<unsigned char, decltype(&std::free)> data{nullptr, &std::free};

  // total_bytes: what the whole storage needs, for the message when this allocation fails.
  Buffer(const BufferSpec& spec, long double total_bytes) : BufferSpec(spec) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    data.reset(static_cast<unsigned char*>(std::aligned_alloc(64, rounded ? rounded : 64)));
    if (!data) {
      throw AllocationError("RolloutStorage: cannot allocate " + bytes_string(bytes) +
                            " for the " + name + " buffer of shape " + shape_string(shape) +
                            " (" + kind_name(kind) + "); the storage needs " +
                            bytes_string(total_bytes) + " in all; reduce " + arguments);
    }
    std::memset(data.get(), 0, rounded);
  }

  unsigned char* row(int64_t t) const {
    return data.get() + static_cast<size_t>(t * row_elements) * kind_size(kind);
  }
  template <typename T>
  T* typed_row(int64_t t) const {
    return reinterpret_cast<T*>(row(t));
  }
};

// A validated source array waiting to be copied into one buffer row.
struct PendingCopy {
  py::array source;  // keeps the memory alive until the copy is done
  const void* from;
  char source_kind;  // numpy kind: 'f', 'i', 'u', 'b'
  size_t source_size;
  Kind to_kind;
  void* to;
  int64_t count;
};

template <typename Dst, typename Src>
void convert(void* to, const void* from, int64_t count) {
  const Src* src = static_cast<const Src*>(from);
  Dst* dst = static_cast<Dst*>(to);
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<Dst>(src[i]);
}

// numpy bools are bytes, and a view of other bytes can hold values other than 0 and 1
// (loading those as bool is undefined): read them as bytes and store 0 or 1.
template <typename Dst>
void convert_flags(void* to, const void* from, int64_t count) {
  const uint8_t* src = static_cast<const uint8_t*>(from);
  Dst* dst = static_cast<Dst*>(to);
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<Dst>(src[i] != 0);
}

template <typename Dst>
void convert_from(char kind, size_t size, void* to, const void* from, int64_t count) {
  if (kind == 'f' && size == 4) return convert<Dst, float>(to, from, count);
  if (kind == 'f' && size == 8) return convert<Dst, double>(to, from, count);
  if (kind == 'i' && size == 1) return convert<Dst, int8_t>(to, from, count);
  if (kind == 'i' && size == 2) return convert<Dst, int16_t>(to, from, count);
  if (kind == 'i' && size == 4) return convert<Dst, int32_t>(to, from, count);
  if (kind == 'i' && size == 8) return convert<Dst, int64_t>(to, from, count);
  if (kind == 'u' && size == 1) return convert<Dst, uint8_t>(to, from, count);
  if (kind == 'u' && size == 2) return convert<Dst, uint16_t>(to, from, count);
  if (kind == 'u' && size == 4) return convert<Dst, uint32_t>(to, from, count);
  if (kind == 'b') return convert_flags<Dst>(to, from, count);
}

void run_copy(const PendingCopy& copy) {
  if (copy.source_size == kind_size(copy.to_kind) &&
      ((copy.to_kind == Kind::Float32 && copy.source_kind == 'f') ||
       (copy.to_kind == Kind::Int64 && copy.source_kind == 'i') ||
       (copy.to_kind == Kind::UInt8 && copy.source_kind == 'u'))) {
    // memmove: the source may be a view of this very row (the storage's own arrays).
    std::memmove(copy.to, copy.from, copy.count * copy.source_size);
    return;
  }
  switch (copy.to_kind) {
    case Kind::Float32:
      return convert_from<float>(copy.source_kind, copy.source_size, copy.to, copy.from,
                                 copy.count);
    case Kind::Int64:
      return convert_from<int64_t>(copy.source_kind, copy.source_size, copy.to, copy.from,
                                   copy.count);
    case Kind::Bool:
      return convert_flags<uint8_t>(copy.to, copy.from, copy.count);
    case Kind::UInt8:
      return;  // only uint8 sources are accepted, copied above
  }
}

// Which numpy kinds may land in a buffer without losing meaning.
bool accepts(Kind to, char kind, size_t size) {
  switch (to) {
    case Kind::Float32:
      return (kind == 'f' && (size == 4 || size == 8)) || kind == 'i' ||
             (kind == 'u' && size <= 4) || kind == 'b';
    case Kind::Int64:
      return kind == 'i' || (kind == 'u' && size <= 4);
    case Kind::UInt8:
      return kind == 'u' && size == 1;
    case Kind::Bool:
      return kind == 'b';
  }
  return false;
}

// `value` as a C-contiguous numpy array in native byte order (a copy only where needed);
// `method` and `argument` name it in error messages (built only then: this runs per field
// and step).
py::array as_array(const py::handle& value, const char* method, const std::string& argument) {
  auto where = [&] { return std::string(method) + ": " + argument; };
  py::array array;
  if (py::isinstance<py::array>(value)) {
    array = py::reinterpret_borrow<py::array>(value);
  } else if (py::hasattr(value, "detach") && py::hasattr(value, "numpy")) {  // a torch.Tensor
    try {
      array = value.attr("detach")().attr("cpu")().attr("numpy")().cast<py::array>();
    } catch (py::error_already_set& error) {  // e.g. bfloat16, which numpy lacks
      throw py::type_error(where() + " cannot be read as a numpy array (" + error.what() + ")");
    }
  } else {
    throw py::type_error(where() + " must be a numpy array or a torch tensor, got " +
                         py::str(py::type::of(value).attr("__name__")).cast<std::string>());
  }
  // The copies read raw bytes, so a byte-swapped array would be stored scrambled. (Read
  // from the dtype's struct and the array's flags: Python attribute lookups here, once per
  // field and step, cost as much as the whole copy.)
  constexpr char kSwapped = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '>' : '<';
  if (array.dtype().byteorder() == kSwapped) {
    array = array.attr("astype")(array.dtype().attr("newbyteorder")("="));
  }
  if (!(array.flags() & py::array::c_style)) {
    array = py::array::ensure(array, py::array::c_style);
    if (!array) throw py::error_already_set();
  }
  return array;
}

class RolloutStorage {
 public:
  RolloutStorage(int64_t num_steps, int64_t num_envs, std::vector<int64_t> observation_shape,
                 std::vector<int64_t> action_shape, bool discrete_actions,
                 int64_t dist_params_dim, bool uint8_observations)
      : T_(num_steps), N_(num_envs) {
    auto positive = [](int64_t value, const char* what) {
      if (value < 1) {
        throw py::value_error(std::string("RolloutStorage: ") + what + " must be >= 1, got " +
                              std::to_string(value));
      }
    };
    positive(num_steps, "num_steps");
    positive(num_envs, "num_envs");
    for (int64_t d : observation_shape) positive(d, "every observation_shape entry");
    for (int64_t d : action_shape) positive(d, "every action_shape entry");
    if (discrete_actions && !action_shape.empty()) {
      throw py::value_error("RolloutStorage: discrete actions are one integer per env; "
                            "action_shape must be (), got " + shape_string(action_shape));
    }
    if (dist_params_dim < 0) {
      throw py::value_error("RolloutStorage: dist_params_dim must be >= 0, got " +
                            std::to_string(dist_params_dim));
    }
    // Every size is checked before anything is allocated.
    const char* per_step = "num_steps or num_envs";
    std::vector<BufferSpec> specs;
    auto add = [&](const char* name, Kind kind, std::vector<int64_t> trailing,
                   const char* arguments) {
      specs.emplace_back(name, kind, std::move(trailing), arguments, T_, N_);
    };
    add("observations", uint8_observations ? Kind::UInt8 : Kind::Float32, observation_shape,
        "num_steps, num_envs or observation_shape");
    add("actions", discrete_actions ? Kind::Int64 : Kind::Float32, action_shape,
        "num_steps, num_envs or action_shape");
    add("log_probs", Kind::Float32, {}, per_step);
    add("dist_params", Kind::Float32, {dist_params_dim}, "num_steps, num_envs or dist_params_dim");
    add("values", Kind::Float32, {}, per_step);
    add("rewards", Kind::Float32, {}, per_step);
    add("terminated", Kind::Bool, {}, per_step);
    add("truncated", Kind::Bool, {}, per_step);
    add("valid", Kind::Bool, {}, per_step);
    add("advantages", Kind::Float32, {}, per_step);
    add("returns", Kind::Float32, {}, per_step);
    long double total_bytes = 0;
    for (const BufferSpec& spec : specs) total_bytes += spec.bytes;
    buffers_.reserve(specs.size());
    for (const BufferSpec& spec : specs) buffers_.emplace_back(spec, total_bytes);
  }

  int64_t num_steps() const { return T_; }
  int64_t num_envs() const { return N_; }
  int64_t step() const { return step_; }
  bool full() const { return step_ == T_; }
  void reset() { step_ = 0; }

  // Stores step `step()` of the rollout.
  void insert(const py::object& observations, const py::object& actions,
              const py::object& log_probs, const py::object& dist_params,
              const py::object& values, const py::object& rewards,
              const py::object& terminated, const py::object& truncated,
              const py::object& valid) {
    // One writer at a time: the copies run without the GIL, so a second thread's insert
    // would write the same row and lose one.
    if (inserting_.exchange(true)) {
      throw std::runtime_error(
          "RolloutStorage.insert: another thread is inserting into this storage; a storage "
          "takes one writer at a time");
    }
    struct Done {
      std::atomic<bool>& flag;
      ~Done() { flag.store(false); }
    } done{inserting_};
    if (full()) {
      throw py::value_error("RolloutStorage.insert: the storage is full (" + std::to_string(T_) +
                            " steps); call reset() before inserting more");
    }
    std::vector<PendingCopy> copies;
    copies.reserve(9);
    auto stage = [&](const py::object& value, Buffer& buffer) {
      const std::string& name = buffer.name;
      py::array array = as_array(value, "RolloutStorage.insert", name);
      std::vector<int64_t> expected = {N_};
      expected.insert(expected.end(), buffer.trailing.begin(), buffer.trailing.end());
      std::vector<int64_t> got(array.shape(), array.shape() + array.ndim());
      if (got != expected) {
        throw py::value_error("RolloutStorage.insert: " + name + " must have shape " +
                              shape_string(expected) + ", got " + shape_string(got));
      }
      const char kind = array.dtype().kind();
      const size_t size = static_cast<size_t>(array.itemsize());
      if (!accepts(buffer.kind, kind, size)) {
        throw py::type_error("RolloutStorage.insert: " + name + " cannot be stored as " +
                             kind_name(buffer.kind) + " (got dtype " +
                             py::str(array.dtype()).cast<std::string>() + ")");
      }
      copies.push_back({array, array.data(), kind, size, buffer.kind, buffer.row(step_),
                        buffer.row_elements});
    };
    stage(observations, buffer("observations"));
    stage(actions, buffer("actions"));
    stage(log_probs, buffer("log_probs"));
    if (!dist_params.is_none() || buffer("dist_params").row_elements != 0) {
      stage(dist_params, buffer("dist_params"));
    }
    stage(values, buffer("values"));
    stage(rewards, buffer("rewards"));
    stage(terminated, buffer("terminated"));
    stage(truncated, buffer("truncated"));
    bool* valid_row = buffer("valid").typed_row<bool>(step_);
    if (!valid.is_none()) stage(valid, buffer("valid"));

    {
      py::gil_scoped_release release;
      for (const PendingCopy& copy : copies) run_copy(copy);
      if (valid.is_none()) std::fill(valid_row, valid_row + N_, true);
    }
    ++step_;
  }

  // name -> numpy array viewing the buffer; `owner` keeps this object alive.
  py::dict arrays(const py::object& owner) const {
    py::dict out;
    for (const Buffer& b : buffers_) {
      std::vector<py::ssize_t> shape(b.shape.begin(), b.shape.end());
      out[py::str(b.name)] = py::array(kind_dtype(b.kind), shape, {}, b.data.get(), owner);
    }
    return out;
  }

 private:
  Buffer& buffer(const char* name) {
    for (Buffer& b : buffers_) {
      if (b.name == name) return b;
    }
    throw std::logic_error(std::string("no buffer named ") + name);
  }

  int64_t T_;
  int64_t N_;
  int64_t step_ = 0;
  std::atomic<bool> inserting_{false};
  std::vector<Buffer> buffers_;
};

}  // namespace
}  // namespace minerva

PYBIND11_MODULE(_rollout_storage, m) {
  m.doc() = "Native rollout storage for minerva (see minerva.storage.RolloutStorage).";
  using minerva::RolloutStorage;
  py::class_<RolloutStorage>(m, "RolloutStorage")
      .def(py::init<int64_t, int64_t, std::vector<int64_t>, std::vector<int64_t>, bool, int64_t,
                    bool>(),
           py::arg("num_steps"), py::arg("num_envs"), py::arg("observation_shape"),
           py::arg("action_shape"), py::arg("discrete_actions"), py::arg("dist_params_dim"),
           py::arg("uint8_observations"))
      .def_property_readonly("num_steps", &RolloutStorage::num_steps)
      .def_property_readonly("num_envs", &RolloutStorage::num_envs)
      .def_property_readonly("step", &RolloutStorage::step)
      .def_property_readonly("full", &RolloutStorage::full)
      .def("reset", &RolloutStorage::reset)
      .def("insert", &RolloutStorage::insert, py::arg("observations"), py::arg("actions"),
           py::arg("log_probs"), py::arg("dist_params"), py::arg("values"), py::arg("rewards"),
           py::arg("terminated"), py::arg("truncated"), py::arg("valid") = py::none())
      .def("_arrays", [](const py::object& self) {
        return self.cast<const RolloutStorage&>().arrays(self);
      });
}
