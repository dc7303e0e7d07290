// What every CUDA kernel file shares: the current stream, launch checks, the device's
// SM count, and the status word through which kernels report bad input to the host.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <cstdint>

#include "ops.h"

namespace minerva::cuda {

constexpr int kThreads = 256;

// The stream torch is using on the tensor's device, so kernels order with torch's own work.
inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  check(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS,
        "minerva: could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

// CUDA failures read "minerva: CUDA error in <op>", not "minerva.<op>: ...", so the Python
// wrappers keep them RuntimeErrors instead of reporting them as bad arguments.
inline void check_launch(const char* op) {
  const cudaError_t error = cudaGetLastError();
  check(error == cudaSuccess, "minerva: CUDA error in ", op, ": ", cudaGetErrorString(error));
}

inline int multiprocessor_count(const Tensor& t) {
  int count = 0;
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device_index());
  return count > 0 ? count : 1;
}

// A grid of at most `blocks_per_sm` resident blocks per SM covering `size` elements with
// grid-stride loops: enough to saturate memory bandwidth without a block per element.
inline unsigned int grid_for(const Tensor& t, int64_t size, int blocks_per_sm = 4) {
  const int64_t needed = (size + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(multiprocessor_count(t)) * blocks_per_sm;
  return static_cast<unsigned int>(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

inline void check_cuda_tensor(const char* op, const char* name, const Tensor& t) {
  check(t.is_cuda(), "minerva.", op, ": ", name, " must be a CUDA tensor");
}

// Kernels cannot throw: they set bits of a device status word, which the host reads once,
// after the last kernel of an op, and turns into the error the CPU kernel would raise.
enum Status : uint32_t {
  kNaN = 1u << 0,         // a NaN among the entries the op reads
  kNonFinite = 1u << 1,   // an infinite advantage among the selected entries
  kBadEta = 1u << 2,      // eta is not positive and finite
};

inline uint32_t read_status(const uint32_t* status, cudaStream_t stream, const char* op) {
  uint32_t host = 0;
  cudaError_t error = cudaMemcpyAsync(&host, status, sizeof(host), cudaMemcpyDeviceToHost, stream);
  if (error == cudaSuccess) error = cudaStreamSynchronize(stream);
  check(error == cudaSuccess, "minerva: CUDA error in ", op, ": ", cudaGetErrorString(error));
  return host;
}

}  // namespace minerva::cuda
