// minerva::topk_mask and minerva::vmpo_weights on the CPU: the E-step of V-MPO.
//   topk_mask:    selected = valid & (a >= k-th largest valid a), k = max(1, floor(fraction * n))
//   vmpo_weights: w_i = exp(a_i / eta) / sum_{j in S} exp(a_j / eta) on S, 0 elsewhere;
//                 log_mean_exp = log(mean_{j in S} exp(a_j / eta)), max subtracted.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "ops.h"

namespace minerva {
namespace {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 16;

// Splits [0, size) into a fixed number of chunks (so reductions are
// deterministic whatever the thread schedule) and runs fn(chunk, begin, end).
template <typename Fn>
int64_t for_each_chunk(int64_t size, const Fn& fn) {
  const int64_t chunks = std::clamp<int64_t>(
      size / kParallelGrain, 1, static_cast<int64_t>(torch::stable::get_num_threads()));
  const int64_t chunk_size = (size + chunks - 1) / chunks;
  torch::stable::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      fn(c, c * chunk_size, std::min(size, (c + 1) * chunk_size));
    }
  });
  return chunks;
}

template <typename scalar_t>
void topk_mask_kernel(const scalar_t* advantages, const bool* valid, bool* selected, int64_t size,
                      double fraction) {
  // Gather the valid advantages chunk by chunk, then concatenate.
  std::vector<std::vector<scalar_t>> parts(
      std::max<uint32_t>(1, torch::stable::get_num_threads()));
  std::vector<char> has_nan(parts.size(), 0);
  const int64_t chunks = for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    auto& part = parts[c];
    part.reserve(end - begin);
    for (int64_t i = begin; i < end; ++i) {
      if (valid[i]) part.push_back(advantages[i]);
    }
    for (scalar_t a : part) has_nan[c] |= std::isnan(a);
  });
  std::vector<scalar_t> pool = std::move(parts[0]);
  for (int64_t c = 1; c < chunks; ++c) pool.insert(pool.end(), parts[c].begin(), parts[c].end());
  for (int64_t c = 0; c < chunks; ++c) {
    check(!has_nan[c], "minerva.topk_mask: advantages contain NaN at valid positions");
  }

  const int64_t n = static_cast<int64_t>(pool.size());
  if (n == 0) {
    std::fill(selected, selected + size, false);
    return;
  }
  const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::floor(fraction * n)));
  std::nth_element(pool.begin(), pool.begin() + (k - 1), pool.end(), std::greater<scalar_t>());
  const scalar_t kth = pool[k - 1];
  for_each_chunk(size, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) selected[i] = valid[i] && advantages[i] >= kth;
  });
}

template <typename scalar_t>
void vmpo_weights_kernel(const scalar_t* advantages, const bool* selected, scalar_t eta,
                         scalar_t* weights, scalar_t* log_mean_exp, int64_t size) {
  const int64_t max_chunks = std::max<uint32_t>(1, torch::stable::get_num_threads());
  std::vector<scalar_t> chunk_max(max_chunks, -std::numeric_limits<scalar_t>::infinity());
  std::vector<int64_t> chunk_count(max_chunks, 0);
  std::vector<char> chunk_nan(max_chunks, 0);
  const int64_t chunks = for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    scalar_t m = -std::numeric_limits<scalar_t>::infinity();
    int64_t count = 0;
    bool nan = false;
    for (int64_t i = begin; i < end; ++i) {
      if (selected[i]) {
        nan |= std::isnan(advantages[i]);
        m = std::max(m, advantages[i]);
        ++count;
      }
    }
    chunk_max[c] = m;
    chunk_count[c] = count;
    chunk_nan[c] = nan;
  });
  scalar_t max_advantage = -std::numeric_limits<scalar_t>::infinity();
  int64_t count = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    check(!chunk_nan[c], "minerva.vmpo_weights: advantages contain NaN at selected positions");
    max_advantage = std::max(max_advantage, chunk_max[c]);
    count += chunk_count[c];
  }
  if (count == 0) {
    std::fill(weights, weights + size, scalar_t(0));
    *log_mean_exp = scalar_t(0);
    return;
  }

  // Sums accumulate in double so float32 weights stay normalised at B = 1M.
  std::vector<double> chunk_sum(max_chunks, 0.0);
  const scalar_t inv_eta = scalar_t(1) / eta;
  for_each_chunk(size, [&](int64_t c, int64_t begin, int64_t end) {
    double sum = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t w =
          selected[i] ? std::exp((advantages[i] - max_advantage) * inv_eta) : scalar_t(0);
      weights[i] = w;
      sum += w;
    }
    chunk_sum[c] = sum;
  });
  double sum = 0.0;
  for (int64_t c = 0; c < chunks; ++c) sum += chunk_sum[c];
  const scalar_t inv_sum = static_cast<scalar_t>(1.0 / sum);
  for_each_chunk(size, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) weights[i] *= inv_sum;
  });
  *log_mean_exp = static_cast<scalar_t>(static_cast<double>(max_advantage) / eta +
                                        std::log(sum / static_cast<double>(count)));
}

}  // namespace

Tensor topk_mask_cpu(Tensor advantages, Tensor valid, double fraction) {
  check_topk_args(advantages, valid, fraction);
  advantages = torch::stable::contiguous(advantages);
  valid = torch::stable::contiguous(valid);
  Tensor selected = torch::stable::empty_like(valid);
  const int64_t size = advantages.numel();
  if (advantages.scalar_type() == ScalarType::Double) {
    topk_mask_kernel(advantages.const_data_ptr<double>(), valid.const_data_ptr<bool>(),
                     selected.mutable_data_ptr<bool>(), size, fraction);
  } else {
    topk_mask_kernel(advantages.const_data_ptr<float>(), valid.const_data_ptr<bool>(),
                     selected.mutable_data_ptr<bool>(), size, fraction);
  }
  return selected;
}

std::tuple<Tensor, Tensor> vmpo_weights_cpu(Tensor advantages, Tensor selected, Tensor eta) {
  check_weights_args(advantages, selected, eta);
  advantages = torch::stable::contiguous(advantages);
  selected = torch::stable::contiguous(selected);
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
  if (advantages.scalar_type() == ScalarType::Double) {
    run(double{});
  } else {
    run(float{});
  }
  return {weights, log_mean_exp};
}

}  // namespace minerva
