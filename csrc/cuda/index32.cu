// The test hook of gankern/index32.h: lets the cuda_sim tests force the 64-bit index
// instantiations of bias_act and the SN backward on small tensors. No kernels here.
#include "gankern/index32.h"

extern "C" int64_t gankern_set_index32_limit(int64_t limit) {
  const int64_t previous = gankern::index32_limit();
  gankern::index32_limit() = limit < 0 ? (int64_t(1) << 31) : limit;
  return previous;
}
