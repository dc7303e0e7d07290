// The one place the minerva ops are defined (schemas) and bound to kernels.
// Fake (meta) implementations and autograd live in minerva/ops.py.
// Compiled twice: into _C (schemas + CPU kernels) and, with MINERVA_CUDA_LIBRARY, into
// _C_cuda (the CUDA kernels), which loads after _C and only into torch with CUDA.
#include "ops.h"

#ifndef MINERVA_CUDA_LIBRARY

STABLE_TORCH_LIBRARY(minerva, m) {
  m.def(
      "gae(Tensor rewards, Tensor values, Tensor next_values, Tensor terminated, Tensor done, "
      "float gamma, float lam) -> (Tensor advantages, Tensor returns)");
  m.def("topk_mask(Tensor advantages, Tensor valid, float fraction) -> Tensor");
  m.def(
      "vmpo_weights(Tensor advantages, Tensor selected, Tensor eta) "
      "-> (Tensor weights, Tensor log_mean_exp)");
}

STABLE_TORCH_LIBRARY_IMPL(minerva, CPU, m) {
  m.impl("gae", TORCH_BOX(&minerva::gae_cpu));
  m.impl("topk_mask", TORCH_BOX(&minerva::topk_mask_cpu));
  m.impl("vmpo_weights", TORCH_BOX(&minerva::vmpo_weights_cpu));
}

#else

// A benchmark baseline, not part of the API: GAE with one thread per column walking T steps.
STABLE_TORCH_LIBRARY_FRAGMENT(minerva, m) {
  m.def(
      "_gae_single_thread(Tensor rewards, Tensor values, Tensor next_values, Tensor terminated, "
      "Tensor done, float gamma, float lam) -> (Tensor advantages, Tensor returns)");
}

STABLE_TORCH_LIBRARY_IMPL(minerva, CUDA, m) {
  m.impl("gae", TORCH_BOX(&minerva::gae_cuda));
  m.impl("_gae_single_thread", TORCH_BOX(&minerva::gae_single_thread_cuda));
  m.impl("topk_mask", TORCH_BOX(&minerva::topk_mask_cuda));
  m.impl("vmpo_weights", TORCH_BOX(&minerva::vmpo_weights_cuda));
}

#endif
