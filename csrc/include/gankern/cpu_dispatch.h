// Run-time ISA dispatch for the CPU kernels: a loop compiled twice, once for the baseline ISA
// of the build and once with GK_TARGET_AVX2 (AVX2 + FMA), picked by use_avx2() at run time, so
// one build runs everywhere and still uses the wide units where they exist.
#pragma once

#include <cstdlib>

#if defined(__GNUC__)
#define GK_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define GK_ALWAYS_INLINE inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define GK_X86_DISPATCH 1
#define GK_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define GK_X86_DISPATCH 0
#define GK_TARGET_AVX2
#endif

namespace gankern {

// GANKERN_CPU_NO_AVX2=1 runs the baseline loops on an AVX2 machine too (tests compare both).
inline bool use_avx2() {
#if GK_X86_DISPATCH
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* off = cpu_has ? std::getenv("GANKERN_CPU_NO_AVX2") : nullptr;
  return cpu_has && !(off && off[0] == '1');
#else
  return false;
#endif
}

}  // namespace gankern
