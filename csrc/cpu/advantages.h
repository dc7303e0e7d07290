// The GAE recursion on raw [T, N] row-major buffers. Shared by the dispatcher
// op (cpu/advantages.cpp) and RolloutStorage (rollout_storage.cpp), which runs
// it in place on its own buffers.
#pragma once

#include <cstdint>

namespace minerva::cpu {

// Columns per task: a 64-byte cache line of float32, so two threads never
// write the same line.
constexpr int64_t kGaeColumnBlock = 16;

// For columns [col_begin, col_end) and every t, walking backwards in time:
//   delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
//   A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},  A_T = 0
//   R_t     = A_t + values_t
// The inner loop runs over contiguous columns so it vectorises.
template <typename scalar_t>
void gae_columns(const scalar_t* rewards, const scalar_t* values, const scalar_t* next_values,
                 const bool* terminated, const bool* done, scalar_t* advantages,
                 scalar_t* returns, int64_t T, int64_t N, int64_t col_begin, int64_t col_end,
                 scalar_t gamma, scalar_t lam) {
  const scalar_t gamma_lam = gamma * lam;
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t row = t * N;
    const bool last = t == T - 1;
    for (int64_t n = col_begin; n < col_end; ++n) {
      const int64_t i = row + n;
      const scalar_t not_terminated = terminated[i] ? scalar_t(0) : scalar_t(1);
      const scalar_t not_done = done[i] ? scalar_t(0) : scalar_t(1);
      const scalar_t next_advantage = last ? scalar_t(0) : advantages[i + N];
      const scalar_t delta = rewards[i] + gamma * not_terminated * next_values[i] - values[i];
      const scalar_t advantage = delta + gamma_lam * not_done * next_advantage;
      advantages[i] = advantage;
      returns[i] = advantage + values[i];
    }
  }
}

}  // namespace minerva::cpu
