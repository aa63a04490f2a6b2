// When the CUDA elementwise kernels may index in 32 bits.
// Why: a 64-bit integer divide or modulo is a long software routine on a GPU, and bias_act (the
// channel of element i) and the SN backward (row and column of element j) do one per element.
// Launchers instantiate their kernels for uint32_t indices and take them while every index the
// grid-stride loop forms (< n + stride, stride < 2^25) fits; huge tensors keep int64_t.
#pragma once
#include <cstdint>

namespace gankern {

// Element counts up to this use the 32-bit instantiation. A per-library value (not a constant)
// so the tests can lower it and run the 64-bit kernels on small tensors.
inline int64_t& index32_limit() {
  static int64_t limit = (int64_t(1) << 31);
  return limit;
}

inline bool fits_index32(int64_t n) { return n <= index32_limit(); }

}  // namespace gankern

extern "C" {
// Sets the limit (negative: restore the default); returns the previous one. Tests only.
int64_t gankern_set_index32_limit(int64_t limit);
}
