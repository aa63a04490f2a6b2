// CPU backend of gankern's spectral norm: one pass over W per power iteration, sigma for free.
// Each row of W is read once per iteration: its dot with v gives t_i = (W v)_i, and while the
// row is still in L1 it is added into s += t_i W_i, so s = W^T (W v) and W^T u = s / ||t||.
// Accumulation is in double for float64 and float otherwise (vectorized by omp simd).
// The loops over W are compiled twice (baseline ISA and AVX2+FMA, gankern/cpu_dispatch.h): the
// SSE2 build lost to torch's mv/div on cache-resident mid-sized layers (128x1152 fp32, one
// thread: power iteration 45 us vs torch's two mv 41 us, sigma 20 vs 12, W/sigma 22 vs 17;
// with the AVX2 copy 22, 10 and 14 us, the backward 46 -> 29 us).
// AVX2 without FMA: the kLanes partial sums make the two copies round identically (FMA moved
// u past the float32 conformance bound with torch, 1.2e-5 on a ConvTranspose2d), and the loops
// are bound by reading W, not by arithmetic.
#include "gankern/spectral_norm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gankern/common.h"
#include "gankern/cpu_dispatch.h"

#if GK_X86_DISPATCH
#define GK_SN_AVX2 __attribute__((target("avx2")))
#else
#define GK_SN_AVX2
#endif

namespace gankern {
namespace {

// kLanes independent partial sums: one accumulator would make every add wait for the last
// (latency-bound at ~1 element per cycle); this keeps the vector units busy.
constexpr int64_t kLanes = 16;

template <typename T, typename A>
GK_ALWAYS_INLINE A row_dot(const T* w, const A* x, int64_t Aa, int64_t M, int64_t B, int64_t i) {
  A lanes[kLanes] = {};
  A tail = A(0);
  for (int64_t a = 0; a < Aa; ++a) {
    const T* row = w + (a * M + i) * B;
    const A* xa = x + a * B;
    const int64_t body = B - B % kLanes;
    for (int64_t b = 0; b < body; b += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += A(Convert<T>::load(row[b + l])) * xa[b + l];
    }
    for (int64_t b = body; b < B; ++b) tail += A(Convert<T>::load(row[b])) * xa[b];
  }
  A acc = tail;
  for (int64_t l = 0; l < kLanes; ++l) acc += lanes[l];
  return acc;
}

template <typename T, typename A>
GK_ALWAYS_INLINE void row_axpy(const T* w, A t, A* s, int64_t Aa, int64_t M, int64_t B, int64_t i) {
  for (int64_t a = 0; a < Aa; ++a) {
    const T* row = w + (a * M + i) * B;
    A* sa = s + a * B;
#pragma omp simd
    for (int64_t b = 0; b < B; ++b) sa[b] += t * A(Convert<T>::load(row[b]));
  }
}

// Rows [i0, i1) of one power iteration: t_i = W_i . v, s += t_i W_i.
template <typename T, typename A>
GK_ALWAYS_INLINE void pi_rows_body(const T* w, const A* vin, A* t, A* s, int64_t Aa, int64_t M,
                                   int64_t B, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    t[i] = row_dot(w, vin, Aa, M, B, i);
    row_axpy(w, t[i], s, Aa, M, B, i);
  }
}
template <typename T, typename A>
void pi_rows_generic(const T* w, const A* vin, A* t, A* s, int64_t Aa, int64_t M, int64_t B,
                     int64_t i0, int64_t i1) {
  pi_rows_body(w, vin, t, s, Aa, M, B, i0, i1);
}
template <typename T, typename A>
GK_SN_AVX2 void pi_rows_avx2(const T* w, const A* vin, A* t, A* s, int64_t Aa, int64_t M,
                                 int64_t B, int64_t i0, int64_t i1) {
  pi_rows_body(w, vin, t, s, Aa, M, B, i0, i1);
}

// sum over rows [i0, i1) of u_i (W_i . v), in double.
template <typename T, typename A>
GK_ALWAYS_INLINE double sigma_rows_body(const T* w, const A* vin, const T* u, int64_t Aa, int64_t M,
                                        int64_t B, int64_t i0, int64_t i1) {
  double acc = 0.0;
  for (int64_t i = i0; i < i1; ++i)
    acc += double(Convert<T>::load(u[i])) * double(row_dot(w, vin, Aa, M, B, i));
  return acc;
}
template <typename T, typename A>
double sigma_rows_generic(const T* w, const A* vin, const T* u, int64_t Aa, int64_t M, int64_t B,
                          int64_t i0, int64_t i1) {
  return sigma_rows_body(w, vin, u, Aa, M, B, i0, i1);
}
template <typename T, typename A>
GK_SN_AVX2 double sigma_rows_avx2(const T* w, const A* vin, const T* u, int64_t Aa, int64_t M,
                                      int64_t B, int64_t i0, int64_t i1) {
  return sigma_rows_body(w, vin, u, Aa, M, B, i0, i1);
}

template <typename T, typename A>
GK_ALWAYS_INLINE void scale_body(const T* __restrict w, A r, T* __restrict out, int64_t j0,
                                 int64_t j1) {
#pragma omp simd
  for (int64_t j = j0; j < j1; ++j) out[j] = Convert<T>::store(A(Convert<T>::load(w[j])) * r);
}
template <typename T, typename A>
void scale_generic(const T* w, A r, T* out, int64_t j0, int64_t j1) { scale_body(w, r, out, j0, j1); }
template <typename T, typename A>
GK_SN_AVX2 void scale_avx2(const T* w, A r, T* out, int64_t j0, int64_t j1) {
  scale_body(w, r, out, j0, j1);
}

// <g, w> over rows [r0, r1) of B elements, in double (float rows summed in A first).
template <typename T, typename A>
GK_ALWAYS_INLINE double gw_rows_body(const T* g, const T* w, int64_t B, int64_t r0, int64_t r1) {
  double dot = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    A acc = A(0);
    const T* gr = g + r * B;
    const T* wr = w + r * B;
#pragma omp simd reduction(+ : acc)
    for (int64_t b = 0; b < B; ++b) acc += A(Convert<T>::load(gr[b])) * A(Convert<T>::load(wr[b]));
    dot += double(acc);
  }
  return dot;
}
template <typename T, typename A>
double gw_rows_generic(const T* g, const T* w, int64_t B, int64_t r0, int64_t r1) {
  return gw_rows_body<T, A>(g, w, B, r0, r1);
}
template <typename T, typename A>
GK_SN_AVX2 double gw_rows_avx2(const T* g, const T* w, int64_t B, int64_t r0, int64_t r1) {
  return gw_rows_body<T, A>(g, w, B, r0, r1);
}

// out = g / sigma - c u v^T over rows [r0, r1) (row r = a * M + i).
template <typename T, typename A>
GK_ALWAYS_INLINE void bwd_rows_body(const T* __restrict g, const T* u, const T* v, A rs, A c,
                                    int64_t M, int64_t B, T* __restrict out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t a = r / M, i = r % M;
    const A cu = c * A(Convert<T>::load(u[i]));
    const T* gr = g + r * B;
    const T* va = v + a * B;
    T* orow = out + r * B;
#pragma omp simd
    for (int64_t b = 0; b < B; ++b)
      orow[b] = Convert<T>::store(A(Convert<T>::load(gr[b])) * rs - cu * A(Convert<T>::load(va[b])));
  }
}
template <typename T, typename A>
void bwd_rows_generic(const T* g, const T* u, const T* v, A rs, A c, int64_t M, int64_t B, T* out,
                      int64_t r0, int64_t r1) {
  bwd_rows_body(g, u, v, rs, c, M, B, out, r0, r1);
}
template <typename T, typename A>
GK_SN_AVX2 void bwd_rows_avx2(const T* g, const T* u, const T* v, A rs, A c, int64_t M,
                                  int64_t B, T* out, int64_t r0, int64_t r1) {
  bwd_rows_body(g, u, v, rs, c, M, B, out, r0, r1);
}

// [begin, end) of n items for this OpenMP thread (static split; the whole range outside one).
inline void thread_range(int64_t n, int64_t* begin, int64_t* end) {
#ifdef _OPENMP
  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
#else
  const int64_t nth = 1, tid = 0;
#endif
  const int64_t per = n / nth, extra = n % nth;
  *begin = tid * per + std::min(tid, extra);
  *end = *begin + per + (tid < extra ? 1 : 0);
}

// One power iteration in double, normalizing u before the second pass (torch's order):
// nothing in it can overflow for finite float weights. Returns sigma.
template <typename T>
double double_iteration(const T* w, int64_t Aa, int64_t M, int64_t B, T* u, T* v, double eps) {
  const int64_t K = Aa * B;
  std::vector<double> vin(K), t(M), s(K, 0.0);
  for (int64_t k = 0; k < K; ++k) vin[k] = double(Convert<T>::load(v[k]));
  double tt = 0.0;
  for (int64_t i = 0; i < M; ++i) {
    t[i] = row_dot(w, vin.data(), Aa, M, B, i);
    tt += t[i] * t[i];
  }
  const double dt = std::max(std::sqrt(tt), eps);
  for (int64_t i = 0; i < M; ++i) {
    t[i] /= dt;
    u[i] = Convert<T>::store(typename Acc<T>::type(t[i]));
    row_axpy(w, t[i], s.data(), Aa, M, B, i);
  }
  double ww = 0.0;
  for (int64_t k = 0; k < K; ++k) ww += s[k] * s[k];
  const double nw = std::sqrt(ww), dw = std::max(nw, eps);
  for (int64_t k = 0; k < K; ++k) v[k] = Convert<T>::store(typename Acc<T>::type(s[k] / dw));
  return nw * nw / dw;
}

template <typename T>
void power_iteration(const T* w, int64_t Aa, int64_t M, int64_t B, T* u, T* v, int64_t n_iter,
                     double eps, T* sigma, T* u_copy, T* v_copy) {
  using A = typename Acc<T>::type;
  const int64_t K = Aa * B;
  std::vector<A> vin(K), t(M), s(K);
  double sig = 0.0;
  const bool parallel = M * K >= kParallelGrain;
  auto rows = use_avx2() ? pi_rows_avx2<T, A> : pi_rows_generic<T, A>;
  for (int64_t it = 0; it < n_iter; ++it) {
    for (int64_t k = 0; k < K; ++k) vin[k] = A(Convert<T>::load(v[k]));
    std::fill(s.begin(), s.end(), A(0));
    if (!parallel) {
      rows(w, vin.data(), t.data(), s.data(), Aa, M, B, 0, M);
    } else {
#pragma omp parallel
      {
        std::vector<A> part(K, A(0));
        int64_t i0, i1;
        thread_range(M, &i0, &i1);
        rows(w, vin.data(), t.data(), part.data(), Aa, M, B, i0, i1);
#pragma omp critical
        for (int64_t k = 0; k < K; ++k) s[k] += part[k];
      }
    }
    // u = t / max(||t||, eps); W^T u = s / max(||t||, eps); v = W^T u / max(||W^T u||, eps).
    double tt = 0.0;
    for (int64_t i = 0; i < M; ++i) tt += double(t[i]) * double(t[i]);
    const double dt = std::max(std::sqrt(tt), eps);
    // Multiplies by 1/dt and four partial sums, not a division and one running sum per element:
    // this loop and the v loop below are O(K) scalar double work outside the ISA-dispatched
    // passes, which made a one-row layer's iteration (1 x 8192 fp32, a DCGAN D's last conv)
    // 26 us against torch's 22 us for two mv (crossover.py sn_layers). Scaling stays
    // element-wise first (s * (1/dt), then * (1/dw)), so nothing squares past double range.
    const double rdt = 1.0 / dt;
    double part[4] = {0.0, 0.0, 0.0, 0.0};
    const int64_t body = K - K % 4;
    for (int64_t k = 0; k < body; k += 4) {
      for (int l = 0; l < 4; ++l) {
        const double wk = double(s[k + l]) * rdt;
        part[l] += wk * wk;
      }
    }
    for (int64_t k = body; k < K; ++k) {
      const double wk = double(s[k]) * rdt;
      part[0] += wk * wk;
    }
    const double ww = (part[0] + part[1]) + (part[2] + part[3]);
    if (!std::isfinite(ww) && std::is_same<A, float>::value) {
      // s = W^T (W v) overflowed float (entries beyond ~1e19): redo this iteration in double.
      // Rare, and it keeps finite weights finite where torch's float32 norms give NaN.
      sig = double_iteration(w, Aa, M, B, u, v, eps);
      continue;
    }
    for (int64_t i = 0; i < M; ++i) u[i] = Convert<T>::store(A(double(t[i]) * rdt));
    const double nw = std::sqrt(ww), dw = std::max(nw, eps), rdw = 1.0 / dw;
    for (int64_t k = 0; k < K; ++k) v[k] = Convert<T>::store(A(double(s[k]) * rdt * rdw));
    // u^T W v = (W^T u) . v = ||W^T u||^2 / max(||W^T u||, eps): no third pass over W.
    sig = nw * nw / dw;
  }
  *sigma = Convert<T>::store(A(sig));
  std::copy(u, u + M, u_copy);
  std::copy(v, v + K, v_copy);
}

template <typename T>
void sigma_of(const T* w, int64_t Aa, int64_t M, int64_t B, const T* u, const T* v, T* sigma) {
  using A = typename Acc<T>::type;
  const int64_t K = Aa * B;
  std::vector<A> vin(K);
  for (int64_t k = 0; k < K; ++k) vin[k] = A(Convert<T>::load(v[k]));
  auto rows = use_avx2() ? sigma_rows_avx2<T, A> : sigma_rows_generic<T, A>;
  double acc = 0.0;
  if (M * K < kParallelGrain) {
    acc = rows(w, vin.data(), u, Aa, M, B, 0, M);
  } else {
#pragma omp parallel reduction(+ : acc)
    {
      int64_t i0, i1;
      thread_range(M, &i0, &i1);
      acc += rows(w, vin.data(), u, Aa, M, B, i0, i1);
    }
  }
  *sigma = Convert<T>::store(A(acc));
}

template <typename T>
void scale(const T* w, int64_t n, const T* sigma, T* out) {
  using A = typename Acc<T>::type;
  // A multiply by 1/sigma (within an ulp of torch's division, and several times cheaper).
  const A r = A(1) / A(Convert<T>::load(*sigma));
  auto range = use_avx2() ? scale_avx2<T, A> : scale_generic<T, A>;
  // Serial below the grain by a plain branch: the former "#pragma omp parallel for simd if (n >=
  // grain)" also switched simd off below it (OpenMP 5 applies a bare if to every constituent
  // construct), so GCC ran small layers scalar (128x27 fp32 3.7 us, 2x torch's div).
  if (n < kParallelGrain) {
    range(w, r, out, 0, n);
    return;
  }
#pragma omp parallel
  {
    int64_t j0, j1;
    thread_range(n, &j0, &j1);
    range(w, r, out, j0, j1);
  }
}

template <typename T>
void normalize_backward(const T* g, const T* w, int64_t Aa, int64_t M, int64_t B, const T* u,
                        const T* v, const T* sigma, T* out) {
  using A = typename Acc<T>::type;
  const int64_t n = Aa * M * B;
  const bool parallel = n >= kParallelGrain;
  A s;
  if (sigma) {
    s = A(Convert<T>::load(*sigma));
  } else {  // sigma = u^T W v when the caller has none (the gradcheck path)
    T tmp;
    sigma_of(w, Aa, M, B, u, v, &tmp);
    s = A(Convert<T>::load(tmp));
  }
  auto gw = use_avx2() ? gw_rows_avx2<T, A> : gw_rows_generic<T, A>;
  auto rows = use_avx2() ? bwd_rows_avx2<T, A> : bwd_rows_generic<T, A>;
  double dot = 0.0;
  if (!parallel) {
    dot = gw(g, w, B, 0, Aa * M);
  } else {
#pragma omp parallel reduction(+ : dot)
    {
      int64_t r0, r1;
      thread_range(Aa * M, &r0, &r1);
      dot += gw(g, w, B, r0, r1);
    }
  }
  const A c = A(dot / (double(s) * double(s)));
  const A rs = A(1) / s;
  if (!parallel) {
    rows(g, u, v, rs, c, M, B, out, 0, Aa * M);
  } else {
#pragma omp parallel
    {
      int64_t r0, r1;
      thread_range(Aa * M, &r0, &r1);
      rows(g, u, v, rs, c, M, B, out, r0, r1);
    }
  }
}

template <template <typename> class F, typename... Args>
int dispatch(int dtype, Args&&... args) {
  switch (dtype) {
    case kFloat32: F<float>::run(args...); return 0;
    case kFloat64: F<double>::run(args...); return 0;
    case kFloat16: F<half_bits>::run(args...); return 0;
    case kBFloat16: F<bf16_bits>::run(args...); return 0;
  }
  return -1;
}

template <typename T> struct PowerIteration {
  static void run(const void* w, int64_t Aa, int64_t M, int64_t B, void* u, void* v, int64_t n,
                  double eps, void* sigma, void* uc, void* vc) {
    power_iteration(static_cast<const T*>(w), Aa, M, B, static_cast<T*>(u), static_cast<T*>(v), n,
                    eps, static_cast<T*>(sigma), static_cast<T*>(uc), static_cast<T*>(vc));
  }
};
template <typename T> struct Sigma {
  static void run(const void* w, int64_t Aa, int64_t M, int64_t B, const void* u, const void* v,
                  void* sigma) {
    sigma_of(static_cast<const T*>(w), Aa, M, B, static_cast<const T*>(u),
             static_cast<const T*>(v), static_cast<T*>(sigma));
  }
};
template <typename T> struct Scale {
  static void run(const void* w, int64_t n, const void* sigma, void* out) {
    scale(static_cast<const T*>(w), n, static_cast<const T*>(sigma), static_cast<T*>(out));
  }
};
template <typename T> struct Backward {
  static void run(const void* g, const void* w, int64_t Aa, int64_t M, int64_t B, const void* u,
                  const void* v, const void* sigma, void* out) {
    normalize_backward(static_cast<const T*>(g), static_cast<const T*>(w), Aa, M, B,
                       static_cast<const T*>(u), static_cast<const T*>(v),
                       static_cast<const T*>(sigma), static_cast<T*>(out));
  }
};

}  // namespace

int sn_power_iteration_cpu(int dtype, const void* w, int64_t Aa, int64_t M, int64_t B, void* u,
                           void* v, int64_t n_iter, double eps, void* sigma, void* u_copy,
                           void* v_copy) {
  return dispatch<PowerIteration>(dtype, w, Aa, M, B, u, v, n_iter, eps, sigma, u_copy, v_copy);
}

int sn_sigma_cpu(int dtype, const void* w, int64_t Aa, int64_t M, int64_t B, const void* u,
                 const void* v, void* sigma) {
  return dispatch<Sigma>(dtype, w, Aa, M, B, u, v, sigma);
}

int sn_scale_cpu(int dtype, const void* w, int64_t numel, const void* sigma, void* out) {
  return dispatch<Scale>(dtype, w, numel, sigma, out);
}

int sn_normalize_backward_cpu(int dtype, const void* grad, const void* w, int64_t Aa, int64_t M,
                              int64_t B, const void* u, const void* v, const void* sigma,
                              void* out) {
  return dispatch<Backward>(dtype, grad, w, Aa, M, B, u, v, sigma, out);
}

}  // namespace gankern
