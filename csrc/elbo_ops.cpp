// Op schemas (TORCH_LIBRARY) and the argument checks every implementation runs.
//
// The schemas are the contract the Python callers in elbo_kernels/ops/*.py use;
// device kernels live in cpu_kernels.cpp and cuda_kernels.cu and are registered
// there with TORCH_LIBRARY_IMPL. Autograd and fake (meta) implementations are
// registered from Python, beside each op in elbo_kernels/ops/<op>.py.
#include "elbo_ops.h"

#include "elbo_math.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <sstream>

namespace elbo {
namespace {

std::string describe(const at::Tensor& x) {
  std::ostringstream out;
  out << "shape " << x.sizes() << ", dtype " << x.scalar_type() << ", device " << x.device();
  return out.str();
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// The tensor every other argument is compared with.
void check_primary(const char* op, const char* name, const at::Tensor& x, c10::DeviceType device) {
  TORCH_CHECK(x.defined(), op, ": ", name, " must be a tensor, got an undefined tensor");
  TORCH_CHECK(x.dim() >= 1, op, ": ", name, " must have at least 1 dimension [N, *S], got ", describe(x));
  TORCH_CHECK(is_supported_float(x.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", describe(x));
  TORCH_CHECK(x.device().type() == device, op, ": ", name, " must be on a ", c10::DeviceTypeName(device),
              " device for this implementation, got ", describe(x));
}

void check_device(const char* op, const char* name, const at::Tensor& x, const at::Tensor& ref,
                  const char* ref_name) {
  TORCH_CHECK(x.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", describe(x));
}

// Same shape, dtype and device as `ref`.
void check_like(const char* op, const char* name, const at::Tensor& x, const at::Tensor& ref,
                const char* ref_name) {
  check_device(op, name, x, ref, ref_name);
  TORCH_CHECK(x.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ",
              ref.sizes(), ", got ", describe(x));
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", describe(x));
}

// Noise may be stored in the inputs' dtype or in the accumulation dtype (what
// generate_noise returns), e.g. float32 eps for bfloat16 v.
void check_noise(const char* op, const at::Tensor& noise, const at::Tensor& ref, const char* ref_name,
                 at::IntArrayRef shape) {
  check_device(op, "noise", noise, ref, ref_name);
  TORCH_CHECK(noise.sizes() == shape, op, ": noise must have shape ", shape, ", got ", describe(noise));
  const auto acc = acc_type(ref.scalar_type());
  TORCH_CHECK(noise.scalar_type() == ref.scalar_type() || noise.scalar_type() == acc, op,
              ": noise must have the dtype of ", ref_name, " (", ref.scalar_type(), ") or ", acc, ", got ",
              describe(noise));
}

// x0 is [B, *S] with the latent shape S of the [N, *S] tensor and N = B * K.
int64_t check_x0(const char* op, const at::Tensor& x0, const at::Tensor& v, const char* v_name) {
  TORCH_CHECK(x0.defined(), op, ": x0 must be a tensor, got an undefined tensor");
  check_device(op, "x0", x0, v, v_name);
  TORCH_CHECK(x0.scalar_type() == v.scalar_type(), op, ": x0 must have the dtype of ", v_name, " (",
              v.scalar_type(), "), got ", describe(x0));
  TORCH_CHECK(x0.dim() == v.dim() && x0.sizes().slice(1) == v.sizes().slice(1), op,
              ": x0 must be [B, *S] with the latent shape S of ", v_name, " ", v.sizes().slice(1), ", got ",
              describe(x0));
  const int64_t b = x0.size(0), n = v.size(0);
  TORCH_CHECK(b >= 1 && n % b == 0, op, ": x0 has ", b, " rows but ", v_name, " has ", n,
              ": N must be a multiple of B (N = B * K draws, the K draws of a sample consecutive)");
  return n / b;
}

// D of the flat [N, D] view (well defined also for N == 0).
int64_t row_numel(const at::Tensor& x) {
  int64_t d = 1;
  for (int64_t i = 1; i < x.dim(); ++i) d *= x.size(i);
  return d;
}

uint64_t check_offset(const char* op, int64_t offset) {
  TORCH_CHECK(offset >= 0, op, ": offset must be >= 0 (the Philox counter of element 0), got ", offset);
  return static_cast<uint64_t>(offset);
}

}  // namespace

ResidualArgs prepare_residual_sums(
    const at::Tensor& v, const at::Tensor& x0, const c10::optional<at::Tensor>& noise,
    const c10::optional<at::Tensor>& v_old, const c10::optional<at::Tensor>& v_ref, double nft_beta,
    int64_t seed, int64_t offset, c10::DeviceType device) {
  constexpr const char* op = "elbo_kernels::residual_sums";
  check_primary(op, "v", v, device);
  ResidualArgs a;
  a.k = check_x0(op, x0, v, "v");
  if (noise.has_value() && noise->defined()) {
    check_noise(op, *noise, v, "v", v.sizes());
    a.noise = noise->contiguous();
  }
  if (v_old.has_value() && v_old->defined()) {
    check_like(op, "v_old", *v_old, v, "v");
    a.v_old = v_old->contiguous();
  }
  if (v_ref.has_value() && v_ref->defined()) {
    check_like(op, "v_ref", *v_ref, v, "v");
    a.v_ref = v_ref->contiguous();
  }
  TORCH_CHECK(std::isfinite(nft_beta), op, ": nft_beta must be finite, got ", nft_beta);
  a.v = v.contiguous();
  a.x0 = x0.contiguous();
  a.n = v.size(0);
  a.d = row_numel(v);
  a.nft_beta = nft_beta;
  a.nft = nft_beta > 0 && a.v_old.defined();
  a.seed = static_cast<uint64_t>(seed);
  a.offset = check_offset(op, offset);
  a.acc = acc_type(v.scalar_type());
  return a;
}

at::Tensor prepare_grad_sums(const at::Tensor& grad_sums, const ResidualArgs& a) {
  constexpr const char* op = "elbo_kernels::residual_sums_backward";
  TORCH_CHECK(grad_sums.defined(), op, ": grad_sums must be a tensor, got an undefined tensor");
  check_device(op, "grad_sums", grad_sums, a.v, "v");
  TORCH_CHECK(grad_sums.dim() == 2 && grad_sums.size(0) == a.n && grad_sums.size(1) == kNumSums,
              op, ": grad_sums must be [N, 11] = [", a.n, ", 11], got ", describe(grad_sums));
  TORCH_CHECK(at::isFloatingType(grad_sums.scalar_type()), op, ": grad_sums must be floating, got ",
              describe(grad_sums));
  return grad_sums.to(a.acc).contiguous();
}

NoisingArgs prepare_noising(
    const at::Tensor& x0, const at::Tensor& t, const c10::optional<at::Tensor>& noise,
    int64_t draws_per_sample, int64_t seed, int64_t offset, c10::DeviceType device) {
  constexpr const char* op = "elbo_kernels::noising";
  check_primary(op, "x0", x0, device);
  TORCH_CHECK(draws_per_sample >= 1, op, ": draws_per_sample must be >= 1, got ", draws_per_sample);
  NoisingArgs a;
  a.k = draws_per_sample;
  a.n = x0.size(0) * draws_per_sample;
  a.d = row_numel(x0);
  a.acc = acc_type(x0.scalar_type());
  TORCH_CHECK(t.defined(), op, ": t must be a tensor, got an undefined tensor");
  check_device(op, "t", t, x0, "x0");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == a.n, op, ": t must be [N] = [", a.n,
              "] (x0.shape[0] * draws_per_sample), got ", describe(t));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": t must be floating, got ", describe(t));
  if (noise.has_value() && noise->defined()) {
    std::vector<int64_t> shape(x0.sizes().begin(), x0.sizes().end());
    shape[0] = a.n;
    check_noise(op, *noise, x0, "x0", shape);
    a.noise = noise->contiguous();
  }
  a.x0 = x0.contiguous();
  a.t = t.to(a.acc).contiguous();
  a.seed = static_cast<uint64_t>(seed);
  a.offset = check_offset(op, offset);
  return a;
}

at::ScalarType prepare_generate_noise(const at::Tensor& like, c10::DeviceType device) {
  constexpr const char* op = "elbo_kernels::generate_noise";
  TORCH_CHECK(like.defined(), op, ": like must be a tensor, got an undefined tensor");
  TORCH_CHECK(like.device().type() == device, op, ": like must be on a ", c10::DeviceTypeName(device),
              " device for this implementation, got ", describe(like));
  return acc_type(like.scalar_type());
}

SdeArgs prepare_sde_step(
    const at::Tensor& v, const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& coef,
    c10::DeviceType device) {
  constexpr const char* op = "elbo_kernels::sde_step";
  check_primary(op, "v", v, device);
  check_like(op, "x", x, v, "v");
  check_like(op, "x_prev", x_prev, v, "v");
  SdeArgs a;
  a.n = v.size(0);
  a.d = row_numel(v);
  a.acc = acc_type(v.scalar_type());
  TORCH_CHECK(coef.defined(), op, ": coef must be a tensor, got an undefined tensor");
  check_device(op, "coef", coef, v, "v");
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == a.n && coef.size(1) == kNumCoef, op,
              ": coef must be [N, 4] = [", a.n, ", 4] (a_x, a_v, w, c per row), got ", describe(coef));
  TORCH_CHECK(at::isFloatingType(coef.scalar_type()), op, ": coef must be floating, got ", describe(coef));
  a.v = v.contiguous();
  a.x = x.contiguous();
  a.x_prev = x_prev.contiguous();
  a.coef = coef.to(a.acc).contiguous();
  return a;
}

std::pair<at::Tensor, at::Tensor> prepare_sde_grads(
    const at::Tensor& grad_log_prob, const c10::optional<at::Tensor>& grad_prev_mean, const SdeArgs& a) {
  constexpr const char* op = "elbo_kernels::sde_step_backward";
  TORCH_CHECK(grad_log_prob.defined(), op, ": grad_log_prob must be a tensor, got an undefined tensor");
  check_device(op, "grad_log_prob", grad_log_prob, a.v, "v");
  TORCH_CHECK(grad_log_prob.dim() == 1 && grad_log_prob.size(0) == a.n, op, ": grad_log_prob must be [N] = [",
              a.n, "], got ", describe(grad_log_prob));
  TORCH_CHECK(at::isFloatingType(grad_log_prob.scalar_type()), op, ": grad_log_prob must be floating, got ",
              describe(grad_log_prob));
  at::Tensor gm;
  if (grad_prev_mean.has_value() && grad_prev_mean->defined()) {
    check_device(op, "grad_prev_mean", *grad_prev_mean, a.v, "v");
    TORCH_CHECK(grad_prev_mean->sizes() == a.v.sizes(), op, ": grad_prev_mean must have the shape of v ",
                a.v.sizes(), ", got ", describe(*grad_prev_mean));
    TORCH_CHECK(at::isFloatingType(grad_prev_mean->scalar_type()), op, ": grad_prev_mean must be floating, got ",
                describe(*grad_prev_mean));
    gm = grad_prev_mean->to(a.acc).contiguous();
  }
  return {grad_log_prob.to(a.acc).contiguous(), gm};
}

}  // namespace elbo

TORCH_LIBRARY(elbo_kernels, m) {
  m.def(
      "residual_sums(Tensor v, Tensor x0, Tensor? noise, Tensor? v_old, Tensor? v_ref, float nft_beta, "
      "int seed, int offset) -> Tensor");
  m.def(
      "residual_sums_backward(Tensor grad_sums, Tensor v, Tensor x0, Tensor? noise, Tensor? v_old, "
      "Tensor? v_ref, float nft_beta, int seed, int offset) -> Tensor");
  m.def("noising(Tensor x0, Tensor t, Tensor? noise, int draws_per_sample, int seed, int offset) -> Tensor");
  m.def("generate_noise(Tensor like, int seed, int offset) -> Tensor");
  m.def("sde_step(Tensor v, Tensor x, Tensor x_prev, Tensor coef) -> (Tensor, Tensor)");
  m.def(
      "sde_step_backward(Tensor grad_log_prob, Tensor? grad_prev_mean, Tensor v, Tensor x, Tensor x_prev, "
      "Tensor coef) -> Tensor");
}

// generate_noise depends only on like's shape and device, never on its values:
// autograd falls through, so the noise never requires grad (no warning, no graph).
TORCH_LIBRARY_IMPL(elbo_kernels, Autograd, m) {
  m.impl("generate_noise", torch::CppFunction::makeFallthrough());
}
