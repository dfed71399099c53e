// Per-element math shared by the C++ (cpu_kernels.cpp) and CUDA (cuda_kernels.cu)
// kernels: the counter-based normal generator, the residual updates of the
// residual-sums op and its gradient, noising and the Gaussian SDE step.
//
// Everything here is scalar, header-only and free of torch types, so one
// definition serves both compilers; the kernels only decide how elements are
// distributed and how partial sums are combined.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define ELBO_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
// always_inline: these are inlined into the per-ISA kernel copies of
// cpu_kernels.cpp (a callee built for the baseline target may be inlined
// into an AVX2 / AVX-512 caller), so each copy vectorises them.
#define ELBO_HD inline __attribute__((always_inline))
#else
#define ELBO_HD inline
#endif

namespace elbo {

// Columns of the residual-sums output, in the order of
// elbo_kernels/ops/residual_sums.py SUM_NAMES.
enum Sum : int { S1 = 0, S2, O1, O2, K2, R1, R2, P1, P2, M1, M2, kNumSums };

// Columns of sde_step's per-row coefficients (ops/sde_step.py COEF_NAMES).
enum Coef : int { kAx = 0, kAv, kW, kC, kNumCoef };

// ---------------------------------------------------------------------------
// Counter-based normals, bit-compatible with triton.language.randn (triton 3.9,
// triton/language/random.py): element with counter c under key `seed` is
//   Philox4x32-10 on (c0, c1, c2, c3) = (lo32(c), hi32(c), 0, 0),
//                    (k0, k1)         = (lo32(seed), hi32(seed)),
//   u1, u2 = uint_to_uniform_float(c0_out), uint_to_uniform_float(c1_out),
//   eps    = sqrt(-2 log(max(1e-7, u1))) * cos(2 pi u2)          (all float32).
// The uniforms match Triton bit for bit; the normal matches to the few ulp by
// which libm / libdevice log and cos differ.
// ---------------------------------------------------------------------------

ELBO_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

struct Philox4x32 {
  uint32_t c0, c1, c2, c3;
};

ELBO_HD Philox4x32 philox4x32_10(uint64_t counter, uint64_t seed) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  uint32_t c0 = static_cast<uint32_t>(counter);
  uint32_t c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t old_c0 = c0, old_c2 = c2;
    c0 = mulhi32(kRoundB, old_c2) ^ c1 ^ k0;
    c2 = mulhi32(kRoundA, old_c0) ^ c3 ^ k1;
    c1 = kRoundB * old_c2;
    c3 = kRoundA * old_c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float for 32-bit inputs: reinterpret as int32, fold
// negatives with bitwise not, convert to float32 (round to nearest) and scale by
// the largest float below 2^-31 that keeps the result < 1.
ELBO_HD float uint_to_uniform_float(uint32_t bits) {
  int32_t x = static_cast<int32_t>(bits);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// Box-Muller, first output only (Triton's pair_uniform_to_normal).
ELBO_HD float pair_uniform_to_normal(float u1, float u2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float theta = 6.283185307179586f * u2;
  const float radius = sqrtf(-2.0f * logf(u1));
  return radius * cosf(theta);
}

// eps for flat element index i of a NoiseSeed(seed, offset): tl.randn(seed, offset + i).
ELBO_HD float philox_normal(uint64_t seed, uint64_t counter) {
  const Philox4x32 out = philox4x32_10(counter, seed);
  return pair_uniform_to_normal(uint_to_uniform_float(out.c0), uint_to_uniform_float(out.c1));
}

// ---------------------------------------------------------------------------
// Residual sums (ops/residual_sums.py). One element contributes to up to 11
// running sums; `acc_t` is float for 16/32-bit inputs and double for float64.
// ---------------------------------------------------------------------------

// fabs, not `x < 0 ? -x : x`: one sign-bit mask instead of compare + negate + blend.
ELBO_HD float absolute(float x) {
  return fabsf(x);
}
ELBO_HD double absolute(double x) {
  return fabs(x);
}

// Per-row scalars of the DiffusionNFT blend, precomputed once per launch.
template <typename acc_t>
struct NftBlend {
  acc_t g, one_minus_g, one_plus_g;
};

template <typename acc_t>
ELBO_HD NftBlend<acc_t> make_nft_blend(double beta) {
  return {static_cast<acc_t>(beta), static_cast<acc_t>(1.0 - beta), static_cast<acc_t>(1.0 + beta)};
}

// r+ = g r + (1 - g) r_old   (residual of v+ = g v + (1 - g) v_old)
template <typename acc_t>
ELBO_HD acc_t nft_plus(const NftBlend<acc_t>& b, acc_t r, acc_t r_old) {
  return b.g * r + b.one_minus_g * r_old;
}

// r- = (1 + g) r_old - g r   (residual of v- = (1 + g) v_old - g v)
template <typename acc_t>
ELBO_HD acc_t nft_minus(const NftBlend<acc_t>& b, acc_t r, acc_t r_old) {
  return b.one_plus_g * r_old - b.g * r;
}

// Adds one element's contributions to `s` (indexed by Sum). The presence flags
// are compile-time so absent tensors cost neither loads nor arithmetic.
template <bool kOld, bool kRef, bool kNft, typename acc_t, typename Sums>
ELBO_HD void accumulate_residuals(
    Sums& s, acc_t v, acc_t x0, acc_t eps, acc_t v_old, acc_t v_ref, const NftBlend<acc_t>& blend) {
  const acc_t u = eps - x0;
  const acc_t r = u - v;
  s[S1] += absolute(r);
  s[S2] += r * r;
  if (kOld) {
    const acc_t r_old = u - v_old;
    s[O1] += absolute(r_old);
    s[O2] += r_old * r_old;
    if (kNft) {
      const acc_t rp = nft_plus(blend, r, r_old);
      const acc_t rm = nft_minus(blend, r, r_old);
      s[P1] += absolute(rp);
      s[P2] += rp * rp;
      s[M1] += absolute(rm);
      s[M2] += rm * rm;
    }
  }
  if (kRef) {
    const acc_t k = v - v_ref;
    s[K2] += k * k;
    const acc_t r_ref = u - v_ref;
    s[R1] += absolute(r_ref);
    s[R2] += r_ref * r_ref;
  }
}

// Per-row gradient coefficients: dL/dv = a r + k (v - v_ref) + p r+ + m r-, with
// a = -2 gS2, k = 2 gK2, p = -2 g gP2, m = 2 g gM2.
template <typename acc_t>
struct ResidualGradCoef {
  acc_t a, k, p, m;
};

template <typename acc_t>
ELBO_HD ResidualGradCoef<acc_t> make_residual_grad_coef(const acc_t* grad_row, acc_t g) {
  return {acc_t(-2) * grad_row[S2], acc_t(2) * grad_row[K2], acc_t(-2) * g * grad_row[P2],
          acc_t(2) * g * grad_row[M2]};
}

template <bool kRef, bool kNft, typename acc_t>
ELBO_HD acc_t residual_grad(
    const ResidualGradCoef<acc_t>& c, acc_t v, acc_t x0, acc_t eps, acc_t v_old, acc_t v_ref,
    const NftBlend<acc_t>& blend) {
  const acc_t u = eps - x0;
  const acc_t r = u - v;
  acc_t grad = c.a * r;
  if (kRef) grad += c.k * (v - v_ref);
  if (kNft) {
    const acc_t r_old = u - v_old;
    grad += c.p * nft_plus(blend, r, r_old) + c.m * nft_minus(blend, r, r_old);
  }
  return grad;
}

// ---------------------------------------------------------------------------
// Noising (ops/noising.py): x_t = (1 - t) x0 + t eps.
// ---------------------------------------------------------------------------

template <typename acc_t>
ELBO_HD acc_t noised(acc_t t, acc_t x0, acc_t eps) {
  return (acc_t(1) - t) * x0 + t * eps;
}

// ---------------------------------------------------------------------------
// Gaussian SDE step (ops/sde_step.py): prev_mean = a_x x + a_v v,
// log_prob = c - w mean_D (x_prev - prev_mean)^2,
// dL/dv = a_v (g_mean + g_logp 2 w (x_prev - prev_mean) / D).
// ---------------------------------------------------------------------------

template <typename acc_t>
ELBO_HD acc_t sde_mean(acc_t a_x, acc_t a_v, acc_t x, acc_t v) {
  return a_x * x + a_v * v;
}

template <typename acc_t>
ELBO_HD acc_t sde_log_prob(acc_t c, acc_t w, double sum_sq, int64_t d) {
  return c - w * static_cast<acc_t>(sum_sq / static_cast<double>(d));
}

// Per-row factor q = g_logp 2 w / D of the backward.
template <typename acc_t>
ELBO_HD acc_t sde_grad_factor(acc_t grad_log_prob, acc_t w, int64_t d) {
  return grad_log_prob * acc_t(2) * w / static_cast<acc_t>(d);
}

template <typename acc_t>
ELBO_HD acc_t sde_grad(acc_t a_v, acc_t q, acc_t x_prev, acc_t mean, acc_t grad_mean) {
  return a_v * (q * (x_prev - mean) + grad_mean);
}

// Host side, shared by the CPU and CUDA launchers: calls
// f(std::bool_constant<old>, <ref>, <nft>) with compile-time presence flags of the
// optional inputs (v_old, v_ref, the nft blends); nft implies old.
template <typename F>
inline void dispatch_presence(bool old, bool ref, bool nft, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if (nft) {
    ref ? f(T{}, T{}, T{}) : f(T{}, N{}, T{});
  } else if (old) {
    ref ? f(T{}, T{}, N{}) : f(T{}, N{}, N{});
  } else {
    ref ? f(N{}, T{}, N{}) : f(N{}, N{}, N{});
  }
}

}  // namespace elbo
