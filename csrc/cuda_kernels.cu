// CUDA implementations of the elbo_kernels ops (schemas in elbo_ops.cpp; per-element
// math in elbo_math.h, shared with the CPU kernels).
//
// Reductions are deterministic and atomic-free, in two stages:
//   1. one block per (row, chunk of kCudaChunk elements); each thread strides over
//      the chunk accumulating in acc_t (float, or double for float64 inputs), the
//      block combines its threads with warp shuffles and then its warps in warp
//      order (in double), and writes one partial per (row, chunk, column);
//   2. a small kernel sums each row's partials in chunk order.
// The assignment of elements to threads and every combination order are fixed,
// so results are bitwise reproducible run to run.
//
// Inputs are read in their dtype (fp16 / bf16 / fp32 / fp64) and converted to
// acc_t; outputs follow the Python references (sums / log_prob / prev_mean in
// acc dtype, gradients and x_t in the input dtype). 16-bit inputs are loaded one
// element (2 bytes) a thread; a warp still reads 64 contiguous bytes at a time.
// Wider vector loads are left until a GPU run measures whether they pay.
//
// Built with --fmad=false (elbo_kernels/ops/_cpp.py): no multiply-add is
// contracted, so the per-element arithmetic rounds as the CPU kernels
// (-ffp-contract=off) and torch eager do.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h, which pulls in
// cuBLAS / cuSPARSE headers), so this file also compiles against a CPU-only
// torch's headers with a bare CUDA toolkit (python -m elbo_kernels.ops._cpp
// --compile_cuda_only).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "elbo_math.h"
#include "elbo_ops.h"

namespace elbo {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
static_assert(kCudaChunk % kThreads == 0, "a chunk must split evenly over a block");

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t load(const T* p, int64_t i) {
  return static_cast<acc_t>(p[i]);
}

// Block-wide sum of kCols values per thread, in a fixed order; thread c < kCols
// writes column c to out[c]. Every thread of the block must call it.
template <int kCols>
__device__ __forceinline__ void block_sum_store(double (&vals)[kCols], double* out) {
  __shared__ double warp_sums[kWarps][kCols];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
#pragma unroll
    for (int delta = 16; delta > 0; delta >>= 1) vals[c] += __shfl_down_sync(0xffffffffu, vals[c], delta);
  }
  if (lane == 0) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) warp_sums[warp][c] = vals[c];
  }
  __syncthreads();
  if (threadIdx.x < kCols) {
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][threadIdx.x];
    out[threadIdx.x] = total;
  }
}

// Stage 2: out[row, c] = sum over chunks of partial[row, chunk, c], in chunk order.
template <typename out_t>
__global__ void combine_partials_kernel(const double* __restrict__ partial, int64_t n, int64_t chunks, int columns,
                                        out_t* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * columns) return;
  const int64_t row = idx / columns;
  const int c = static_cast<int>(idx % columns);
  double total = 0.0;
  for (int64_t ch = 0; ch < chunks; ++ch) total += partial[(row * chunks + ch) * columns + c];
  out[idx] = static_cast<out_t>(total);
}

int64_t blocks_for(int64_t work) {
  return (work + kThreads - 1) / kThreads;
}

void check_grid(const char* op, int64_t blocks) {
  TORCH_CHECK(blocks <= 0x7fffffffLL, op, ": input too large for one launch (", blocks, " blocks)");
}

// ---------------------------------------------------------------------------
// residual_sums
// ---------------------------------------------------------------------------

template <bool kOld, bool kRef, bool kNft, bool kPhilox, typename scalar_t, typename eps_t>
__global__ void __launch_bounds__(kThreads) residual_sums_kernel(
    const scalar_t* __restrict__ v, const scalar_t* __restrict__ x0, const eps_t* __restrict__ eps,
    const scalar_t* __restrict__ v_old, const scalar_t* __restrict__ v_ref, int64_t d, int64_t k, int64_t chunks,
    NftBlend<acc_of<scalar_t>> blend, uint64_t seed, uint64_t offset, double* __restrict__ partial) {
  using acc_t = acc_of<scalar_t>;
  const int64_t task = blockIdx.x;
  const int64_t row = task / chunks, start = (task % chunks) * kCudaChunk;
  const int64_t len = min(kCudaChunk, d - start), base = row * d + start;
  const scalar_t* x0_row = x0 + (row / k) * d + start;
  acc_t s[kNumSums];
#pragma unroll
  for (int c = 0; c < kNumSums; ++c) s[c] = acc_t(0);
  for (int64_t i = threadIdx.x; i < len; i += kThreads) {
    acc_t e;
    if constexpr (kPhilox) {
      e = static_cast<acc_t>(philox_normal(seed, offset + static_cast<uint64_t>(base + i)));
    } else {
      e = load<acc_t>(eps, base + i);
    }
    accumulate_residuals<kOld, kRef, kNft, acc_t>(
        s, load<acc_t>(v, base + i), load<acc_t>(x0_row, i), e, kOld ? load<acc_t>(v_old, base + i) : acc_t(0),
        kRef ? load<acc_t>(v_ref, base + i) : acc_t(0), blend);
  }
  double vals[kNumSums];
#pragma unroll
  for (int c = 0; c < kNumSums; ++c) vals[c] = static_cast<double>(s[c]);
  block_sum_store<kNumSums>(vals, partial + task * kNumSums);
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor residual_sums_cuda(const at::Tensor& v, const at::Tensor& x0, const c10::optional<at::Tensor>& noise,
                              const c10::optional<at::Tensor>& v_old, const c10::optional<at::Tensor>& v_ref,
                              double nft_beta, int64_t seed, int64_t offset) {
  const ResidualArgs a = prepare_residual_sums(v, x0, noise, v_old, v_ref, nft_beta, seed, offset, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(a.v.device());
  at::Tensor out = at::zeros({a.n, kNumSums}, a.v.options().dtype(a.acc));
  if (a.n == 0 || a.d == 0) return out;
  const int64_t chunks = num_chunks(a.d, kCudaChunk);
  check_grid("elbo_kernels::residual_sums", a.n * chunks);
  at::Tensor partial = at::empty({a.n * chunks * kNumSums}, a.v.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "residual_sums_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    dispatch_noise<scalar_t>(a.noise, [&](auto eps_tag, auto philox) {
      using eps_t = decltype(eps_tag);
      dispatch_presence(a.v_old.defined(), a.v_ref.defined(), a.nft, [&](auto old, auto ref, auto nft) {
        residual_sums_kernel<decltype(old)::value, decltype(ref)::value, decltype(nft)::value,
                             decltype(philox)::value, scalar_t, eps_t>
            <<<static_cast<unsigned>(a.n * chunks), kThreads, 0, stream>>>(
                a.v.data_ptr<scalar_t>(), a.x0.data_ptr<scalar_t>(),
                decltype(philox)::value ? nullptr : ptr_or_null<eps_t>(a.noise), ptr_or_null<scalar_t>(a.v_old),
                ptr_or_null<scalar_t>(a.v_ref), a.d, a.k, chunks, make_nft_blend<acc_t>(a.nft_beta), a.seed,
                a.offset, partial.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    combine_partials_kernel<acc_t><<<static_cast<unsigned>(blocks_for(a.n * kNumSums)), kThreads, 0, stream>>>(
        partial.data_ptr<double>(), a.n, chunks, kNumSums, out.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <bool kRef, bool kNft, bool kPhilox, typename scalar_t, typename eps_t>
__global__ void __launch_bounds__(kThreads) residual_backward_kernel(
    const acc_of<scalar_t>* __restrict__ grad_sums, const scalar_t* __restrict__ v, const scalar_t* __restrict__ x0,
    const eps_t* __restrict__ eps, const scalar_t* __restrict__ v_old, const scalar_t* __restrict__ v_ref, int64_t d,
    int64_t k, int64_t chunks, NftBlend<acc_of<scalar_t>> blend, uint64_t seed, uint64_t offset,
    scalar_t* __restrict__ grad) {
  using acc_t = acc_of<scalar_t>;
  const int64_t task = blockIdx.x;
  const int64_t row = task / chunks, start = (task % chunks) * kCudaChunk;
  const int64_t len = min(kCudaChunk, d - start), base = row * d + start;
  const scalar_t* x0_row = x0 + (row / k) * d + start;
  const auto coef = make_residual_grad_coef<acc_t>(grad_sums + row * kNumSums, blend.g);
  for (int64_t i = threadIdx.x; i < len; i += kThreads) {
    acc_t e;
    if constexpr (kPhilox) {
      e = static_cast<acc_t>(philox_normal(seed, offset + static_cast<uint64_t>(base + i)));
    } else {
      e = load<acc_t>(eps, base + i);
    }
    const acc_t g = residual_grad<kRef, kNft, acc_t>(
        coef, load<acc_t>(v, base + i), load<acc_t>(x0_row, i), e, kNft ? load<acc_t>(v_old, base + i) : acc_t(0),
        kRef ? load<acc_t>(v_ref, base + i) : acc_t(0), blend);
    grad[base + i] = static_cast<scalar_t>(g);
  }
}

at::Tensor residual_sums_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& v, const at::Tensor& x0,
                                       const c10::optional<at::Tensor>& noise,
                                       const c10::optional<at::Tensor>& v_old,
                                       const c10::optional<at::Tensor>& v_ref, double nft_beta, int64_t seed,
                                       int64_t offset) {
  const ResidualArgs a = prepare_residual_sums(v, x0, noise, v_old, v_ref, nft_beta, seed, offset, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(a.v.device());
  const at::Tensor gs = prepare_grad_sums(grad_sums, a);
  at::Tensor grad = at::empty(a.v.sizes(), a.v.options());
  if (a.n == 0 || a.d == 0) return grad;
  const int64_t chunks = num_chunks(a.d, kCudaChunk);
  check_grid("elbo_kernels::residual_sums_backward", a.n * chunks);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "residual_sums_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    dispatch_noise<scalar_t>(a.noise, [&](auto eps_tag, auto philox) {
      using eps_t = decltype(eps_tag);
      dispatch_presence(a.nft, a.v_ref.defined(), a.nft, [&](auto, auto ref, auto nft) {
        residual_backward_kernel<decltype(ref)::value, decltype(nft)::value, decltype(philox)::value, scalar_t,
                                 eps_t><<<static_cast<unsigned>(a.n * chunks), kThreads, 0, stream>>>(
            gs.data_ptr<acc_t>(), a.v.data_ptr<scalar_t>(), a.x0.data_ptr<scalar_t>(),
            decltype(philox)::value ? nullptr : ptr_or_null<eps_t>(a.noise),
            decltype(nft)::value ? ptr_or_null<scalar_t>(a.v_old) : nullptr, ptr_or_null<scalar_t>(a.v_ref), a.d,
            a.k, chunks, make_nft_blend<acc_t>(a.nft_beta), a.seed, a.offset, grad.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return grad;
}

// ---------------------------------------------------------------------------
// noising and generate_noise
// ---------------------------------------------------------------------------

template <bool kPhilox, typename scalar_t, typename eps_t>
__global__ void __launch_bounds__(kThreads) noising_kernel(
    const scalar_t* __restrict__ x0, const acc_of<scalar_t>* __restrict__ t, const eps_t* __restrict__ eps,
    int64_t d, int64_t k, int64_t chunks, uint64_t seed, uint64_t offset, scalar_t* __restrict__ out) {
  using acc_t = acc_of<scalar_t>;
  const int64_t task = blockIdx.x;
  const int64_t row = task / chunks, start = (task % chunks) * kCudaChunk;
  const int64_t len = min(kCudaChunk, d - start), base = row * d + start;
  const scalar_t* x0_row = x0 + (row / k) * d + start;
  const acc_t tr = t[row];
  for (int64_t i = threadIdx.x; i < len; i += kThreads) {
    acc_t e;
    if constexpr (kPhilox) {
      e = static_cast<acc_t>(philox_normal(seed, offset + static_cast<uint64_t>(base + i)));
    } else {
      e = load<acc_t>(eps, base + i);
    }
    out[base + i] = static_cast<scalar_t>(noised<acc_t>(tr, load<acc_t>(x0_row, i), e));
  }
}

at::Tensor noising_cuda(const at::Tensor& x0, const at::Tensor& t, const c10::optional<at::Tensor>& noise,
                        int64_t draws_per_sample, int64_t seed, int64_t offset) {
  const NoisingArgs a = prepare_noising(x0, t, noise, draws_per_sample, seed, offset, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(a.x0.device());
  std::vector<int64_t> shape(a.x0.sizes().begin(), a.x0.sizes().end());
  shape[0] = a.n;
  at::Tensor out = at::empty(shape, a.x0.options());
  if (a.n == 0 || a.d == 0) return out;
  const int64_t chunks = num_chunks(a.d, kCudaChunk);
  check_grid("elbo_kernels::noising", a.n * chunks);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x0.scalar_type(), "noising_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    dispatch_noise<scalar_t>(a.noise, [&](auto eps_tag, auto philox) {
      using eps_t = decltype(eps_tag);
      noising_kernel<decltype(philox)::value, scalar_t, eps_t>
          <<<static_cast<unsigned>(a.n * chunks), kThreads, 0, stream>>>(
              a.x0.data_ptr<scalar_t>(), a.t.data_ptr<acc_t>(),
              decltype(philox)::value ? nullptr : ptr_or_null<eps_t>(a.noise), a.d, a.k, chunks, a.seed, a.offset,
              out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

template <typename out_t>
__global__ void __launch_bounds__(kThreads) generate_noise_kernel(int64_t numel, uint64_t seed, uint64_t offset,
                                                                  out_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel; i += stride)
    out[i] = static_cast<out_t>(philox_normal(seed, offset + static_cast<uint64_t>(i)));
}

at::Tensor generate_noise_cuda(const at::Tensor& like, int64_t seed, int64_t offset) {
  const at::ScalarType dtype = prepare_generate_noise(like, c10::kCUDA);
  TORCH_CHECK(offset >= 0, "elbo_kernels::generate_noise: offset must be >= 0, got ", offset);
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor out = at::empty(like.sizes(), like.options().dtype(dtype));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const int64_t blocks = std::min<int64_t>(blocks_for(numel), 65535 * 8);
  AT_DISPATCH_FLOATING_TYPES(dtype, "generate_noise_cuda", [&] {
    generate_noise_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        numel, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---------------------------------------------------------------------------
// sde_step
// ---------------------------------------------------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sde_forward_kernel(
    const scalar_t* __restrict__ v, const scalar_t* __restrict__ x, const scalar_t* __restrict__ x_prev,
    const acc_of<scalar_t>* __restrict__ coef, int64_t d, int64_t chunks, acc_of<scalar_t>* __restrict__ mean,
    double* __restrict__ partial) {
  using acc_t = acc_of<scalar_t>;
  const int64_t task = blockIdx.x;
  const int64_t row = task / chunks, start = (task % chunks) * kCudaChunk;
  const int64_t len = min(kCudaChunk, d - start), base = row * d + start;
  const acc_t a_x = coef[row * kNumCoef + kAx], a_v = coef[row * kNumCoef + kAv];
  acc_t s = acc_t(0);
  for (int64_t i = threadIdx.x; i < len; i += kThreads) {
    const acc_t mu = sde_mean<acc_t>(a_x, a_v, load<acc_t>(x, base + i), load<acc_t>(v, base + i));
    mean[base + i] = mu;
    const acc_t diff = load<acc_t>(x_prev, base + i) - mu;
    s += diff * diff;
  }
  double vals[1] = {static_cast<double>(s)};
  block_sum_store<1>(vals, partial + task);
}

template <typename acc_t>
__global__ void sde_log_prob_kernel(const double* __restrict__ partial, const acc_t* __restrict__ coef, int64_t n,
                                    int64_t chunks, int64_t d, acc_t* __restrict__ log_prob) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  double total = 0.0;
  for (int64_t ch = 0; ch < chunks; ++ch) total += partial[row * chunks + ch];
  log_prob[row] = sde_log_prob<acc_t>(coef[row * kNumCoef + kC], coef[row * kNumCoef + kW], total, d);
}

std::tuple<at::Tensor, at::Tensor> sde_step_cuda(const at::Tensor& v, const at::Tensor& x, const at::Tensor& x_prev,
                                                 const at::Tensor& coef) {
  const SdeArgs a = prepare_sde_step(v, x, x_prev, coef, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(a.v.device());
  at::Tensor log_prob = at::empty({a.n}, a.v.options().dtype(a.acc));
  at::Tensor mean = at::empty(a.v.sizes(), a.v.options().dtype(a.acc));
  if (a.n == 0) return {log_prob, mean};
  const int64_t chunks = num_chunks(a.d, kCudaChunk);
  check_grid("elbo_kernels::sde_step", a.n * chunks);
  at::Tensor partial = at::zeros({a.n * chunks}, a.v.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "sde_step_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    if (a.d > 0) {
      sde_forward_kernel<scalar_t><<<static_cast<unsigned>(a.n * chunks), kThreads, 0, stream>>>(
          a.v.data_ptr<scalar_t>(), a.x.data_ptr<scalar_t>(), a.x_prev.data_ptr<scalar_t>(), a.coef.data_ptr<acc_t>(),
          a.d, chunks, mean.data_ptr<acc_t>(), partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    sde_log_prob_kernel<acc_t><<<static_cast<unsigned>(blocks_for(a.n)), kThreads, 0, stream>>>(
        partial.data_ptr<double>(), a.coef.data_ptr<acc_t>(), a.n, chunks, std::max<int64_t>(a.d, 1),
        log_prob.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {log_prob, mean};
}

template <bool kMeanGrad, typename scalar_t>
__global__ void __launch_bounds__(kThreads) sde_backward_kernel(
    const acc_of<scalar_t>* __restrict__ grad_log_prob, const acc_of<scalar_t>* __restrict__ grad_mean,
    const scalar_t* __restrict__ v, const scalar_t* __restrict__ x, const scalar_t* __restrict__ x_prev,
    const acc_of<scalar_t>* __restrict__ coef, int64_t d, int64_t chunks, scalar_t* __restrict__ grad) {
  using acc_t = acc_of<scalar_t>;
  const int64_t task = blockIdx.x;
  const int64_t row = task / chunks, start = (task % chunks) * kCudaChunk;
  const int64_t len = min(kCudaChunk, d - start), base = row * d + start;
  const acc_t a_x = coef[row * kNumCoef + kAx], a_v = coef[row * kNumCoef + kAv];
  const acc_t q = sde_grad_factor<acc_t>(grad_log_prob[row], coef[row * kNumCoef + kW], d);
  for (int64_t i = threadIdx.x; i < len; i += kThreads) {
    const acc_t mu = sde_mean<acc_t>(a_x, a_v, load<acc_t>(x, base + i), load<acc_t>(v, base + i));
    const acc_t g_mean = kMeanGrad ? grad_mean[base + i] : acc_t(0);
    grad[base + i] = static_cast<scalar_t>(sde_grad<acc_t>(a_v, q, load<acc_t>(x_prev, base + i), mu, g_mean));
  }
}

at::Tensor sde_step_backward_cuda(const at::Tensor& grad_log_prob, const c10::optional<at::Tensor>& grad_prev_mean,
                                  const at::Tensor& v, const at::Tensor& x, const at::Tensor& x_prev,
                                  const at::Tensor& coef) {
  const SdeArgs a = prepare_sde_step(v, x, x_prev, coef, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(a.v.device());
  const auto grads = prepare_sde_grads(grad_log_prob, grad_prev_mean, a);
  at::Tensor grad = at::empty(a.v.sizes(), a.v.options());
  if (a.n == 0 || a.d == 0) return grad;
  const int64_t chunks = num_chunks(a.d, kCudaChunk);
  check_grid("elbo_kernels::sde_step_backward", a.n * chunks);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "sde_step_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const acc_t* gm = ptr_or_null<acc_t>(grads.second);
    auto launch = [&](auto with_mean_grad) {
      sde_backward_kernel<decltype(with_mean_grad)::value, scalar_t>
          <<<static_cast<unsigned>(a.n * chunks), kThreads, 0, stream>>>(
              grads.first.data_ptr<acc_t>(), gm, a.v.data_ptr<scalar_t>(), a.x.data_ptr<scalar_t>(),
              a.x_prev.data_ptr<scalar_t>(), a.coef.data_ptr<acc_t>(), a.d, chunks, grad.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    gm ? launch(std::true_type{}) : launch(std::false_type{});
  });
  return grad;
}

}  // namespace
}  // namespace elbo

TORCH_LIBRARY_IMPL(elbo_kernels, CUDA, m) {
  m.impl("residual_sums", &elbo::residual_sums_cuda);
  m.impl("residual_sums_backward", &elbo::residual_sums_backward_cuda);
  m.impl("noising", &elbo::noising_cuda);
  m.impl("generate_noise", &elbo::generate_noise_cuda);
  m.impl("sde_step", &elbo::sde_step_cuda);
  m.impl("sde_step_backward", &elbo::sde_step_backward_cuda);
}
