// Declarations shared by the CPU and CUDA kernels, plus the argument checks
// every backend runs. Each check names the offending argument: these ops are
// reachable as torch.ops.minerva.* without the Python wrappers in front.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>

namespace minerva {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// A RuntimeError in Python whose message is only what we say (STD_TORCH_CHECK
// would prepend the C++ function and source path).
template <typename... Args>
[[noreturn]] void fail(const Args&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::runtime_error(message.str());
}

template <typename... Args>
inline void check(bool condition, const Args&... parts) {
  if (!condition) fail(parts...);
}

inline const char* dtype_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Bool: return "bool";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    default: return "an unsupported dtype";
  }
}

inline std::string shape_string(const Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) out << (d ? ", " : "") << t.size(d);
  out << "]";
  return out.str();
}

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  const auto dtype = t.scalar_type();
  check(dtype == ScalarType::Float || dtype == ScalarType::Double, "minerva.", op, ": ", name,
        " must be float32 or float64, got ", dtype_name(dtype));
}

inline void check_bool(const char* op, const char* name, const Tensor& t) {
  check(t.scalar_type() == ScalarType::Bool, "minerva.", op, ": ", name, " must be bool, got ",
        dtype_name(t.scalar_type()));
}

inline void check_same_dtype(const char* op, const char* name, const Tensor& t, const char* ref_name,
                             const Tensor& ref) {
  check(t.scalar_type() == ref.scalar_type(), "minerva.", op, ": ", name, " has dtype ",
        dtype_name(t.scalar_type()), " but ", ref_name, " has dtype ",
        dtype_name(ref.scalar_type()));
}

inline void check_same_shape(const char* op, const char* name, const Tensor& t,
                             const char* ref_name, const Tensor& ref) {
  bool same = t.dim() == ref.dim();
  for (int64_t d = 0; same && d < t.dim(); ++d) same = t.size(d) == ref.size(d);
  check(same, "minerva.", op, ": ", name, " has shape ", shape_string(t), " but ", ref_name,
        " has shape ", shape_string(ref));
}

inline void check_same_device(const char* op, const char* name, const Tensor& t,
                              const char* ref_name, const Tensor& ref) {
  check(t.device() == ref.device(), "minerva.", op, ": ", name, " is on a different device than ",
        ref_name, " (all tensors must be on one device)");
}

inline void check_dim(const char* op, const char* name, const Tensor& t, int64_t dim,
                      const char* layout) {
  check(t.dim() == dim, "minerva.", op, ": ", name, " must be ", layout, ", got shape ",
        shape_string(t));
}

// Calls fn(float{}) or fn(double{}) for a float32 / float64 dtype (checked beforehand).
template <typename Fn>
void dispatch_floating(ScalarType dtype, const Fn& fn) {
  if (dtype == ScalarType::Double) {
    fn(double{});
  } else {
    fn(float{});
  }
}

// torch::stable::contiguous is a dispatcher call (~1 us) even for a contiguous tensor.
inline Tensor make_contiguous(const Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// gae(rewards, values, next_values, terminated, done, gamma, lam): all [T, N].
inline void check_gae_args(const Tensor& rewards, const Tensor& values, const Tensor& next_values,
                           const Tensor& terminated, const Tensor& done, double gamma,
                           double lam) {
  constexpr const char* op = "gae";
  check_dim(op, "rewards", rewards, 2, "2-D [T, N]");
  check_floating(op, "rewards", rewards);
  check_same_dtype(op, "values", values, "rewards", rewards);
  check_same_dtype(op, "next_values", next_values, "rewards", rewards);
  check_bool(op, "terminated", terminated);
  check_bool(op, "done", done);
  check_same_shape(op, "values", values, "rewards", rewards);
  check_same_shape(op, "next_values", next_values, "rewards", rewards);
  check_same_shape(op, "terminated", terminated, "rewards", rewards);
  check_same_shape(op, "done", done, "rewards", rewards);
  check_same_device(op, "values", values, "rewards", rewards);
  check_same_device(op, "next_values", next_values, "rewards", rewards);
  check_same_device(op, "terminated", terminated, "rewards", rewards);
  check_same_device(op, "done", done, "rewards", rewards);
  check(gamma >= 0.0 && gamma <= 1.0, "minerva.gae: gamma must be in [0, 1], got ", gamma);
  check(lam >= 0.0 && lam <= 1.0, "minerva.gae: lam must be in [0, 1], got ", lam);
}

// topk_mask(advantages, valid, fraction): all [B].
inline void check_topk_args(const Tensor& advantages, const Tensor& valid, double fraction) {
  constexpr const char* op = "topk_mask";
  check_dim(op, "advantages", advantages, 1, "1-D [B]");
  check_floating(op, "advantages", advantages);
  check_bool(op, "valid", valid);
  check_same_shape(op, "valid", valid, "advantages", advantages);
  check_same_device(op, "valid", valid, "advantages", advantages);
  check(fraction > 0.0 && fraction <= 1.0, "minerva.topk_mask: fraction must be in (0, 1], got ",
        fraction);
}

// vmpo_weights(advantages, selected, eta): [B], [B], 0-d. eta's value is checked by the kernel.
inline void check_weights_args(const Tensor& advantages, const Tensor& selected,
                               const Tensor& eta) {
  constexpr const char* op = "vmpo_weights";
  check_dim(op, "advantages", advantages, 1, "1-D [B]");
  check_floating(op, "advantages", advantages);
  check_bool(op, "selected", selected);
  check_same_shape(op, "selected", selected, "advantages", advantages);
  check_same_device(op, "selected", selected, "advantages", advantages);
  check_dim(op, "eta", eta, 0, "a 0-d tensor");
  check_same_dtype(op, "eta", eta, "advantages", advantages);
  check_same_device(op, "eta", eta, "advantages", advantages);
}

std::tuple<Tensor, Tensor> gae_cpu(Tensor rewards, Tensor values, Tensor next_values,
                                   Tensor terminated, Tensor done, double gamma, double lam);
Tensor topk_mask_cpu(Tensor advantages, Tensor valid, double fraction);
std::tuple<Tensor, Tensor> vmpo_weights_cpu(Tensor advantages, Tensor selected, Tensor eta);

// csrc/cuda/ (the _C_cuda library)
std::tuple<Tensor, Tensor> gae_cuda(Tensor rewards, Tensor values, Tensor next_values,
                                    Tensor terminated, Tensor done, double gamma, double lam);
std::tuple<Tensor, Tensor> gae_single_thread_cuda(Tensor rewards, Tensor values,
                                                  Tensor next_values, Tensor terminated,
                                                  Tensor done, double gamma, double lam);
Tensor topk_mask_cuda(Tensor advantages, Tensor valid, double fraction);
std::tuple<Tensor, Tensor> vmpo_weights_cuda(Tensor advantages, Tensor selected, Tensor eta);

}  // namespace minerva
