// CPU implementations of the elbo_kernels ops (schemas in elbo_ops.cpp).
//
// The kernel bodies (cpu_kernels_impl.h) are compiled once per instruction
// set: a portable baseline (the compiler's default target: SSE2 on x86-64,
// NEON on aarch64) and, on x86-64 with GCC or Clang, AVX2 and AVX-512 copies
// under `#pragma GCC target`. The copy is chosen per call from the running
// CPU (cpuid), so the JIT cache is portable and no -march flag is needed. All
// copies give bitwise identical results (same lane layout, no FMA
// contraction). ELBO_KERNELS_CPU_ISA=baseline|avx2|avx512 caps the choice
// (used by the tests; an unsupported request falls back to the best supported).
//
// This file also holds the op entry points: each runs the shared argument
// checks (elbo_ops.cpp), allocates outputs, calls the kernel and, for
// reductions, combines the per-chunk partial sums in fixed chunk order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "elbo_math.h"
#include "elbo_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ELBO_X86_MULTI_ISA 1
#else
#define ELBO_X86_MULTI_ISA 0
#endif

namespace elbo {

namespace cpu_baseline {
#include "cpu_kernels_impl.h"
}  // namespace cpu_baseline

#if ELBO_X86_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2")
namespace cpu_avx2 {
#include "cpu_kernels_impl.h"
}  // namespace cpu_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")
namespace cpu_avx512 {
#include "cpu_kernels_impl.h"
}  // namespace cpu_avx512
#pragma GCC pop_options
#endif

namespace {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

Isa supported_isa() {
#if ELBO_X86_MULTI_ISA
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
    return Isa::kBaseline;
  }();
  return best;
#else
  return Isa::kBaseline;
#endif
}

// The best supported ISA, capped by ELBO_KERNELS_CPU_ISA when set.
Isa active_isa() {
  Isa isa = supported_isa();
  if (const char* cap = std::getenv("ELBO_KERNELS_CPU_ISA")) {
    Isa wanted = isa;
    if (std::strcmp(cap, "baseline") == 0) wanted = Isa::kBaseline;
    if (std::strcmp(cap, "avx2") == 0) wanted = Isa::kAvx2;
    if (std::strcmp(cap, "avx512") == 0) wanted = Isa::kAvx512;
    isa = std::min(isa, wanted);
  }
  return isa;
}

#if ELBO_X86_MULTI_ISA
#define ELBO_CPU_CALL(fn, ...)                                  \
  do {                                                          \
    switch (active_isa()) {                                     \
      case Isa::kAvx512: cpu_avx512::fn(__VA_ARGS__); break;    \
      case Isa::kAvx2: cpu_avx2::fn(__VA_ARGS__); break;        \
      default: cpu_baseline::fn(__VA_ARGS__); break;            \
    }                                                           \
  } while (0)
#else
#define ELBO_CPU_CALL(fn, ...) cpu_baseline::fn(__VA_ARGS__)
#endif

// Sum each row's chunk partials in chunk order into out[row * columns + c].
template <typename acc_t>
void combine_partials(const std::vector<double>& partial, int64_t n, int64_t chunks, int columns, acc_t* out) {
  for (int64_t row = 0; row < n; ++row)
    for (int c = 0; c < columns; ++c) {
      double total = 0.0;
      for (int64_t ch = 0; ch < chunks; ++ch) total += partial[(row * chunks + ch) * columns + c];
      out[row * columns + c] = static_cast<acc_t>(total);
    }
}

at::Tensor residual_sums_cpu(const at::Tensor& v, const at::Tensor& x0, const c10::optional<at::Tensor>& noise,
                             const c10::optional<at::Tensor>& v_old, const c10::optional<at::Tensor>& v_ref,
                             double nft_beta, int64_t seed, int64_t offset) {
  const ResidualArgs a = prepare_residual_sums(v, x0, noise, v_old, v_ref, nft_beta, seed, offset, c10::kCPU);
  at::Tensor out = at::empty({a.n, kNumSums}, a.v.options().dtype(a.acc));
  if (a.n == 0) return out;
  const int64_t chunks = num_chunks(a.d, kCpuChunk);
  std::vector<double> partial(static_cast<size_t>(a.n * chunks * kNumSums), 0.0);
  if (a.d > 0) ELBO_CPU_CALL(residual_sums_kernel, a, partial.data());
  if (a.acc == at::kDouble) {
    combine_partials<double>(partial, a.n, chunks, kNumSums, out.data_ptr<double>());
  } else {
    combine_partials<float>(partial, a.n, chunks, kNumSums, out.data_ptr<float>());
  }
  return out;
}

at::Tensor residual_sums_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& v, const at::Tensor& x0,
                                      const c10::optional<at::Tensor>& noise,
                                      const c10::optional<at::Tensor>& v_old,
                                      const c10::optional<at::Tensor>& v_ref, double nft_beta, int64_t seed,
                                      int64_t offset) {
  const ResidualArgs a = prepare_residual_sums(v, x0, noise, v_old, v_ref, nft_beta, seed, offset, c10::kCPU);
  const at::Tensor gs = prepare_grad_sums(grad_sums, a);
  at::Tensor grad = at::empty(a.v.sizes(), a.v.options());
  if (a.n > 0 && a.d > 0) ELBO_CPU_CALL(residual_backward_kernel, a, gs, grad);
  return grad;
}

at::Tensor noising_cpu(const at::Tensor& x0, const at::Tensor& t, const c10::optional<at::Tensor>& noise,
                       int64_t draws_per_sample, int64_t seed, int64_t offset) {
  const NoisingArgs a = prepare_noising(x0, t, noise, draws_per_sample, seed, offset, c10::kCPU);
  std::vector<int64_t> shape(a.x0.sizes().begin(), a.x0.sizes().end());
  shape[0] = a.n;
  at::Tensor out = at::empty(shape, a.x0.options());
  if (a.n > 0 && a.d > 0) ELBO_CPU_CALL(noising_kernel, a, out);
  return out;
}

at::Tensor generate_noise_cpu(const at::Tensor& like, int64_t seed, int64_t offset) {
  const at::ScalarType dtype = prepare_generate_noise(like, c10::kCPU);
  TORCH_CHECK(offset >= 0, "elbo_kernels::generate_noise: offset must be >= 0, got ", offset);
  at::Tensor out = at::empty(like.sizes(), like.options().dtype(dtype));
  if (out.numel() > 0)
    ELBO_CPU_CALL(generate_noise_kernel, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> sde_step_cpu(const at::Tensor& v, const at::Tensor& x, const at::Tensor& x_prev,
                                                const at::Tensor& coef) {
  const SdeArgs a = prepare_sde_step(v, x, x_prev, coef, c10::kCPU);
  at::Tensor log_prob = at::empty({a.n}, a.v.options().dtype(a.acc));
  at::Tensor mean = at::empty(a.v.sizes(), a.v.options().dtype(a.acc));
  if (a.n == 0) return {log_prob, mean};
  const int64_t chunks = num_chunks(a.d, kCpuChunk);
  std::vector<double> partial(static_cast<size_t>(a.n * chunks), 0.0);
  if (a.d > 0) ELBO_CPU_CALL(sde_forward_kernel, a, mean, partial.data());
  std::vector<double> row_sums(static_cast<size_t>(a.n));
  combine_partials<double>(partial, a.n, chunks, 1, row_sums.data());
  const int64_t d = std::max<int64_t>(a.d, 1);
  AT_DISPATCH_FLOATING_TYPES(a.acc, "sde_step_log_prob", [&] {
    const scalar_t* c = a.coef.data_ptr<scalar_t>();
    scalar_t* lp = log_prob.data_ptr<scalar_t>();
    for (int64_t row = 0; row < a.n; ++row)
      lp[row] = sde_log_prob<scalar_t>(c[row * kNumCoef + kC], c[row * kNumCoef + kW], row_sums[row], d);
  });
  return {log_prob, mean};
}

at::Tensor sde_step_backward_cpu(const at::Tensor& grad_log_prob, const c10::optional<at::Tensor>& grad_prev_mean,
                                 const at::Tensor& v, const at::Tensor& x, const at::Tensor& x_prev,
                                 const at::Tensor& coef) {
  const SdeArgs a = prepare_sde_step(v, x, x_prev, coef, c10::kCPU);
  const auto grads = prepare_sde_grads(grad_log_prob, grad_prev_mean, a);
  at::Tensor grad = at::empty(a.v.sizes(), a.v.options());
  if (a.n > 0 && a.d > 0) ELBO_CPU_CALL(sde_backward_kernel, a, grads.first, grads.second, grad);
  return grad;
}

}  // namespace
}  // namespace elbo

TORCH_LIBRARY_IMPL(elbo_kernels, CPU, m) {
  m.impl("residual_sums", &elbo::residual_sums_cpu);
  m.impl("residual_sums_backward", &elbo::residual_sums_backward_cpu);
  m.impl("noising", &elbo::noising_cpu);
  m.impl("generate_noise", &elbo::generate_noise_cpu);
  m.impl("sde_step", &elbo::sde_step_cpu);
  m.impl("sde_step_backward", &elbo::sde_step_backward_cpu);
}
