// CPU backend of gk.ops.norm_penalty: rows in parallel, each row read once; the backward is one
// scaled copy per row. Sums of squares accumulate in double so fp32 rows of any length keep
// their precision.
//
// As in bias_act.cpp, the loops are compiled for the baseline ISA and for AVX2+FMA, and the
// AVX2 copy runs where the CPU has it (the double accumulation is 2 lanes wide in SSE2, 4 in
// AVX2).
#include "gankern/norm_penalty.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "gankern/common.h"
#include "gankern/cpu_dispatch.h"

namespace gankern {
namespace {

template <typename T>
GK_ALWAYS_INLINE double row_sumsq(const T* __restrict row, int64_t N) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < N; ++j) {
    const double v = double(Convert<T>::load(row[j]));
    acc += v * v;
  }
  return acc;
}

template <typename T>
GK_ALWAYS_INLINE void row_scale(const T* __restrict row, T* __restrict o, int64_t N,
                                typename Acc<T>::type coef) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t j = 0; j < N; ++j) o[j] = Convert<T>::store(A(Convert<T>::load(row[j])) * coef);
}

template <typename T>
double row_sumsq_generic(const T* row, int64_t N) { return row_sumsq(row, N); }
template <typename T>
GK_TARGET_AVX2 double row_sumsq_avx2(const T* row, int64_t N) { return row_sumsq(row, N); }
template <typename T>
void row_scale_generic(const T* row, T* o, int64_t N, typename Acc<T>::type coef) { row_scale(row, o, N, coef); }
template <typename T>
GK_TARGET_AVX2 void row_scale_avx2(const T* row, T* o, int64_t N, typename Acc<T>::type coef) {
  row_scale(row, o, N, coef);
}

template <typename T>
void forward(const T* g, typename Acc<T>::type* norms, typename Acc<T>::type* penalty, int64_t B,
             int64_t N, double center, double weight) {
  using A = typename Acc<T>::type;
  double (*sumsq)(const T*, int64_t) = use_avx2() ? row_sumsq_avx2<T> : row_sumsq_generic<T>;
#pragma omp parallel for schedule(static) if (B > 1 && B * N >= kParallelGrain)
  for (int64_t i = 0; i < B; ++i) norms[i] = A(std::sqrt(sumsq(g + i * N, N)));
  double total = 0.0;
  for (int64_t i = 0; i < B; ++i) {
    const double d = double(norms[i]) - center;
    total += d * d;
  }
  *penalty = A(total * weight / double(B));
}

template <typename T>
void backward(const typename Acc<T>::type* gp, const typename Acc<T>::type* gn, const T* g,
              const typename Acc<T>::type* norms, T* out, int64_t B, int64_t N, double center,
              double weight) {
  using A = typename Acc<T>::type;
  void (*scale)(const T*, T*, int64_t, A) = use_avx2() ? row_scale_avx2<T> : row_scale_generic<T>;
  const A s = A(double(*gp) * 2.0 * weight / double(B));
#pragma omp parallel for schedule(static) if (B > 1 && B * N >= kParallelGrain)
  for (int64_t i = 0; i < B; ++i) {
    const A n = norms[i];
    const A inv = n > A(0) ? A(1) / n : A(0);  // a zero row has gradient 0, never NaN
    const A coef = s + inv * (gn[i] - s * A(center));
    scale(g + i * N, out + i * N, N, coef);
  }
}

}  // namespace

int norm_penalty_cpu(const void* grads, void* norms, void* penalty, int64_t B, int64_t N, int dtype,
                     double center, double weight) {
  switch (dtype) {
    case kFloat32:
      forward(static_cast<const float*>(grads), static_cast<float*>(norms), static_cast<float*>(penalty), B, N, center, weight);
      return 0;
    case kFloat64:
      forward(static_cast<const double*>(grads), static_cast<double*>(norms), static_cast<double*>(penalty), B, N, center, weight);
      return 0;
    case kFloat16:
      forward(static_cast<const half_bits*>(grads), static_cast<float*>(norms), static_cast<float*>(penalty), B, N, center, weight);
      return 0;
    case kBFloat16:
      forward(static_cast<const bf16_bits*>(grads), static_cast<float*>(norms), static_cast<float*>(penalty), B, N, center, weight);
      return 0;
  }
  return -1;
}

int norm_penalty_backward_cpu(const void* gp, const void* gn, const void* grads, const void* norms,
                              void* out, int64_t B, int64_t N, int dtype, double center, double weight) {
  switch (dtype) {
    case kFloat32:
      backward(static_cast<const float*>(gp), static_cast<const float*>(gn), static_cast<const float*>(grads),
               static_cast<const float*>(norms), static_cast<float*>(out), B, N, center, weight);
      return 0;
    case kFloat64:
      backward(static_cast<const double*>(gp), static_cast<const double*>(gn), static_cast<const double*>(grads),
               static_cast<const double*>(norms), static_cast<double*>(out), B, N, center, weight);
      return 0;
    case kFloat16:
      backward(static_cast<const float*>(gp), static_cast<const float*>(gn), static_cast<const half_bits*>(grads),
               static_cast<const float*>(norms), static_cast<half_bits*>(out), B, N, center, weight);
      return 0;
    case kBFloat16:
      backward(static_cast<const float*>(gp), static_cast<const float*>(gn), static_cast<const bf16_bits*>(grads),
               static_cast<const float*>(norms), static_cast<bf16_bits*>(out), B, N, center, weight);
      return 0;
  }
  return -1;
}

}  // namespace gankern
