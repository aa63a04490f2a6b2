// CUDA on the host, for tests only (issue 15): compile csrc/cuda/*.cu unmodified as C++ with
// -DGANKERN_CUDA_SIM -Icsrc/sim (whose cuda_runtime.h includes this file) and every launch of
// gankern::launch_kernel runs the kernel's grid here, on CPU memory. scripts/build_cuda_sim.py
// builds it; the tests reach it as backend impl="cuda_sim". Never part of a user build.
//
// What is modelled, and how:
// - a grid of blocks; blocks run one after another on each of GANKERN_SIM_WORKERS OS threads
//   (default 1; the ThreadSanitizer run uses 2, so blocks that touch the same memory race);
// - the threads of a block: one fiber (own guarded stack) per CUDA thread, all live at
//   once, so __syncthreads() is a real barrier: a thread waits there until every other thread
//   of its block arrived (exited threads count as arrived, as on sm_70+), and a block whose
//   threads can never meet (a barrier some threads skip while others wait at a shuffle) fails
//   the launch with a message instead of hanging;
// - __shared__ variables: one copy per block (per worker thread, which runs one block at a
//   time); contents are NOT reset between blocks (CUDA leaves them undefined; TSan and the
//   schedule below catch most reads before writes, nothing proves their absence);
// - warps of 32 lanes (linear thread id / 32): __shfl_sync/_up/_down/_xor, __ballot_sync,
//   __any_sync, __all_sync, __syncwarp wait until every lane named in the mask reached the same
//   intrinsic; a lane calling with a mask that leaves itself out, a mask naming an exited or
//   absent lane, a read from a lane outside the mask, or lanes of one mask disagreeing on the
//   intrinsic or mask fail the launch (all undefined behaviour on a GPU). Shuffles exchange
//   values only: like the hardware they order no memory, so TSan still sees shared-memory races;
// - blockIdx, threadIdx, blockDim, gridDim, warpSize; launch limits (1024 threads a block,
//   block.z <= 64, grid.y/z <= 65535, 48 KiB static shared memory request, 4 KiB of parameters)
//   give the cudaError a GPU would give; parameters are copied at launch as on a GPU;
// - math: the C++ library's (IEEE) functions under CUDA's overload set (sqrt(float) is a float
//   square root); CUDA's fast intrinsics (__expf, ...) are deliberately absent, so a kernel
//   using one does not compile here and must be looked at;
// - atomicAdd on int, unsigned, float and double and atomicCAS, as real host atomics (the
//   kernels use none today);
// - ThreadSanitizer: each CUDA thread is a TSan fiber switched WITHOUT synchronisation; only a
//   barrier (and launch start/end) creates happens-before, so two threads of a block touching
//   the same address with no __syncthreads() between them are reported as a data race, which
//   is what compute-sanitizer racecheck reports. AddressSanitizer: fiber switches are annotated,
//   so out-of-bounds accesses of kernels on CPU tensors are reported like memcheck's.
// What is not: timing, occupancy, memory coalescing, caches, real warp scheduling (threads
// switch only at barriers and warp intrinsics, in a fixed order alternating per pass), the
// weak memory model of the GPU, independent thread scheduling inside a warp, and the hardware's
// math approximations (--use_fast_math, FTZ): results here are IEEE results.
#pragma once

#include <ucontext.h>  // the fiber switch off x86-64
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define GK_SIM_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define GK_SIM_TSAN 1
// The harness's own bookkeeping is shared between fibers on purpose; only kernel code is checked.
#define GK_SIM_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define GK_SIM_NO_TSAN
#endif

// ---- CUDA keywords: host code has one address space and no qualifiers -----------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local  // one copy per worker thread = per running block

// ---- runtime types -----------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
constexpr int warpSize = 32;

// The built-in variables, read through the fiber that runs the current CUDA thread.
#define threadIdx (::gankern_sim::current_thread().idx)
#define blockIdx (::gankern_sim::current_worker().block_idx)
#define blockDim (::gankern_sim::current_worker().block_dim)
#define gridDim (::gankern_sim::current_worker().grid_dim)

// CUDA's device math overloads: sqrt(float) is sqrtf, fmax(float, float) is fmaxf, ...
using std::abs; using std::ceil; using std::cos; using std::exp; using std::expm1; using std::fabs;
using std::floor; using std::fma; using std::fmax; using std::fmin; using std::isfinite;
using std::isinf; using std::isnan; using std::log; using std::log1p; using std::pow;
using std::sin; using std::sqrt; using std::tanh;
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }

namespace gankern_sim {

constexpr int kWarp = 32;
constexpr unsigned kMaxThreads = 1024;
#if defined(GK_SIM_ASAN) || defined(GK_SIM_TSAN)
constexpr size_t kStackBytes = size_t(256) << 10;  // sanitizer frames are several times larger
#else
constexpr size_t kStackBytes = size_t(64) << 10;
#endif

// ---- fiber switch ------------------------------------------------------------------------------
// x86-64: a few instructions saving the callee-saved registers, without the signal-mask system
// call of swapcontext (two of which per CUDA thread made a 256-thread block cost ~0.5 ms).
// Elsewhere: ucontext. Both are annotated for ASan and TSan by the caller (Worker::resume/yield).
#if defined(__x86_64__)
// gk_sim_switch(void** save_sp, void* next_sp): push callee-saved state, swap stacks, pop.
// Weak: every translation unit that includes this header emits the same definition.
asm(R"(
  .text
  .weak gk_sim_switch
  .hidden gk_sim_switch
  .type gk_sim_switch,@function
gk_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gk_sim_switch, .-gk_sim_switch
)");
extern "C" void gk_sim_switch(void** save_sp, void* next_sp);

struct FiberContext { void* sp = nullptr; };
inline void fiber_init(FiberContext&) {}
// A stack that gk_sim_switch "returns" into fn, entered with the alignment of a call.
GK_SIM_NO_TSAN inline void fiber_start(FiberContext& c, char* stack, size_t bytes, void (*fn)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 72);
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::memset(sp, 0, 72);
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 2);
  sp[7] = reinterpret_cast<uint64_t>(fn);  // after the six registers: the "return" address
  c.sp = sp;
}
GK_SIM_NO_TSAN inline void fiber_switch(FiberContext& save, FiberContext& next) { gk_sim_switch(&save.sp, next.sp); }
#else
struct FiberContext { ucontext_t uc; };
inline void fiber_init(FiberContext& c) { getcontext(&c.uc); }
inline void fiber_start(FiberContext& c, char* stack, size_t bytes, void (*fn)()) {
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fn, 0);
}
inline void fiber_switch(FiberContext& save, FiberContext& next) { swapcontext(&save.uc, &next.uc); }
#endif

enum class State { kReady, kBarrier, kWarpOp, kDone, kFaulted };
enum class WarpOp { kNone, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncwarp };

// One CUDA thread: a fiber with its own stack, reused block after block by the same worker.
struct Thread {
  FiberContext ctx;
  char* stack = nullptr;  // usable part, above a PROT_NONE guard page
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
  uint3 idx{0, 0, 0};
  int lane = 0, warp = 0;
  State state = State::kDone;
  uint64_t barrier_gen = 0;  // the barrier generation this thread waits at
  uint64_t warp_ops = 0;     // warp intrinsics completed or entered (its generation counter)
  // What the thread entered its latest warp intrinsic with, in one slot per generation parity
  // so a lane one intrinsic ahead never overwrites a value a slower lane has still to read.
  WarpOp op[2] = {WarpOp::kNone, WarpOp::kNone};
  unsigned mask[2] = {0, 0};
  uint64_t value[2] = {0, 0};
};

struct Worker;
Worker& current_worker();
Thread& current_thread();

// One OS thread running blocks; owns the fibers. The caller's thread keeps its worker (and
// stacks) from launch to launch; extra workers live for one launch.
struct Worker {
  std::vector<std::unique_ptr<Thread>> threads;
  FiberContext main_ctx;
  void* main_tsan_fiber = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  void* main_fake_stack = nullptr;
  Thread* current = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  void (*invoke)(const void*) = nullptr;
  const void* closure = nullptr;
  uint64_t barrier_gen = 0;
  bool failed = false;
  std::string error;
  // Happens-before anchors for TSan (addresses only): launch -> threads, threads -> end of
  // block, and one per barrier parity (see run_block).
  char sync_start = 0, sync_done = 0, sync_barrier[2] = {0, 0};

  ~Worker() {
    for (auto& t : threads) {
      if (t->stack) munmap(t->stack - 4096, kStackBytes + 4096);
#if defined(GK_SIM_TSAN)
      if (t->tsan_fiber) __tsan_destroy_fiber(t->tsan_fiber);
#endif
    }
  }

  GK_SIM_NO_TSAN void ensure_threads(unsigned n) {
    while (threads.size() < n) {
      auto t = std::make_unique<Thread>();
      void* base = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) { std::perror("gankern_sim: fiber stack"); std::abort(); }
      mprotect(base, 4096, PROT_NONE);  // a stack overflow faults instead of corrupting
      t->stack = static_cast<char*>(base) + 4096;
      fiber_init(t->ctx);
#if defined(GK_SIM_TSAN)
      t->tsan_fiber = __tsan_create_fiber(0);
#endif
      threads.push_back(std::move(t));
    }
  }

  GK_SIM_NO_TSAN static void entry();
  GK_SIM_NO_TSAN void resume(Thread& t);
  GK_SIM_NO_TSAN void yield(Thread& t);
  GK_SIM_NO_TSAN bool run_block(uint3 b);
  GK_SIM_NO_TSAN void fail(Thread& t, const std::string& why);
  GK_SIM_NO_TSAN bool warp_op_ready(const Thread& t);
};

inline thread_local Worker* tl_worker = nullptr;

inline Worker& current_worker() { return *tl_worker; }
inline Thread& current_thread() { return *tl_worker->current; }

inline void Worker::resume(Thread& t) {
  current = &t;
#if defined(GK_SIM_ASAN)
  __sanitizer_start_switch_fiber(&main_fake_stack, t.stack, kStackBytes);
#endif
#if defined(GK_SIM_TSAN)
  __tsan_switch_to_fiber(t.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  fiber_switch(main_ctx, t.ctx);
#if defined(GK_SIM_ASAN)
  __sanitizer_finish_switch_fiber(main_fake_stack, nullptr, nullptr);
#endif
  current = nullptr;
}

inline void Worker::yield(Thread& t) {
#if defined(GK_SIM_ASAN)
  // A thread that finished is never resumed: its fake stack can go.
  const bool final = t.state == State::kDone || t.state == State::kFaulted;
  __sanitizer_start_switch_fiber(final ? nullptr : &t.asan_fake_stack, main_stack_bottom,
                                 main_stack_size);
#endif
#if defined(GK_SIM_TSAN)
  __tsan_switch_to_fiber(main_tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  fiber_switch(t.ctx, main_ctx);
#if defined(GK_SIM_ASAN)
  __sanitizer_finish_switch_fiber(t.asan_fake_stack, &main_stack_bottom, &main_stack_size);
#endif
}

inline void Worker::entry() {
  Worker& w = *tl_worker;
  Thread& t = *w.current;
#if defined(GK_SIM_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &w.main_stack_bottom, &w.main_stack_size);
#endif
#if defined(GK_SIM_TSAN)
  __tsan_acquire(&w.sync_start);
#endif
  w.invoke(w.closure);
#if defined(GK_SIM_TSAN)
  __tsan_release(&w.sync_done);
#endif
  t.state = State::kDone;
  w.yield(t);
  std::abort();  // a finished thread is never resumed
}

inline void Worker::fail(Thread& t, const std::string& why) {
  if (!failed) {
    failed = true;
    char where[160];
    std::snprintf(where, sizeof where, " (block (%u,%u,%u), thread (%u,%u,%u))", block_idx.x,
                  block_idx.y, block_idx.z, t.idx.x, t.idx.y, t.idx.z);
    error = why + where;
  }
  t.state = State::kFaulted;
  yield(t);
  std::abort();  // a faulted thread is never resumed
}

// A lane may leave its warp intrinsic once every lane of its mask has entered the same one.
inline bool Worker::warp_op_ready(const Thread& t) {
  const int slot = int(t.warp_ops & 1);
  const unsigned n = block_dim.x * block_dim.y * block_dim.z;
  for (int l = 0; l < kWarp; ++l) {
    if (!(t.mask[slot] >> l & 1u)) continue;
    const unsigned id = unsigned(t.warp * kWarp + l);
    if (id >= n) return true;  // reported by the caller on resume
    const Thread& o = *threads[id];
    if (o.warp_ops < t.warp_ops) {
      if (o.state == State::kDone) return true;  // reported by the caller on resume
      return false;
    }
  }
  return true;
}

// Runs one block to the end; false if it failed (error says why).
inline bool Worker::run_block(uint3 b) {
  block_idx = b;
  const unsigned n = block_dim.x * block_dim.y * block_dim.z;
  for (unsigned i = 0; i < n; ++i) {
    Thread& t = *threads[i];
    t.idx = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
    t.lane = int(i % kWarp);
    t.warp = int(i / kWarp);
    t.state = State::kReady;
    t.warp_ops = 0;
    t.barrier_gen = 0;
    t.asan_fake_stack = nullptr;
    fiber_start(t.ctx, t.stack, kStackBytes, &Worker::entry);
  }
  barrier_gen = 0;
#if defined(GK_SIM_TSAN)
  __tsan_release(&sync_start);
#endif
  unsigned live = n;
  bool forward = true;
  while (live > 0) {
    bool progressed = false;
    for (unsigned k = 0; k < n; ++k) {
      Thread& t = *threads[forward ? k : n - 1 - k];
      const bool runnable = t.state == State::kReady || (t.state == State::kWarpOp && warp_op_ready(t));
      if (!runnable) continue;
      t.state = State::kReady;
      resume(t);
      progressed = true;
      if (failed) return false;
      if (t.state == State::kDone) --live;
    }
    forward = !forward;  // alternate the order, so order-dependent results show up
    if (progressed) continue;
    unsigned at_barrier = 0;
    for (unsigned i = 0; i < n; ++i) at_barrier += threads[i]->state == State::kBarrier;
    if (at_barrier != live) {
      error = "deadlock: " + std::to_string(at_barrier) + " of " + std::to_string(live) +
              " live threads wait at __syncthreads() while the others wait in a warp intrinsic "
              "for lanes that never arrive";
      failed = true;
      return false;
    }
    ++barrier_gen;
    for (unsigned i = 0; i < n; ++i)
      if (threads[i]->state == State::kBarrier) threads[i]->state = State::kReady;
  }
#if defined(GK_SIM_TSAN)
  __tsan_acquire(&sync_done);
#endif
  return true;
}

// ---- errors ------------------------------------------------------------------------------------
struct ErrorState {
  std::mutex mu;
  cudaError_t last = cudaSuccess;
  std::string message;
};
inline ErrorState& errors() { static ErrorState e; return e; }
inline void set_error(cudaError_t code, const std::string& message) {
  ErrorState& e = errors();
  std::lock_guard<std::mutex> lock(e.mu);
  if (e.last == cudaSuccess) {
    e.last = code;
    e.message = message;
  }
}

inline int workers_wanted() {
  const char* env = std::getenv("GANKERN_SIM_WORKERS");
  const int w = env ? std::atoi(env) : 1;
  return w < 1 ? 1 : (w > 64 ? 64 : w);
}

// Runs the grid: block b goes to worker b % W, each worker runs its blocks in order.
GK_SIM_NO_TSAN inline void run_grid(dim3 grid, dim3 block, size_t smem, size_t param_bytes,
                     void (*invoke)(const void*), const void* closure) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  if (threads == 0 || threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      blocks == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration, "invalid configuration argument");
    return;
  }
  if (smem > (size_t(48) << 10) || param_bytes > 4096) {
    set_error(cudaErrorInvalidValue, "invalid argument (shared memory or parameter size)");
    return;
  }
  auto run_share = [&](Worker& w, uint64_t first, uint64_t stride) {
    Worker* saved = tl_worker;
    tl_worker = &w;
    w.block_dim = block;
    w.grid_dim = grid;
    w.invoke = invoke;
    w.closure = closure;
    w.failed = false;
    w.ensure_threads(unsigned(threads));
#if defined(GK_SIM_TSAN)
    w.main_tsan_fiber = __tsan_get_current_fiber();
#endif
    for (uint64_t b = first; b < blocks; b += stride) {
      const uint3 bi{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
      if (!w.run_block(bi)) {
        set_error(cudaErrorLaunchFailure, "gankern_sim: " + w.error);
        break;
      }
    }
    tl_worker = saved;
  };
  const uint64_t n_workers = std::min<uint64_t>(uint64_t(workers_wanted()), blocks);
  static thread_local std::unique_ptr<Worker> own;  // the caller's worker keeps its stacks
  if (tl_worker) {  // a launch from inside a kernel: dynamic parallelism is not modelled
    set_error(cudaErrorLaunchFailure, "gankern_sim: launch from device code");
    return;
  }
  if (!own) own = std::make_unique<Worker>();
  // Extra workers are borrowed from a pool, so their fiber stacks (and TSan fibers) are made
  // once, not per launch; their OS threads live for one launch.
  static std::mutex pool_mu;
  static std::vector<std::unique_ptr<Worker>> pool;
  std::vector<std::unique_ptr<Worker>> extra_workers;
  {
    std::lock_guard<std::mutex> lock(pool_mu);
    for (uint64_t i = 1; i < n_workers; ++i) {
      if (pool.empty()) pool.push_back(std::make_unique<Worker>());
      extra_workers.push_back(std::move(pool.back()));
      pool.pop_back();
    }
  }
  std::vector<std::thread> extra;
  for (uint64_t i = 1; i < n_workers; ++i) {
    Worker* w = extra_workers[i - 1].get();
    extra.emplace_back([&, w, i] { run_share(*w, i, n_workers); });
  }
  run_share(*own, 0, n_workers);
  for (auto& t : extra) t.join();
  std::lock_guard<std::mutex> lock(pool_mu);
  for (auto& w : extra_workers) pool.push_back(std::move(w));
}

// ---- warp intrinsics ---------------------------------------------------------------------------
// Enters a warp intrinsic: checks the mask, publishes this lane's value, waits for the lanes
// of the mask, and returns the slot the values of this generation live in.
GK_SIM_NO_TSAN inline int enter_warp_op(WarpOp op, unsigned mask, uint64_t value) {
  Worker& w = current_worker();
  Thread& t = current_thread();
  if (!(mask >> t.lane & 1u)) w.fail(t, "warp intrinsic with a mask that leaves out the calling lane");
  const int slot = int((t.warp_ops + 1) & 1);
  t.op[slot] = op;
  t.mask[slot] = mask;
  t.value[slot] = value;
  ++t.warp_ops;
  t.state = State::kWarpOp;
  w.yield(t);
  const unsigned n = w.block_dim.x * w.block_dim.y * w.block_dim.z;
  for (int l = 0; l < kWarp; ++l) {
    if (!(mask >> l & 1u)) continue;
    const unsigned id = unsigned(t.warp * kWarp + l);
    if (id >= n) w.fail(t, "warp intrinsic mask names lane " + std::to_string(l) + ", which the block does not have");
    const Thread& o = *w.threads[id];
    if (o.warp_ops < t.warp_ops) w.fail(t, "warp intrinsic mask names lane " + std::to_string(l) + ", which exited");
    if (o.op[slot] != op || o.mask[slot] != mask)
      w.fail(t, "lanes of one warp mask disagree on the warp intrinsic or its mask");
  }
  return slot;
}

GK_SIM_NO_TSAN inline uint64_t lane_value(int slot, unsigned mask, int src) {
  Worker& w = current_worker();
  Thread& t = current_thread();
  if (!(mask >> src & 1u)) w.fail(t, "shuffle reads lane " + std::to_string(src) + ", outside the mask");
  return w.threads[unsigned(t.warp * kWarp + src)]->value[slot];
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// src lane of a shuffle within segments of `width` lanes; -1 = keep the own value.
template <typename T>
inline T shuffle(WarpOp op, unsigned mask, T var, int arg, int width) {
  const int slot = enter_warp_op(op, mask, to_bits(var));
  const int lane = current_thread().lane;
  const int base = lane & ~(width - 1), in_seg = lane - base;
  int src = lane;
  switch (op) {
    case WarpOp::kShflIdx: src = base + (arg % width + width) % width; break;
    case WarpOp::kShflUp: src = in_seg >= arg ? lane - arg : lane; break;
    case WarpOp::kShflDown: src = in_seg + arg < width ? lane + arg : lane; break;
    case WarpOp::kShflXor: src = (lane ^ arg) < base + width ? lane ^ arg : lane; break;
    default: break;
  }
  return from_bits<T>(lane_value(slot, mask, src));
}

inline unsigned vote(WarpOp op, unsigned mask, bool pred) {
  const int slot = enter_warp_op(op, mask, pred ? 1 : 0);
  unsigned ballot = 0;
  for (int l = 0; l < kWarp; ++l)
    if (mask >> l & 1u) ballot |= unsigned(lane_value(slot, mask, l) != 0) << l;
  return ballot;
}

}  // namespace gankern_sim

// ---- CUDA intrinsics ----------------------------------------------------------------------------
GK_SIM_NO_TSAN inline void __syncthreads() {
  gankern_sim::Worker& w = gankern_sim::current_worker();
  gankern_sim::Thread& t = gankern_sim::current_thread();
  // Two anchors by parity: a fast thread already arriving at the next barrier must not hand
  // its post-barrier writes to a slow thread still leaving this one.
  const uint64_t gen = w.barrier_gen;
#if defined(GK_SIM_TSAN)
  __tsan_release(&w.sync_barrier[gen & 1]);
#endif
  t.barrier_gen = gen;
  t.state = gankern_sim::State::kBarrier;
  w.yield(t);
#if defined(GK_SIM_TSAN)
  __tsan_acquire(&w.sync_barrier[gen & 1]);
#endif
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  gankern_sim::enter_warp_op(gankern_sim::WarpOp::kSyncwarp, mask, 0);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = warpSize) {
  return gankern_sim::shuffle(gankern_sim::WarpOp::kShflIdx, mask, var, src, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return gankern_sim::shuffle(gankern_sim::WarpOp::kShflUp, mask, var, int(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return gankern_sim::shuffle(gankern_sim::WarpOp::kShflDown, mask, var, int(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return gankern_sim::shuffle(gankern_sim::WarpOp::kShflXor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return gankern_sim::vote(gankern_sim::WarpOp::kBallot, mask, pred != 0);
}
inline int __any_sync(unsigned mask, int pred) {
  return gankern_sim::vote(gankern_sim::WarpOp::kAny, mask, pred != 0) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  return gankern_sim::vote(gankern_sim::WarpOp::kAll, mask, pred != 0) == mask;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

// Atomics: real host atomics (a CAS loop for floating point), returning the old value.
template <typename T>
inline T atomicCAS(T* p, T compare, T value) {
  __atomic_compare_exchange_n(p, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <typename F, typename Bits>
inline F gk_sim_atomic_float(F* p, F v, F (*f)(F, F)) {
  Bits* b = reinterpret_cast<Bits*>(p);
  Bits old = __atomic_load_n(b, __ATOMIC_SEQ_CST), desired;
  do {
    F o, n;
    std::memcpy(&o, &old, sizeof(F));
    n = f(o, v);
    std::memcpy(&desired, &n, sizeof(F));
  } while (!__atomic_compare_exchange_n(b, &old, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  F o;
  std::memcpy(&o, &old, sizeof(F));
  return o;
}
inline float atomicAdd(float* p, float v) {
  return gk_sim_atomic_float<float, uint32_t>(p, v, [](float a, float b) { return a + b; });
}
inline double atomicAdd(double* p, double v) {
  return gk_sim_atomic_float<double, uint64_t>(p, v, [](double a, double b) { return a + b; });
}

// ---- runtime API -------------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() {
  gankern_sim::ErrorState& e = gankern_sim::errors();
  std::lock_guard<std::mutex> lock(e.mu);
  const cudaError_t code = e.last;
  e.last = cudaSuccess;
  return code;
}
inline cudaError_t cudaPeekAtLastError() {
  gankern_sim::ErrorState& e = gankern_sim::errors();
  std::lock_guard<std::mutex> lock(e.mu);
  return e.last;
}
inline const char* cudaGetErrorString(cudaError_t code) {
  switch (code) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: {
      // The message of the latest failed launch (a static copy outlives the error state).
      static thread_local std::string msg;
      gankern_sim::ErrorState& e = gankern_sim::errors();
      std::lock_guard<std::mutex> lock(e.mu);
      msg = e.message.empty() ? "unspecified launch failure" : e.message;
      return msg.c_str();
    }
  }
  return "unknown error";
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;  // no CUDA runtime: the host harness
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;  // no driver either
  return cudaSuccess;
}
// Every kernel "loads" here: the host has no fatbin to lack an image for.
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0, constSizeBytes = 0, localSizeBytes = 0;
  int maxThreadsPerBlock = int(gankern_sim::kMaxThreads), numRegs = 0, ptxVersion = 0, binaryVersion = 0;
};
template <typename F>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F*) {
  *attr = cudaFuncAttributes();
  return cudaSuccess;
}

namespace gankern {

// The harness's launch_kernel (gankern/launch.h): the parameters are copied once, as a GPU
// copies them to constant memory, and every CUDA thread calls the kernel with that copy.
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t, Args&&... args) {
  struct Closure {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  const Closure closure{kernel, std::tuple<std::decay_t<Params>...>(static_cast<Params>(args)...)};
  gankern_sim::run_grid(grid, block, smem, sizeof(closure.params),
                        [](const void* c) {
                          const Closure& cl = *static_cast<const Closure*>(c);
                          std::apply(cl.kernel, cl.params);
                        },
                        &closure);
}

}  // namespace gankern
