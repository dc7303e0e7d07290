// minerva::topk_mask and minerva::vmpo_weights on the GPU: the E-step of V-MPO.
//   topk_mask:    selected = valid & (a >= k-th largest valid a), k = max(1, floor(fraction * n))
//   vmpo_weights: w_i = exp(a_i / eta) / sum_{j in S} exp(a_j / eta) on S, 0 elsewhere;
//                 log_mean_exp = log(mean_{j in S} exp(a_j / eta)), max subtracted.
//
// Top-k is an exact radix select on order-preserving integer keys, kept on the device (k
// depends on the count of valid entries, which never goes to the host):
//   1. a histogram of the valid keys' top kTopBits bits, the valid count and a NaN flag;
//   2. one block finds k and the bin holding the k-th largest key;
//   3. the keys in that bin are appended to a candidate list (a small fraction of B unless
//      the values are heavily tied);
//   4. 8-bit digits of the candidates narrow the bin down to the exact k-th key;
//   5. selected = valid & (a >= that value).
// The weights take two passes: an online (max, sum of exp) per block, combined in a fixed
// order by one block (deterministic), then the normalised weights.
// Each op reads its status word once at the end, which is the only host synchronisation.
#include <cooperative_groups.h>

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "cuda/common.cuh"

namespace minerva {
namespace {

constexpr int kTopBits = 12;
constexpr int kTopBins = 1 << kTopBits;
constexpr int kDigitBits = 8;
constexpr int kDigitBins = 1 << kDigitBits;
constexpr int kMaxDigits = (64 - kTopBits + kDigitBits - 1) / kDigitBits;

template <typename scalar_t>
using key_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, unsigned long long>;

template <typename scalar_t>
constexpr int kKeyBits = int(sizeof(scalar_t)) * 8;

// Order-preserving keys: a > b (as floats) implies key(a) >= key(b).
template <typename scalar_t>
__device__ __forceinline__ key_t<scalar_t> order_key(scalar_t x) {
  using K = key_t<scalar_t>;
  K bits;
  memcpy(&bits, &x, sizeof(bits));
  constexpr K sign = K(1) << (kKeyBits<scalar_t> - 1);
  return bits ^ ((bits & sign) ? ~K(0) : sign);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t key_value(key_t<scalar_t> key) {
  using K = key_t<scalar_t>;
  constexpr K sign = K(1) << (kKeyBits<scalar_t> - 1);
  const K bits = key ^ ((key & sign) ? sign : ~K(0));
  scalar_t x;
  memcpy(&x, &bits, sizeof(x));
  return x;
}

// Device-side state of one top-k call; zeroed before the first kernel.
struct SelectState {
  uint32_t status;
  uint32_t count;            // valid entries, n
  uint32_t candidates;       // keys appended to the candidate list
  uint32_t rank;             // rank (1-based) of the k-th largest among keys matching prefix
  unsigned long long prefix; // the k-th largest key's bits found so far
};

// Finds, in one block, the bin holding the `rank`-th largest of a histogram (bins counted
// from the top): sets *bin and lowers *rank by the entries in higher bins.
__device__ void find_bin(const uint32_t* histogram, int bins, uint32_t* rank, int* bin) {
  __shared__ uint32_t totals[cuda::kThreads];
  const int per_thread = (bins + cuda::kThreads - 1) / cuda::kThreads;
  // Thread t sums bins [bins - (t + 1) * per_thread, bins - t * per_thread): from the top.
  const int high = bins - int(threadIdx.x) * per_thread;
  uint32_t own = 0;
  for (int b = high - 1; b >= high - per_thread && b >= 0; --b) own += histogram[b];
  totals[threadIdx.x] = own;
  __syncthreads();
  for (int offset = 1; offset < cuda::kThreads; offset <<= 1) {  // inclusive scan from the top
    const uint32_t add = threadIdx.x >= offset ? totals[threadIdx.x - offset] : 0;
    __syncthreads();
    totals[threadIdx.x] += add;
    __syncthreads();
  }
  const uint32_t above = totals[threadIdx.x] - own;
  const uint32_t wanted = *rank;
  __syncthreads();
  if (above < wanted && wanted <= above + own) {  // exactly one thread
    uint32_t seen = above;
    for (int b = high - 1; b >= 0; --b) {
      if (seen + histogram[b] >= wanted) {
        *bin = b;
        *rank = wanted - seen;
        break;
      }
      seen += histogram[b];
    }
  }
  __syncthreads();
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    top_histogram(const scalar_t* __restrict__ advantages, const bool* __restrict__ valid,
                  int64_t size, uint32_t* __restrict__ histogram, SelectState* state) {
  __shared__ uint32_t local[kTopBins];
  for (int b = threadIdx.x; b < kTopBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  uint32_t count = 0;
  bool nan = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (!valid[i]) continue;
    const scalar_t a = advantages[i];
    nan |= isnan(a);
    ++count;
    atomicAdd(&local[order_key(a) >> (kKeyBits<scalar_t> - kTopBits)], 1u);
  }
  if (nan) atomicOr(&state->status, uint32_t(cuda::kNaN));
  // Warp-reduce the counts so only one atomic per warp reaches global memory.
  for (int offset = 16; offset > 0; offset >>= 1) count += __shfl_down_sync(~0u, count, offset);
  if ((threadIdx.x & 31) == 0 && count) atomicAdd(&state->count, count);
  __syncthreads();
  for (int b = threadIdx.x; b < kTopBins; b += blockDim.x) {
    if (local[b]) atomicAdd(&histogram[b], local[b]);
  }
}

__global__ void __launch_bounds__(cuda::kThreads)
    find_top_bin(const uint32_t* __restrict__ histogram, double fraction, SelectState* state) {
  __shared__ uint32_t rank;
  __shared__ int bin;
  const uint32_t n = state->count;
  if (n == 0) return;  // nothing valid: the mark pass selects nothing
  if (threadIdx.x == 0) {
    const double k = floor(fraction * double(n));
    rank = k < 1.0 ? 1u : uint32_t(k);
    bin = 0;
  }
  __syncthreads();
  find_bin(histogram, kTopBins, &rank, &bin);
  if (threadIdx.x == 0) {
    state->rank = rank;
    state->prefix = static_cast<unsigned long long>(bin);  // shifted into place at the end
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    collect_candidates(const scalar_t* __restrict__ advantages, const bool* __restrict__ valid,
                       int64_t size, key_t<scalar_t>* __restrict__ candidates,
                       SelectState* state) {
  if (state->count == 0) return;
  const auto target = static_cast<uint32_t>(state->prefix);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (!valid[i]) continue;
    const key_t<scalar_t> key = order_key(advantages[i]);
    if (uint32_t(key >> (kKeyBits<scalar_t> - kTopBits)) != target) continue;
    // One atomic per warp: with heavy ties every element lands here.
    const auto group = cooperative_groups::coalesced_threads();
    uint32_t base = 0;
    if (group.thread_rank() == 0) base = atomicAdd(&state->candidates, group.size());
    base = group.shfl(base, 0);
    candidates[base + group.thread_rank()] = key;
  }
}

// Digit `digit` (0 = the first below the top bits) of the candidates that match the prefix.
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    digit_histogram(const key_t<scalar_t>* __restrict__ candidates, int digit,
                    uint32_t* __restrict__ histogram, SelectState* state) {
  __shared__ uint32_t local[kDigitBins];
  for (int b = threadIdx.x; b < kDigitBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const uint32_t total = state->count == 0 ? 0 : state->candidates;
  const int known = kTopBits + digit * kDigitBits;  // bits of the prefix found so far
  const int bits = min(kDigitBits, kKeyBits<scalar_t> - known);
  const int shift = kKeyBits<scalar_t> - known - bits;
  const unsigned long long prefix = state->prefix;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += gridDim.x * blockDim.x) {
    const key_t<scalar_t> key = candidates[i];
    if ((static_cast<unsigned long long>(key) >> (shift + bits)) != prefix) continue;
    atomicAdd(&local[(key >> shift) & ((1u << bits) - 1)], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kDigitBins; b += blockDim.x) {
    if (local[b]) atomicAdd(&histogram[b], local[b]);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    find_digit(const uint32_t* __restrict__ histogram, int digit, SelectState* state) {
  __shared__ uint32_t rank;
  __shared__ int bin;
  if (state->count == 0) return;
  const int known = kTopBits + digit * kDigitBits;
  const int bits = min(kDigitBits, kKeyBits<scalar_t> - known);
  if (threadIdx.x == 0) {
    rank = state->rank;
    bin = 0;
  }
  __syncthreads();
  find_bin(histogram, 1 << bits, &rank, &bin);
  if (threadIdx.x == 0) {
    state->rank = rank;
    state->prefix = (state->prefix << bits) | static_cast<unsigned long long>(bin);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    mark_selected(const scalar_t* __restrict__ advantages, const bool* __restrict__ valid,
                  int64_t size, bool* __restrict__ selected, const SelectState* state) {
  const bool any = state->count != 0;
  // After the last digit the prefix is the whole k-th largest key.
  const scalar_t kth = key_value<scalar_t>(static_cast<key_t<scalar_t>>(state->prefix));
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    selected[i] = any && valid[i] && advantages[i] >= kth;
  }
}

// ---- weights --------------------------------------------------------------------------------

// An online softmax accumulator: the max of a, and the sum of exp((a - max) / eta). Keeping
// the max of a itself (not of a / eta) matches the CPU kernel, which subtracts in a's scale.
struct SoftmaxPart {
  double max;
  double sum;
  unsigned long long count;
};

// (a - max) / eta as (a - max) * inv_eta, but 0 where a is the maximum: an infinite inv_eta
// (a denormal eta) would make that NaN, where the limit puts all weight on the maximum.
template <typename T>
__device__ __forceinline__ T scaled(T difference, T inv_eta) {
  return difference == T(0) ? difference : difference * inv_eta;
}

__device__ __forceinline__ SoftmaxPart merge(SoftmaxPart x, SoftmaxPart y, double inv_eta) {
  if (y.sum == 0) return {fmax(x.max, y.max), x.sum, x.count + y.count};
  if (x.sum == 0) return {fmax(x.max, y.max), y.sum, x.count + y.count};
  const double top = fmax(x.max, y.max);
  return {top,
          x.sum * exp(scaled(x.max - top, inv_eta)) + y.sum * exp(scaled(y.max - top, inv_eta)),
          x.count + y.count};
}

// Block-wide merge in a fixed order (deterministic); the result is valid in every thread.
__device__ SoftmaxPart block_merge(SoftmaxPart part, double inv_eta) {
  __shared__ SoftmaxPart parts[cuda::kThreads];
  parts[threadIdx.x] = part;
  __syncthreads();
  for (int stride = cuda::kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      parts[threadIdx.x] = merge(parts[threadIdx.x], parts[threadIdx.x + stride], inv_eta);
    }
    __syncthreads();
  }
  return parts[0];
}

template <typename scalar_t>
__device__ __forceinline__ bool eta_ok(scalar_t eta) {
  return eta > 0 && isfinite(eta);
}

template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    softmax_parts(const scalar_t* __restrict__ advantages, const bool* __restrict__ selected,
                  const scalar_t* __restrict__ eta_ptr, int64_t size,
                  SoftmaxPart* __restrict__ parts, uint32_t* status) {
  const scalar_t eta = *eta_ptr;
  if (!eta_ok(eta)) {
    if (blockIdx.x == 0 && threadIdx.x == 0) atomicOr(status, uint32_t(cuda::kBadEta));
    return;
  }
  const double inv_eta = 1.0 / double(eta);
  SoftmaxPart part{-INFINITY, 0.0, 0};
  bool nan = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (!selected[i]) continue;
    const double a = advantages[i];
    nan |= isnan(a);
    ++part.count;
    if (a > part.max) {
      part.sum = part.sum * exp(scaled(part.max - a, inv_eta)) + 1.0;
      part.max = a;
    } else if (a > -INFINITY) {
      part.sum += exp(scaled(a - part.max, inv_eta));
    }
  }
  if (nan) atomicOr(status, uint32_t(cuda::kNaN));
  const SoftmaxPart block = block_merge(part, inv_eta);
  if (threadIdx.x == 0) parts[blockIdx.x] = block;
}

// One block: the total over the blocks' parts; total[0] = max, total[1] = sum.
// One block: the total over the blocks' parts; total[0] = max of a, total[1] = the sum.
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    softmax_total(const SoftmaxPart* __restrict__ parts, int count,
                  const scalar_t* __restrict__ eta_ptr, double* total, scalar_t* log_mean_exp,
                  uint32_t* status) {
  if (*status & cuda::kBadEta) return;
  const double inv_eta = 1.0 / double(*eta_ptr);
  SoftmaxPart part{-INFINITY, 0.0, 0};
  for (int i = threadIdx.x; i < count; i += blockDim.x) part = merge(part, parts[i], inv_eta);
  const SoftmaxPart all = block_merge(part, inv_eta);
  if (threadIdx.x != 0) return;
  if (all.count == 0) {
    total[0] = 0;
    total[1] = 0;
    *log_mean_exp = 0;
    return;
  }
  if (!isfinite(all.max)) atomicOr(status, uint32_t(cuda::kNonFinite));
  total[0] = all.max;
  total[1] = all.sum;
  *log_mean_exp =
      static_cast<scalar_t>(all.max / double(*eta_ptr) + log(all.sum / double(all.count)));
}

// w = exp((a - max) / eta) / sum on the selected entries, as the CPU kernel computes it.
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    write_weights(const scalar_t* __restrict__ advantages, const bool* __restrict__ selected,
                  const scalar_t* __restrict__ eta_ptr, int64_t size,
                  const double* __restrict__ total, scalar_t* __restrict__ weights) {
  const scalar_t eta = *eta_ptr;
  const bool ok = eta_ok(eta) && total[1] > 0;
  const scalar_t inv_eta = ok ? scalar_t(1) / eta : scalar_t(0);
  const scalar_t max = static_cast<scalar_t>(total[0]);
  const scalar_t inv_sum = ok ? static_cast<scalar_t>(1.0 / total[1]) : scalar_t(0);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += int64_t(gridDim.x) * blockDim.x) {
    scalar_t w = 0;
    if (ok && selected[i]) w = exp(scaled(advantages[i] - max, inv_eta)) * inv_sum;
    weights[i] = w;
  }
}

}  // namespace

Tensor topk_mask_cuda(Tensor advantages, Tensor valid, double fraction) {
  constexpr const char* op = "topk_mask";
  check_topk_args(advantages, valid, fraction);
  cuda::check_cuda_tensor(op, "advantages", advantages);
  advantages = make_contiguous(advantages);
  valid = make_contiguous(valid);
  torch::stable::accelerator::DeviceGuard guard(advantages.get_device_index());
  Tensor selected = torch::stable::empty_like(valid);
  const int64_t size = advantages.numel();
  if (size == 0) return selected;
  check(size < (int64_t(1) << 31), "minerva.topk_mask: at most 2^31 - 1 advantages, got ", size);
  const cudaStream_t stream = cuda::current_stream(advantages);

  dispatch_floating(advantages.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    using K = key_t<scalar_t>;
    constexpr int digits = (kKeyBits<scalar_t> - kTopBits + kDigitBits - 1) / kDigitBits;
    static_assert(digits <= kMaxDigits);
    // Workspace: state, the top histogram, one histogram per digit, the candidate keys.
    constexpr int64_t state_bytes = 64;
    constexpr int64_t histogram_bytes = int64_t(kTopBins + digits * kDigitBins) * 4;
    const int64_t bytes = state_bytes + histogram_bytes + size * int64_t(sizeof(K));
    Tensor workspace = torch::stable::new_empty(advantages, {bytes}, ScalarType::Byte);
    auto* base = workspace.mutable_data_ptr<uint8_t>();
    auto* state = reinterpret_cast<SelectState*>(base);
    auto* top = reinterpret_cast<uint32_t*>(base + state_bytes);
    uint32_t* digit_histograms = top + kTopBins;
    auto* candidates = reinterpret_cast<K*>(base + state_bytes + histogram_bytes);
    const cudaError_t cleared =
        cudaMemsetAsync(base, 0, state_bytes + histogram_bytes, stream);
    check(cleared == cudaSuccess, "minerva: CUDA error in topk_mask: ",
          cudaGetErrorString(cleared));

    const scalar_t* a = advantages.const_data_ptr<scalar_t>();
    const bool* v = valid.const_data_ptr<bool>();
    const unsigned int grid = cuda::grid_for(advantages, size);
    top_histogram<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(a, v, size, top, state);
    find_top_bin<<<1, cuda::kThreads, 0, stream>>>(top, fraction, state);
    collect_candidates<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(a, v, size, candidates,
                                                                      state);
    for (int digit = 0; digit < digits; ++digit) {
      uint32_t* histogram = digit_histograms + digit * kDigitBins;
      digit_histogram<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(candidates, digit,
                                                                     histogram, state);
      find_digit<scalar_t><<<1, cuda::kThreads, 0, stream>>>(histogram, digit, state);
    }
    mark_selected<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(
        a, v, size, selected.mutable_data_ptr<bool>(), state);
    cuda::check_launch(op);
    const uint32_t status = cuda::read_status(&state->status, stream, op);
    check(!(status & cuda::kNaN), "minerva.topk_mask: advantages contain NaN at valid positions");
  });
  return selected;
}

std::tuple<Tensor, Tensor> vmpo_weights_cuda(Tensor advantages, Tensor selected, Tensor eta) {
  constexpr const char* op = "vmpo_weights";
  check_weights_args(advantages, selected, eta);
  cuda::check_cuda_tensor(op, "advantages", advantages);
  advantages = make_contiguous(advantages);
  selected = make_contiguous(selected);
  torch::stable::accelerator::DeviceGuard guard(advantages.get_device_index());
  Tensor weights = torch::stable::empty_like(advantages);
  Tensor log_mean_exp = torch::stable::empty_like(eta);
  const int64_t size = advantages.numel();
  const cudaStream_t stream = cuda::current_stream(advantages);

  dispatch_floating(advantages.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    const unsigned int grid = cuda::grid_for(advantages, size);
    // Workspace: the status word, the total (max, sum), one part per block.
    const int64_t bytes = 64 + int64_t(grid) * int64_t(sizeof(SoftmaxPart));
    Tensor workspace = torch::stable::new_empty(advantages, {bytes}, ScalarType::Byte);
    auto* base = workspace.mutable_data_ptr<uint8_t>();
    auto* status = reinterpret_cast<uint32_t*>(base);
    auto* total = reinterpret_cast<double*>(base + 16);
    auto* parts = reinterpret_cast<SoftmaxPart*>(base + 64);
    const cudaError_t cleared = cudaMemsetAsync(base, 0, 64, stream);
    check(cleared == cudaSuccess, "minerva: CUDA error in vmpo_weights: ",
          cudaGetErrorString(cleared));

    const scalar_t* a = advantages.const_data_ptr<scalar_t>();
    const bool* s = selected.const_data_ptr<bool>();
    const scalar_t* eta_ptr = eta.const_data_ptr<scalar_t>();
    scalar_t* lme = log_mean_exp.mutable_data_ptr<scalar_t>();
    softmax_parts<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(a, s, eta_ptr, size, parts,
                                                                 status);
    softmax_total<scalar_t><<<1, cuda::kThreads, 0, stream>>>(parts, int(grid), eta_ptr, total,
                                                              lme, status);
    write_weights<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(
        a, s, eta_ptr, size, total, weights.mutable_data_ptr<scalar_t>());
    cuda::check_launch(op);
    const uint32_t status_bits = cuda::read_status(status, stream, op);
    if (status_bits & cuda::kBadEta) {
      scalar_t value = 0;
      const cudaError_t copied =
          cudaMemcpyAsync(&value, eta_ptr, sizeof(value), cudaMemcpyDeviceToHost, stream);
      check(copied == cudaSuccess && cudaStreamSynchronize(stream) == cudaSuccess,
            "minerva: CUDA error in vmpo_weights: ", cudaGetErrorString(cudaGetLastError()));
      fail("minerva.vmpo_weights: eta must be positive and finite, got ", value);
    }
    check(!(status_bits & cuda::kNaN),
          "minerva.vmpo_weights: advantages contain NaN at selected positions");
    check(!(status_bits & cuda::kNonFinite),
          "minerva.vmpo_weights: advantages must be finite at selected positions");
  });
  return {weights, log_mean_exp};
}

}  // namespace minerva
