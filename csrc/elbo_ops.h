// Argument checking and preparation shared by the CPU and CUDA implementations.
//
// Every op's device implementation starts by calling its prepare_* function
// (elbo_ops.cpp): it checks arguments with TORCH_CHECK messages that name the
// argument and the expected shape / dtype / device, and returns contiguous
// tensors plus the flat [N, D] geometry. Non-contiguous inputs are copied once
// by .contiguous() there, so kernels index plain row-major memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <type_traits>

namespace elbo {

// Rows per kernel work item: a row of D elements is split into chunks of at
// most this many elements. The split depends only on D, never on the thread
// count, so partial sums and their fixed-order combination are bitwise
// reproducible, and a row's sums do not depend on the other rows of the batch.
// CUDA: one 256-thread block per chunk. 8192 gave only 64 blocks for the
// smallest SD3 batch (N = 8, D = 16 x 64 x 64 = 65536) on a 132-SM H100, so
// most SMs idled; 2048 gives 256 blocks there, 8 elements a thread.
constexpr int64_t kCpuChunk = 2048;
constexpr int64_t kCudaChunk = 2048;

struct ResidualArgs {
  at::Tensor v, x0, noise, v_old, v_ref;  // contiguous; noise/v_old/v_ref may be undefined
  int64_t n = 0, d = 0, k = 1;             // rows, elements per row, draws per x0 row
  double nft_beta = 0.0;
  bool nft = false;                        // nft_beta > 0 and v_old given
  uint64_t seed = 0, offset = 0;           // used when noise is undefined
  at::ScalarType acc = at::kFloat;         // sums dtype: float64 for float64 inputs else float32
};

ResidualArgs prepare_residual_sums(
    const at::Tensor& v, const at::Tensor& x0, const c10::optional<at::Tensor>& noise,
    const c10::optional<at::Tensor>& v_old, const c10::optional<at::Tensor>& v_ref, double nft_beta,
    int64_t seed, int64_t offset, c10::DeviceType device);

// grad_sums is returned contiguous [N, 11] in args.acc.
at::Tensor prepare_grad_sums(const at::Tensor& grad_sums, const ResidualArgs& args);

struct NoisingArgs {
  at::Tensor x0, t, noise;  // contiguous; t in acc dtype; noise may be undefined
  int64_t n = 0, d = 0, k = 1;
  uint64_t seed = 0, offset = 0;
  at::ScalarType acc = at::kFloat;
};

NoisingArgs prepare_noising(
    const at::Tensor& x0, const at::Tensor& t, const c10::optional<at::Tensor>& noise,
    int64_t draws_per_sample, int64_t seed, int64_t offset, c10::DeviceType device);

// Checks `like` for generate_noise; returns the output dtype.
at::ScalarType prepare_generate_noise(const at::Tensor& like, c10::DeviceType device);

struct SdeArgs {
  at::Tensor v, x, x_prev, coef;  // contiguous; coef [N, 4] in acc dtype
  int64_t n = 0, d = 0;
  at::ScalarType acc = at::kFloat;
};

SdeArgs prepare_sde_step(
    const at::Tensor& v, const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& coef,
    c10::DeviceType device);

// Returns (grad_log_prob [N], grad_prev_mean [N, D] or undefined), contiguous, in acc dtype.
std::pair<at::Tensor, at::Tensor> prepare_sde_grads(
    const at::Tensor& grad_log_prob, const c10::optional<at::Tensor>& grad_prev_mean, const SdeArgs& args);

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The accumulation type of an element type: double for double, float for
// float / half / bfloat16 (the rule of elbo_kernels/ops/_base.py accumulation_dtype).
template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Calls f(eps_t{}, std::bool_constant<philox>{}) for the three noise sources of
// the CPU and CUDA kernels: a tensor in the inputs' dtype, a tensor in the
// accumulation dtype, or none (eps regenerated from (seed, offset) with Philox).
template <typename scalar_t, typename F>
inline void dispatch_noise(const at::Tensor& noise, F&& f) {
  using acc_t = acc_of<scalar_t>;
  if (!noise.defined()) {
    f(acc_t{}, std::true_type{});
  } else if (noise.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value) {
    f(scalar_t{}, std::false_type{});
  } else {
    if constexpr (!std::is_same_v<scalar_t, acc_t>) f(acc_t{}, std::false_type{});
  }
}

inline int64_t num_chunks(int64_t d, int64_t chunk) {
  return d == 0 ? 1 : (d + chunk - 1) / chunk;
}

}  // namespace elbo
