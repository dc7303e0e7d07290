// The GAE recursion on raw [T, N] row-major buffers. Shared by the dispatcher
// op (cpu/advantages.cpp) and RolloutStorage (rollout_storage.cpp), which runs
// it in place on its own buffers.
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace minerva::cpu {

// Columns per task: a 64-byte cache line of float32, so two threads never
// write the same line.
constexpr int64_t kGaeColumnBlock = 16;

// For columns [col_begin, col_end) and every t, walking backwards in time:
//   delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
//   A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},  A_T = 0
//   R_t     = A_t + values_t
// The inner loop runs over contiguous columns and is branch-free (masks are read as 0/1
// bytes), so it vectorises; restrict promises the outputs alias no input.
template <typename scalar_t>
MINERVA_SIMD_CLONES void gae_columns(const scalar_t* __restrict__ rewards, const scalar_t* __restrict__ values,
                 const scalar_t* __restrict__ next_values, const bool* terminated_flags,
                 const bool* done_flags, scalar_t* __restrict__ advantages,
                 scalar_t* __restrict__ returns, int64_t T, int64_t N, int64_t col_begin,
                 int64_t col_end, scalar_t gamma, scalar_t lam) {
  const auto* __restrict__ terminated = reinterpret_cast<const uint8_t*>(terminated_flags);
  const auto* __restrict__ done = reinterpret_cast<const uint8_t*>(done_flags);
  const scalar_t gamma_lam = gamma * lam;
  const int64_t last = (T - 1) * N;
  for (int64_t i = last + col_begin; i < last + col_end; ++i) {
    const scalar_t advantage =
        rewards[i] + gamma * (scalar_t(1) - terminated[i]) * next_values[i] - values[i];
    advantages[i] = advantage;
    returns[i] = advantage + values[i];
  }
  for (int64_t row = last - N; row >= 0; row -= N) {
    for (int64_t i = row + col_begin; i < row + col_end; ++i) {
      const scalar_t delta =
          rewards[i] + gamma * (scalar_t(1) - terminated[i]) * next_values[i] - values[i];
      const scalar_t advantage =
          delta + gamma_lam * (scalar_t(1) - done[i]) * advantages[i + N];
      advantages[i] = advantage;
      returns[i] = advantage + values[i];
    }
  }
}

}  // namespace minerva::cpu
