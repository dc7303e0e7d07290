// minerva::topk_mask and minerva::vmpo_weights on the CPU: the E-step of V-MPO.
//   topk_mask:    selected = valid & (a >= k-th largest valid a), k = max(1, floor(fraction * n))
//   vmpo_weights: w_i = exp(a_i / eta) / sum_{j in S} exp(a_j / eta) on S, 0 elsewhere;
//                 log_mean_exp = log(mean_{j in S} exp(a_j / eta)), max subtracted.
// Large inputs are split into one chunk per thread; every loop is branch-free so it
// vectorises (reductions through `omp simd`, which needs only -fopenmp-simd, no runtime).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/simd.h"
#include "ops.h"

namespace minerva {
namespace {

// Below this many elements, copying the valid ones out and selecting in place beats a
// histogram.
constexpr int64_t kSelectionLimit = 4096;

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 16;

int64_t max_chunks() { return std::max<int64_t>(1, torch::stable::get_num_threads()); }

// Splits [0, size) into a fixed number of chunks (so reductions are deterministic whatever
// the thread schedule) and runs fn(chunk, begin, end); returns the number of chunks.
template <typename Fn>
int64_t for_each_chunk(int64_t size, const Fn& fn) {
  const int64_t chunks = std::clamp<int64_t>(size / kParallelGrain, 1, max_chunks());
  const int64_t chunk_size = (size + chunks - 1) / chunks;
  auto run = [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      fn(c, c * chunk_size, std::min(size, (c + 1) * chunk_size));
    }
  };
  if (chunks == 1) {
    run(0, 1);
  } else {
    torch::stable::parallel_for(0, chunks, 1, run);
  }
  return chunks;
}

// ---- top-k ----------------------------------------------------------------------------------

// Order-preserving unsigned keys: a > b (as floats) implies key(a) >= key(b).
template <typename scalar_t>
using key_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;

template <typename scalar_t>
inline key_t<scalar_t> order_key(scalar_t x) {
  using K = key_t<scalar_t>;
  const K bits = __builtin_bit_cast(K, x);
  constexpr int kSignShift = sizeof(K) * 8 - 1;
  const K flip = (bits >> kSignShift) ? ~K(0) : (K(1) << kSignShift);
  return bits ^ flip;
}

// The histogram bin of x: the top `bits` bits of its key.
template <typename scalar_t>
inline uint32_t histogram_bin(scalar_t x, int bits) {
  return static_cast<uint32_t>(order_key(x) >> (sizeof(key_t<scalar_t>) * 8 - bits));
}

// The k-th largest of `pool` (1-based k), reordering it.
template <typename scalar_t>
scalar_t kth_largest(std::vector<scalar_t>& pool, int64_t k) {
  std::nth_element(pool.begin(), pool.begin() + (k - 1), pool.end(), std::greater<scalar_t>());
  return pool[k - 1];
}

template <typename scalar_t>
void nan_check(bool any_nan) {
  check(!any_nan, "minerva.topk_mask: advantages contain NaN at valid positions");
}

// Small inputs: copy the valid advantages out and select in place.
template <typename scalar_t>
bool kth_by_selection(const scalar_t* a, const bool* valid, int64_t size, double fraction,
                      scalar_t* kth) {
  std::vector<scalar_t> pool;
  pool.reserve(size);
  bool any_nan = false;
  for (int64_t i = 0; i < size; ++i) {
    if (valid[i]) {
      pool.push_back(a[i]);
      any_nan |= std::isnan(a[i]);
    }
  }
  nan_check<scalar_t>(any_nan);
  if (pool.empty()) return false;
  const int64_t n = static_cast<int64_t>(pool.size());
  *kth = kth_largest(pool, std::max<int64_t>(1, static_cast<int64_t>(std::floor(fraction * n))));
  return true;
}

// Histogram of the valid keys' top `bits` bits; returns whether a valid entry is NaN.
template <typename scalar_t>
MINERVA_NOINLINE bool histogram_pass(const scalar_t* __restrict__ a,
                                     const uint8_t* __restrict__ valid, int bits,
                                     uint32_t* __restrict__ histogram, int64_t begin,
                                     int64_t end) {
  uint8_t nan = 0;
  for (int64_t i = begin; i < end; ++i) {
    histogram[histogram_bin(a[i], bits)] += valid[i];  // branch-free: valid is 0 or 1
    nan |= valid[i] & (a[i] != a[i]);
  }
  return nan != 0;
}

// Larger inputs: a histogram of the keys' top bits finds the bin holding the k-th largest;
// only that bin's values are then selected exactly. 11 bits (an 8 KiB table) up to 256k
// elements, 16 bits beyond, so the bin stays small.
template <typename scalar_t>
bool kth_by_histogram(const scalar_t* a, const bool* valid_flags, int64_t size,
                      double fraction, scalar_t* kth) {
  const auto* valid = reinterpret_cast<const uint8_t*>(valid_flags);
  const int bits = size <= (int64_t(1) << 18) ? 11 : 16;
  const size_t bins = size_t(1) << bits;
  const int64_t slots = max_chunks();
  std::vector<std::vector<uint32_t>> histograms(slots);
  std::vector<char> any_nan(slots, 0);
  const int64_t chunks = for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    histograms[c].assign(bins, 0);
    any_nan[c] = histogram_pass(a, valid, bits, histograms[c].data(), begin, end);
  });
  for (int64_t c = 0; c < chunks; ++c) nan_check<scalar_t>(any_nan[c]);
  auto& total = histograms[0];
  for (int64_t c = 1; c < chunks; ++c) {
    for (size_t b = 0; b < bins; ++b) total[b] += histograms[c][b];
  }
  int64_t n = 0;
  for (uint32_t count : total) n += count;
  if (n == 0) return false;
  const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::floor(fraction * n)));
  int64_t above = 0;
  size_t bin = bins - 1;
  while (above + total[bin] < k) above += total[bin--];
  const uint32_t target = static_cast<uint32_t>(bin);

  std::vector<std::vector<scalar_t>> parts(slots);
  for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (valid[i] && histogram_bin(a[i], bits) == target) parts[c].push_back(a[i]);
    }
  });
  std::vector<scalar_t> pool = std::move(parts[0]);
  for (int64_t c = 1; c < chunks; ++c) pool.insert(pool.end(), parts[c].begin(), parts[c].end());
  *kth = kth_largest(pool, k - above);
  return true;
}

template <typename scalar_t>
MINERVA_SIMD_CLONES MINERVA_NOINLINE void select_at_least(const scalar_t* __restrict__ advantages, const uint8_t* __restrict__ valid,
                     uint8_t* __restrict__ selected, scalar_t kth, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) selected[i] = valid[i] & (advantages[i] >= kth);
}

template <typename scalar_t>
void topk_mask_kernel(const scalar_t* advantages, const bool* valid_flags, bool* selected_flags,
                      int64_t size, double fraction) {
  scalar_t kth;
  const bool any = size < kSelectionLimit
                       ? kth_by_selection(advantages, valid_flags, size, fraction, &kth)
                       : kth_by_histogram(advantages, valid_flags, size, fraction, &kth);
  const auto* valid = reinterpret_cast<const uint8_t*>(valid_flags);
  auto* selected = reinterpret_cast<uint8_t*>(selected_flags);
  if (!any) {
    std::fill(selected, selected + size, uint8_t(0));
    return;
  }
  for_each_chunk(size, [&](int64_t, int64_t begin, int64_t end) {
    select_at_least(advantages, valid, selected, kth, begin, end);
  });
}

// ---- weights --------------------------------------------------------------------------------

// exp(x) for x <= 0, written so loops over it vectorise (std::exp does not without
// -ffast-math): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a polynomial for e^r,
// and 2^n added to the exponent bits. The magic constant rounds to nearest and leaves n in
// the low mantissa bits. Relative error: ~2 ulp (float), ~1e-15 (double).
inline float exp_nonpositive(float x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  const float clamped = std::max(x, -87.0f);
  const float shifted = clamped * 1.44269504088896341f + kMagic;
  const float n = shifted - kMagic;
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t n_bits =
      __builtin_bit_cast(uint32_t, shifted) - __builtin_bit_cast(uint32_t, kMagic);
  const float result = __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, p) + (n_bits << 23));
  return x < -87.0f ? 0.0f : result;
}

inline double exp_nonpositive(double x) {
  constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  const double clamped = std::max(x, -708.0);
  const double shifted = clamped * 1.4426950408889634074 + kMagic;
  const double n = shifted - kMagic;
  const double r = (clamped - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  double p = 1.0 / 479001600.0;  // Taylor series to r^12 / 12!: error < 1e-15 on |r| <= 0.35
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const uint64_t n_bits =
      __builtin_bit_cast(uint64_t, shifted) - __builtin_bit_cast(uint64_t, kMagic);
  const double result = __builtin_bit_cast(double, __builtin_bit_cast(uint64_t, p) + (n_bits << 52));
  return x < -708.0 ? 0.0 : result;
}

// The three passes of vmpo_weights over one chunk (see cpu/simd.h for the attributes).
struct MaxCount {
  double max;
  int64_t count;
  bool nan;
};

template <typename scalar_t>
MINERVA_SIMD_CLONES MINERVA_NOINLINE MaxCount max_and_count(
    const scalar_t* __restrict__ advantages, const uint8_t* __restrict__ selected,
    int64_t begin, int64_t end) {
  constexpr scalar_t kLowest = -std::numeric_limits<scalar_t>::infinity();
  scalar_t m = kLowest;
  int64_t count = 0;
  bool nan = false;
  for (int64_t block = begin; block < end; block += 1024) {
    const int64_t stop = std::min(end, block + 1024);
    int32_t block_count = 0;  // narrow lanes vectorise better than int64 ones
    uint8_t block_nan = 0;
#pragma omp simd reduction(max : m) reduction(+ : block_count) reduction(| : block_nan)
    for (int64_t i = block; i < stop; ++i) {
      const scalar_t a = advantages[i];
      m = std::max(m, selected[i] ? a : kLowest);
      block_count += selected[i];
      block_nan |= selected[i] & (a != a);
    }
    count += block_count;
    nan |= block_nan != 0;
  }
  return {static_cast<double>(m), count, nan};
}

// weights[i] = exp((a_i - shift) / eta) on S, 0 elsewhere; returns their sum. Blocks of
// 1024 sum in scalar_t (vectorised) and the blocks in double, so float32 weights stay
// normalised at B = 1M.
template <typename scalar_t>
MINERVA_SIMD_CLONES MINERVA_NOINLINE double exp_weights(const scalar_t* __restrict__ advantages, const uint8_t* __restrict__ selected,
                   scalar_t* __restrict__ weights, scalar_t shift, scalar_t inv_eta,
                   int64_t begin, int64_t end) {
  double sum = 0.0;
  for (int64_t block = begin; block < end; block += 1024) {
    const int64_t stop = std::min(end, block + 1024);
    scalar_t block_sum = 0;
#pragma omp simd reduction(+ : block_sum)
    for (int64_t i = block; i < stop; ++i) {
      // (the maximum's own difference stays 0: times an infinite 1 / eta, from a denormal
      // eta, it would be NaN; every other weight then goes to 0, the limit)
      const scalar_t difference = advantages[i] - shift;
      const scalar_t e = exp_nonpositive(difference == scalar_t(0) ? difference
                                                                   : difference * inv_eta);
      const scalar_t w = selected[i] ? e : scalar_t(0);
      weights[i] = w;
      block_sum += w;
    }
    sum += block_sum;
  }
  return sum;
}

template <typename scalar_t>
MINERVA_SIMD_CLONES MINERVA_NOINLINE void scale(scalar_t* __restrict__ weights, scalar_t factor, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) weights[i] *= factor;
}

template <typename scalar_t>
void vmpo_weights_kernel(const scalar_t* advantages, const bool* selected_flags, scalar_t eta,
                         scalar_t* weights, scalar_t* log_mean_exp, int64_t size) {
  const auto* selected = reinterpret_cast<const uint8_t*>(selected_flags);
  std::vector<MaxCount> partial(max_chunks());
  const int64_t chunks = for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    partial[c] = max_and_count(advantages, selected, begin, end);
  });
  double max_advantage = -std::numeric_limits<double>::infinity();
  int64_t count = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    check(!partial[c].nan, "minerva.vmpo_weights: advantages contain NaN at selected positions");
    max_advantage = std::max(max_advantage, partial[c].max);
    count += partial[c].count;
  }
  if (count == 0) {
    std::fill(weights, weights + size, scalar_t(0));
    *log_mean_exp = scalar_t(0);
    return;
  }
  check(std::isfinite(max_advantage),
        "minerva.vmpo_weights: advantages must be finite at selected positions");

  std::vector<double> chunk_sum(max_chunks(), 0.0);
  const scalar_t inv_eta = scalar_t(1) / eta;
  for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    chunk_sum[c] = exp_weights(advantages, selected, weights,
                               static_cast<scalar_t>(max_advantage), inv_eta, begin, end);
  });
  double sum = 0.0;
  for (int64_t c = 0; c < chunks; ++c) sum += chunk_sum[c];
  const scalar_t inv_sum = static_cast<scalar_t>(1.0 / sum);
  for_each_chunk(size, [&](int64_t, int64_t begin, int64_t end) {
    scale(weights, inv_sum, begin, end);
  });
  *log_mean_exp = static_cast<scalar_t>(max_advantage / static_cast<double>(eta) +
                                        std::log(sum / static_cast<double>(count)));
}

}  // namespace

Tensor topk_mask_cpu(Tensor advantages, Tensor valid, double fraction) {
  check_topk_args(advantages, valid, fraction);
  advantages = make_contiguous(advantages);
  valid = make_contiguous(valid);
  Tensor selected = torch::stable::empty_like(valid);
  const int64_t size = advantages.numel();
  dispatch_floating(advantages.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    topk_mask_kernel(advantages.const_data_ptr<scalar_t>(), valid.const_data_ptr<bool>(),
                     selected.mutable_data_ptr<bool>(), size, fraction);
  });
  return selected;
}

std::tuple<Tensor, Tensor> vmpo_weights_cpu(Tensor advantages, Tensor selected, Tensor eta) {
  check_weights_args(advantages, selected, eta);
  advantages = make_contiguous(advantages);
  selected = make_contiguous(selected);
  Tensor weights = torch::stable::empty_like(advantages);
  Tensor log_mean_exp = torch::stable::empty_like(eta);
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const scalar_t eta_value = *eta.const_data_ptr<scalar_t>();
    check(eta_value > 0 && std::isfinite(eta_value),
          "minerva.vmpo_weights: eta must be positive and finite, got ", eta_value);
    vmpo_weights_kernel(advantages.const_data_ptr<scalar_t>(), selected.const_data_ptr<bool>(),
                        eta_value, weights.mutable_data_ptr<scalar_t>(),
                        log_mean_exp.mutable_data_ptr<scalar_t>(), advantages.numel());
  };
  dispatch_floating(advantages.scalar_type(), run);
  return {weights, log_mean_exp};
}

}  // namespace minerva
