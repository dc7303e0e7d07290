// The one place the minerva ops are defined (schemas) and bound to kernels.
// Fake (meta) implementations and autograd live in minerva/ops.py.
#include "ops.h"

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
