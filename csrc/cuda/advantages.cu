// minerva::gae on the GPU. The recursion
//   A_t = delta_t + c_t * A_{t+1},  c_t = gamma * lam * (1 - done_t),  A_T = 0
// is a linear recurrence: a run of steps maps the advantage just after it to the one at its
// start by an affine map x -> offset + scale * x, and maps compose. So time is split among
// threads as well as columns: each thread holds kSteps steps of one column in registers,
// the block scans its threads' maps (a parallel scan over time), and every element is read
// and written once. A block covers `columns` columns and walks its time range backwards in
// tiles, carrying A across tiles. When columns alone cannot fill the GPU (few, long
// environments), time is also split across blocks: a first pass composes each block's
// range into one map, a tiny pass turns those into carries, and a second pass writes.
#include "cuda/common.cuh"

namespace minerva {
namespace {

constexpr int kSteps = 8;  // time steps per thread per tile, held in registers

template <typename scalar_t>
struct Affine {  // x -> offset + scale * x
  scalar_t scale;
  scalar_t offset;
};

// The map of `earlier` followed (backwards in time) by `later`: earlier(later(x)).
template <typename scalar_t>
__device__ __forceinline__ Affine<scalar_t> compose(Affine<scalar_t> earlier,
                                                   Affine<scalar_t> later) {
  return {earlier.scale * later.scale, earlier.offset + earlier.scale * later.offset};
}

enum class Pass { kWrite, kCompose };

struct GaeLayout {
  int64_t T, N;
  int64_t chunk_length;  // time steps per blockIdx.y, a multiple of the tile length
};

// blockDim = (columns, kThreads / columns). kCompose writes each block's composed map of its
// time chunk to maps[chunk * N + column]; kWrite starts from carries[chunk * N + column]
// (or 0 without carries) and writes advantages and returns.
template <typename scalar_t, Pass pass>
__global__ void __launch_bounds__(cuda::kThreads)
    gae_tiles(const scalar_t* __restrict__ rewards, const scalar_t* __restrict__ values,
              const scalar_t* __restrict__ next_values, const bool* __restrict__ terminated,
              const bool* __restrict__ done, scalar_t* __restrict__ advantages,
              scalar_t* __restrict__ returns, Affine<scalar_t>* __restrict__ maps,
              const scalar_t* __restrict__ carries, GaeLayout layout, scalar_t gamma,
              scalar_t gamma_lam) {
  extern __shared__ unsigned char shared_bytes[];
  auto* scan = reinterpret_cast<Affine<scalar_t>*>(shared_bytes);  // [segments][columns]

  const int columns = blockDim.x, segments = blockDim.y;
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t N = layout.N;
  const int64_t column = int64_t(blockIdx.x) * columns + x;
  const bool active = column < N;
  const int64_t chunk = blockIdx.y;
  const int64_t chunk_begin = chunk * layout.chunk_length;
  const int64_t chunk_end = min(layout.T, chunk_begin + layout.chunk_length);
  const int64_t tile_length = int64_t(segments) * kSteps;

  scalar_t carry = 0;  // A just after the current tile
  if (pass == Pass::kWrite && carries != nullptr && active) carry = carries[chunk * N + column];
  Affine<scalar_t> chunk_map{1, 0};

  for (int64_t tile_end = chunk_end; tile_end > chunk_begin; tile_end -= tile_length) {
    const int64_t tile_begin = max(chunk_begin, tile_end - tile_length);
    const int64_t first = tile_begin + int64_t(y) * kSteps;

    // This thread's steps; steps past the tile are the identity (delta 0, c 1).
    scalar_t delta[kSteps], coef[kSteps], value[kSteps];
    Affine<scalar_t> own{1, 0};
#pragma unroll
    for (int i = kSteps - 1; i >= 0; --i) {
      const int64_t t = first + i;
      delta[i] = 0;
      coef[i] = 1;
      value[i] = 0;
      if (active && t < tile_end) {
        const int64_t at = t * N + column;
        value[i] = values[at];
        delta[i] = rewards[at] + gamma * scalar_t(!terminated[at]) * next_values[at] - value[i];
        coef[i] = gamma_lam * scalar_t(!done[at]);
      }
      own = compose(Affine<scalar_t>{coef[i], delta[i]}, own);
    }

    // Inclusive scan towards earlier segments: scan[y] = own_y o own_{y+1} o ... o own_last.
    scan[y * columns + x] = own;
    __syncthreads();
    for (int offset = 1; offset < segments; offset <<= 1) {
      Affine<scalar_t> mine = scan[y * columns + x];
      if (y + offset < segments) mine = compose(mine, scan[(y + offset) * columns + x]);
      __syncthreads();
      scan[y * columns + x] = mine;
      __syncthreads();
    }
    const Affine<scalar_t> tile_map = scan[x];  // the whole tile, from segment 0
    if (pass == Pass::kWrite) {
      scalar_t advantage = carry;
      if (y + 1 < segments) {
        const Affine<scalar_t> after = scan[(y + 1) * columns + x];
        advantage = after.offset + after.scale * carry;
      }
#pragma unroll
      for (int i = kSteps - 1; i >= 0; --i) {
        const int64_t t = first + i;
        advantage = delta[i] + coef[i] * advantage;
        if (active && t < tile_end) {
          const int64_t at = t * N + column;
          advantages[at] = advantage;
          returns[at] = advantage + value[i];
        }
      }
      carry = tile_map.offset + tile_map.scale * carry;
    } else {
      chunk_map = compose(tile_map, chunk_map);
    }
    __syncthreads();  // scan is rewritten by the next tile
  }
  if (pass == Pass::kCompose && y == 0 && active) maps[chunk * N + column] = chunk_map;
}

// carries[c * N + n] = A just after chunk c of column n, from the chunks' composed maps.
template <typename scalar_t>
__global__ void gae_chunk_carries(const Affine<scalar_t>* __restrict__ maps,
                                  scalar_t* __restrict__ carries, int64_t chunks, int64_t N) {
  const int64_t column = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= N) return;
  scalar_t carry = 0;
  for (int64_t c = chunks - 1; c >= 0; --c) {
    carries[c * N + column] = carry;
    const Affine<scalar_t> map = maps[c * N + column];
    carry = map.offset + map.scale * carry;
  }
}

// The benchmarks' baseline: one thread per column walking T steps in order.
template <typename scalar_t>
__global__ void gae_one_thread_per_column(const scalar_t* __restrict__ rewards,
                                          const scalar_t* __restrict__ values,
                                          const scalar_t* __restrict__ next_values,
                                          const bool* __restrict__ terminated,
                                          const bool* __restrict__ done,
                                          scalar_t* __restrict__ advantages,
                                          scalar_t* __restrict__ returns, int64_t T, int64_t N,
                                          scalar_t gamma, scalar_t gamma_lam) {
  const int64_t column = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= N) return;
  scalar_t advantage = 0;
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t at = t * N + column;
    const scalar_t delta =
        rewards[at] + gamma * scalar_t(!terminated[at]) * next_values[at] - values[at];
    advantage = delta + gamma_lam * scalar_t(!done[at]) * advantage;
    advantages[at] = advantage;
    returns[at] = advantage + values[at];
  }
}

// A call's checked, contiguous inputs, its outputs and where to launch.
struct GaeCall {
  Tensor rewards, values, next_values, terminated, done, advantages, returns;
  int64_t T, N;
  cudaStream_t stream;
};

GaeCall prepare(const char* op, Tensor rewards, Tensor values, Tensor next_values,
                Tensor terminated, Tensor done, double gamma, double lam) {
  check_gae_args(rewards, values, next_values, terminated, done, gamma, lam);
  cuda::check_cuda_tensor(op, "rewards", rewards);
  rewards = make_contiguous(rewards);
  return {rewards, make_contiguous(values), make_contiguous(next_values),
          make_contiguous(terminated), make_contiguous(done), torch::stable::empty_like(rewards),
          torch::stable::empty_like(rewards), rewards.size(0), rewards.size(1),
          cuda::current_stream(rewards)};
}

}  // namespace

std::tuple<Tensor, Tensor> gae_cuda(Tensor rewards, Tensor values, Tensor next_values,
                                    Tensor terminated, Tensor done, double gamma, double lam) {
  const GaeCall in = prepare("gae", rewards, values, next_values, terminated, done, gamma, lam);
  torch::stable::accelerator::DeviceGuard guard(in.rewards.get_device_index());
  const int64_t T = in.T, N = in.N;
  const cudaStream_t stream = in.stream;
  if (T == 0 || N == 0) return {in.advantages, in.returns};

  // Columns per block: a warp's worth for coalesced rows when N allows, fewer for narrow
  // batches so the block's threads go to time instead.
  int columns = 1;
  while (columns < 32 && columns < N) columns <<= 1;
  const int segments = cuda::kThreads / columns;
  const int64_t tile_length = int64_t(segments) * kSteps;
  const int64_t column_blocks = (N + columns - 1) / columns;
  // Split time across blocks only when the columns leave SMs idle and there is time to split.
  const int64_t wanted_blocks = int64_t(cuda::multiprocessor_count(in.rewards)) * 4;
  const int64_t tiles = (T + tile_length - 1) / tile_length;
  int64_t chunks = 1;
  if (column_blocks < wanted_blocks && tiles > 1) {
    chunks = std::min<int64_t>(tiles, (wanted_blocks + column_blocks - 1) / column_blocks);
  }
  const int64_t chunk_length = ((tiles + chunks - 1) / chunks) * tile_length;
  chunks = (T + chunk_length - 1) / chunk_length;
  check(column_blocks <= 0x7fffffff && chunks <= 65535, "minerva.gae: rollout too large, [",
        T, ", ", N, "]");

  dispatch_floating(in.rewards.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    const GaeLayout layout{T, N, chunk_length};
    const dim3 block(columns, segments);
    const size_t shared = sizeof(Affine<scalar_t>) * cuda::kThreads;
    const auto g = static_cast<scalar_t>(gamma);
    const auto gl = static_cast<scalar_t>(gamma * lam);
    const scalar_t* r = in.rewards.const_data_ptr<scalar_t>();
    const scalar_t* v = in.values.const_data_ptr<scalar_t>();
    const scalar_t* nv = in.next_values.const_data_ptr<scalar_t>();
    const bool* term = in.terminated.const_data_ptr<bool>();
    const bool* dn = in.done.const_data_ptr<bool>();
    scalar_t* adv = in.advantages.mutable_data_ptr<scalar_t>();
    scalar_t* ret = in.returns.mutable_data_ptr<scalar_t>();
    if (chunks == 1) {
      gae_tiles<scalar_t, Pass::kWrite><<<dim3(column_blocks, 1), block, shared, stream>>>(
          r, v, nv, term, dn, adv, ret, nullptr, nullptr, layout, g, gl);
      cuda::check_launch("gae");
      return;
    }
    // Scratch: the chunks' maps, then their carries ([chunks, N] each).
    Tensor scratch = torch::stable::new_empty(
        in.rewards, {chunks * N * 3}, in.rewards.scalar_type());
    auto* maps = reinterpret_cast<Affine<scalar_t>*>(scratch.mutable_data_ptr<scalar_t>());
    scalar_t* carries = scratch.mutable_data_ptr<scalar_t>() + chunks * N * 2;
    const dim3 grid(column_blocks, chunks);
    gae_tiles<scalar_t, Pass::kCompose><<<grid, block, shared, stream>>>(
        r, v, nv, term, dn, nullptr, nullptr, maps, nullptr, layout, g, gl);
    gae_chunk_carries<scalar_t><<<(N + cuda::kThreads - 1) / cuda::kThreads, cuda::kThreads, 0,
                                  stream>>>(maps, carries, chunks, N);
    gae_tiles<scalar_t, Pass::kWrite><<<grid, block, shared, stream>>>(
        r, v, nv, term, dn, adv, ret, nullptr, carries, layout, g, gl);
    cuda::check_launch("gae");
  });
  return {in.advantages, in.returns};
}

std::tuple<Tensor, Tensor> gae_single_thread_cuda(Tensor rewards, Tensor values,
                                                  Tensor next_values, Tensor terminated,
                                                  Tensor done, double gamma, double lam) {
  const GaeCall in = prepare("_gae_single_thread", rewards, values, next_values, terminated,
                             done, gamma, lam);
  torch::stable::accelerator::DeviceGuard guard(in.rewards.get_device_index());
  if (in.T == 0 || in.N == 0) return {in.advantages, in.returns};
  dispatch_floating(in.rewards.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    gae_one_thread_per_column<scalar_t>
        <<<(in.N + cuda::kThreads - 1) / cuda::kThreads, cuda::kThreads, 0, in.stream>>>(
            in.rewards.const_data_ptr<scalar_t>(), in.values.const_data_ptr<scalar_t>(),
            in.next_values.const_data_ptr<scalar_t>(), in.terminated.const_data_ptr<bool>(),
            in.done.const_data_ptr<bool>(), in.advantages.mutable_data_ptr<scalar_t>(),
            in.returns.mutable_data_ptr<scalar_t>(), in.T, in.N, static_cast<scalar_t>(gamma),
            static_cast<scalar_t>(gamma * lam));
    cuda::check_launch("_gae_single_thread");
  });
  return {in.advantages, in.returns};
}

}  // namespace minerva
