// CPU backend of gk.ops.norm_penalty: rows in parallel, each row read once; the backward is one
// scaled copy per row. Sums of squares accumulate in double so fp32 rows of any length keep
// their precision.
#include "gankern/norm_penalty.h"

#include <cmath>

#include "gankern/common.h"

namespace gankern {
namespace {

template <typename T>
void forward(const T* g, typename Acc<T>::type* norms, typename Acc<T>::type* penalty, int64_t B,
             int64_t N, double center, double weight) {
  using A = typename Acc<T>::type;
#pragma omp parallel for schedule(static) if (B * N > 32768)
  for (int64_t i = 0; i < B; ++i) {
    const T* row = g + i * N;
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < N; ++j) {
      const double v = double(Convert<T>::load(row[j]));
      acc += v * v;
    }
    norms[i] = A(std::sqrt(acc));
  }
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
  const A s = A(double(*gp) * 2.0 * weight / double(B));
#pragma omp parallel for schedule(static) if (B * N > 32768)
  for (int64_t i = 0; i < B; ++i) {
    const A n = norms[i];
    const A inv = n > A(0) ? A(1) / n : A(0);  // a zero row has gradient 0, never NaN
    const A coef = s + inv * (gn[i] - s * A(center));
    const T* row = g + i * N;
    T* o = out + i * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) o[j] = Convert<T>::store(A(Convert<T>::load(row[j])) * coef);
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
