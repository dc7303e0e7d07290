// minerva::gae on the CPU: one kernel for the gae / returns (lam = 1) /
// dae (lam = 0) estimators. Columns (environments) are independent, so wide
// batches are split across threads in cache-line-sized column blocks.
#include "cpu/advantages.h"

#include <algorithm>

#include "ops.h"

namespace minerva {

std::tuple<Tensor, Tensor> gae_cpu(Tensor rewards, Tensor values, Tensor next_values,
                                   Tensor terminated, Tensor done, double gamma, double lam) {
  check_gae_args(rewards, values, next_values, terminated, done, gamma, lam);
  rewards = make_contiguous(rewards);
  values = make_contiguous(values);
  next_values = make_contiguous(next_values);
  terminated = make_contiguous(terminated);
  done = make_contiguous(done);
  Tensor advantages = torch::stable::empty_like(rewards);
  Tensor returns = torch::stable::empty_like(rewards);

  const int64_t T = rewards.size(0);
  const int64_t N = rewards.size(1);
  if (T == 0 || N == 0) return {advantages, returns};

  const int64_t blocks = (N + cpu::kGaeColumnBlock - 1) / cpu::kGaeColumnBlock;
  // Starting a thread costs a few microseconds: only split when each block
  // chunk carries ~32k elements of work.
  const int64_t grain_blocks = std::max<int64_t>(1, 32768 / (T * cpu::kGaeColumnBlock));

  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const scalar_t* r = rewards.const_data_ptr<scalar_t>();
    const scalar_t* v = values.const_data_ptr<scalar_t>();
    const scalar_t* nv = next_values.const_data_ptr<scalar_t>();
    const bool* term = terminated.const_data_ptr<bool>();
    const bool* dn = done.const_data_ptr<bool>();
    scalar_t* adv = advantages.mutable_data_ptr<scalar_t>();
    scalar_t* ret = returns.mutable_data_ptr<scalar_t>();
    auto columns = [&](int64_t begin, int64_t end) {
      cpu::gae_columns<scalar_t>(r, v, nv, term, dn, adv, ret, T, N,
                                 begin * cpu::kGaeColumnBlock,
                                 std::min(N, end * cpu::kGaeColumnBlock),
                                 static_cast<scalar_t>(gamma), static_cast<scalar_t>(lam));
    };
    if (blocks <= grain_blocks) {
      columns(0, blocks);  // one chunk: skip the thread pool's bookkeeping
    } else {
      torch::stable::parallel_for(0, blocks, grain_blocks, columns);
    }
  };
  dispatch_floating(rewards.scalar_type(), run);
  return {advantages, returns};
}

}  // namespace minerva
