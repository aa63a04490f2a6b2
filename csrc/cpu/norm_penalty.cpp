// CPU backend of gk.ops.norm_penalty: rows in parallel, each row read once; the backward is one
// scaled copy per row. Sums of squares accumulate in double so fp32 rows of any length keep
// their precision, and every finite input whose exact result is representable gives it
// (denormal and huge rows included, issue 13): the rare rows outside the plain formulas' range
// take a second, rescaled pass instead of overflowing.
//
// As in bias_act.cpp, the loops are compiled for the baseline ISA and for AVX2+FMA, and the
// AVX2 copy runs where the CPU has it (the double accumulation is 2 lanes wide in SSE2, 4 in
// AVX2).
#include "gankern/norm_penalty.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

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

// A float64 row whose sum of squares leaves double's range is summed again scaled by 2^-600
// (huge) or 2^600 (tiny): exact, as a power of two only moves exponents, and enough for every
// double (|x| <= 2^1024 -> 2^424; 2^-1074 -> 2^-474, whose square is still normal). Narrower
// types never need it: their squares (2^-298 .. 2^256) are normal doubles.
constexpr double kScaleUp = 0x1p600, kScaleDown = 0x1p-600;
constexpr double kTinySumsq = 0x1p-900;  // below it squares may have lost bits or flushed to 0

template <typename T>
double row_sumsq_scaled(const T* row, int64_t N, double scale) {
  double acc = 0.0;
  for (int64_t j = 0; j < N; ++j) {
    const double v = double(Convert<T>::load(row[j])) * scale;
    acc += v * v;
  }
  return acc;
}

template <typename T>
double row_norm(const T* row, int64_t N, double (*sumsq)(const T*, int64_t)) {
  const double acc = sumsq(row, N);
  if (std::is_same<T, double>::value) {
    if (acc > std::numeric_limits<double>::max()) return std::sqrt(row_sumsq_scaled(row, N, kScaleDown)) * kScaleUp;
    if (acc < kTinySumsq) return std::sqrt(row_sumsq_scaled(row, N, kScaleUp)) * kScaleDown;
  }
  return std::sqrt(acc);
}

template <typename T>
void forward(const T* g, typename Acc<T>::type* norms, typename Acc<T>::type* penalty, int64_t B,
             int64_t N, double center, double weight) {
  using A = typename Acc<T>::type;
  double (*sumsq)(const T*, int64_t) = use_avx2() ? row_sumsq_avx2<T> : row_sumsq_generic<T>;
  // The penalty is taken from the double norms: a float32 norm of 1e39 is inf, its weighted
  // square need not be.
  std::vector<double> n64(static_cast<size_t>(B));
#pragma omp parallel for schedule(static) if (B > 1 && B * N >= kParallelGrain)
  for (int64_t i = 0; i < B; ++i) {
    n64[size_t(i)] = row_norm(g + i * N, N, sumsq);
    norms[i] = A(n64[size_t(i)]);
  }
  const double q = weight / double(B);
  double total = 0.0;
  for (int64_t i = 0; i < B; ++i) {
    const double d = n64[size_t(i)] - center;
    total += d * d;
  }
  double p = total * q;
  if (std::isinf(p)) {  // squares overflowed: the weight goes inside them (as in the reference)
    const double root_q = std::sqrt(q);
    double inside = 0.0;
    for (int64_t i = 0; i < B; ++i) {
      const double d = (n64[size_t(i)] - center) * root_q;
      inside += d * d;
    }
    if (!std::isinf(inside)) p = inside;
  }
  *penalty = A(p);
}

// The gradient s*g + (gn - s*c) * g/n of a row whose saved norm cannot be used as it is
// (denormal: 1/n overflows and the norm has lost bits; inf; 0), formed as the reference does:
// g/n = (g/m) / ||g/m|| with m = max |g|, in double, never through 1/n.
template <typename T>
void row_exact(const T* row, T* o, int64_t N, double s, double rest) {
  using A = typename Acc<T>::type;
  double m = 0.0;
  bool nan = false;
  for (int64_t j = 0; j < N; ++j) {
    const double a = std::fabs(double(Convert<T>::load(row[j])));
    nan |= a != a;
    m = a > m ? a : m;
  }
  if (nan || !(m > 0.0) || m > std::numeric_limits<double>::max()) m = 1.0;
  double r2 = 0.0;
  for (int64_t j = 0; j < N; ++j) {
    const double u = double(Convert<T>::load(row[j])) / m;
    r2 += u * u;
  }
  double r = std::sqrt(r2);
  if (!(r > 0.0)) r = 1.0;
  for (int64_t j = 0; j < N; ++j) {
    const double v = double(Convert<T>::load(row[j]));
    o[j] = Convert<T>::store(A(s * v + rest * ((v / m) / r)));
  }
}

template <typename T>
void backward(const typename Acc<T>::type* gp, const typename Acc<T>::type* gn, const T* g,
              const typename Acc<T>::type* norms, T* out, int64_t B, int64_t N, double center,
              double weight) {
  using A = typename Acc<T>::type;
  void (*scale)(const T*, T*, int64_t, A) = use_avx2() ? row_scale_avx2<T> : row_scale_generic<T>;
  const double s = double(*gp) * 2.0 * weight / double(B);
  const double a_min = double(std::numeric_limits<A>::min()), a_max = double(std::numeric_limits<A>::max());
#pragma omp parallel for schedule(static) if (B > 1 && B * N >= kParallelGrain)
  for (int64_t i = 0; i < B; ++i) {
    const double n = double(norms[i]), rest = double(gn[i]) - s * center;
    if (n >= a_min && n <= a_max) {  // a normal norm: one coefficient per row
      const double coef = s + rest / n;
      if (std::fabs(coef) <= a_max) {
        scale(g + i * N, out + i * N, N, A(coef));
        continue;
      }
    }
    row_exact(g + i * N, out + i * N, N, s, rest);
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
