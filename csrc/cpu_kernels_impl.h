// CPU kernel bodies, compiled once per instruction set by cpu_kernels.cpp.
//
// This file is included several times, each time inside a different
// namespace and `#pragma GCC target` region (baseline x86-64 / aarch64, AVX2,
// AVX-512), so it has no include guard and includes nothing itself: every
// header it needs is included by cpu_kernels.cpp before the first region.
//
// Work split: the flat [N, D] view is cut into tasks (row, chunk) of at most
// kCpuChunk elements; at::parallel_for hands contiguous runs of tasks to the
// intra-op threads. Reductions write one partial per task and combine the
// partials of a row in chunk order afterwards, so the result does not depend on
// the number of threads (no atomics, no per-thread accumulators).
//
// Precision: elements are read in their dtype and converted to acc_t = acc_of<scalar_t>
// (elbo_ops.h: float for 16/32-bit inputs, double for float64). Within a chunk, element i accumulates
// into lane i % kLanes in acc_t; lanes and chunks are then summed in double, so
// a float lane sums at most kCpuChunk / kLanes = 128 terms.
//
// Vectorisation: the lane loops have a fixed trip count and independent
// accumulators, which the compiler turns into SIMD code without -ffast-math.
// kLanes is the same for every instruction set and multiply-adds are never
// fused (-ffp-contract=off), so every instruction set gives bitwise the same
// result.

constexpr int kLanes = 16;

// Tasks per parallel_for grain: below ~32k elements of work, one thread is faster.
inline int64_t grain_tasks(int64_t d) {
  const int64_t per_task = std::max<int64_t>(1, std::min(d, kCpuChunk));
  return std::max<int64_t>(1, 32768 / per_task);
}

template <typename acc_t, typename T>
inline acc_t load(const T* p, int64_t i) {
  return static_cast<acc_t>(p[i]);
}

// One lane's view of the [kNumSums][kLanes] accumulator block, indexable by Sum.
template <typename acc_t>
struct LaneRef {
  acc_t (*sums)[kLanes];
  int lane;
  acc_t& operator[](int column) { return sums[column][lane]; }
};

template <typename acc_t>
inline void zero_lanes(acc_t (*sums)[kLanes], int columns) {
  for (int c = 0; c < columns; ++c)
    for (int j = 0; j < kLanes; ++j) sums[c][j] = acc_t(0);
}

// Fixed-order lane combination, in double.
template <typename acc_t>
inline void fold_lanes(const acc_t (*sums)[kLanes], int columns, double* out) {
  for (int c = 0; c < columns; ++c) {
    double total = 0.0;
    for (int j = 0; j < kLanes; ++j) total += static_cast<double>(sums[c][j]);
    out[c] = total;
  }
}

template <typename acc_t>
inline void fill_normals(acc_t* buf, uint64_t seed, uint64_t counter, int64_t len) {
  for (int64_t i = 0; i < len; ++i)
    buf[i] = static_cast<acc_t>(philox_normal(seed, counter + static_cast<uint64_t>(i)));
}

// ---------------------------------------------------------------------------
// residual_sums
// ---------------------------------------------------------------------------

// Sums of one (row, chunk): `len` elements starting at each pointer.
template <bool kOld, bool kRef, bool kNft, typename scalar_t, typename eps_t, typename acc_t>
inline void residual_chunk(const scalar_t* v, const scalar_t* x0, const eps_t* eps, const scalar_t* v_old,
                           const scalar_t* v_ref, int64_t len, const NftBlend<acc_t>& blend, double* out) {
  acc_t sums[kNumSums][kLanes];
  zero_lanes(sums, kNumSums);
  auto element = [&](int64_t i, int lane) {
    LaneRef<acc_t> s{sums, lane};
    accumulate_residuals<kOld, kRef, kNft, acc_t>(
        s, load<acc_t>(v, i), load<acc_t>(x0, i), load<acc_t>(eps, i),
        kOld ? load<acc_t>(v_old, i) : acc_t(0), kRef ? load<acc_t>(v_ref, i) : acc_t(0), blend);
  };
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) element(i + j, j);
  for (int j = 0; i < len; ++i, ++j) element(i, j);
  fold_lanes<acc_t>(sums, kNumSums, out);
}

template <bool kOld, bool kRef, bool kNft, bool kPhilox, typename scalar_t, typename eps_t>
void residual_sums_tasks(const ResidualArgs& a, double* partial) {
  using acc_t = acc_of<scalar_t>;
  const int64_t d = a.d, chunks = num_chunks(d, kCpuChunk);
  const scalar_t* v = a.v.data_ptr<scalar_t>();
  const scalar_t* x0 = a.x0.data_ptr<scalar_t>();
  const eps_t* eps = kPhilox ? nullptr : a.noise.data_ptr<eps_t>();
  const scalar_t* v_old = kOld ? a.v_old.data_ptr<scalar_t>() : nullptr;
  const scalar_t* v_ref = kRef ? a.v_ref.data_ptr<scalar_t>() : nullptr;
  const auto blend = make_nft_blend<acc_t>(a.nft_beta);
  at::parallel_for(0, a.n * chunks, grain_tasks(d), [&](int64_t begin, int64_t end) {
    acc_t buf[kPhilox ? kCpuChunk : 1];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks, start = (task % chunks) * kCpuChunk;
      const int64_t len = std::min(kCpuChunk, d - start), base = row * d + start;
      const scalar_t* x0_row = x0 + (row / a.k) * d + start;
      const scalar_t* vo = kOld ? v_old + base : nullptr;
      const scalar_t* vr = kRef ? v_ref + base : nullptr;
      double* out = partial + task * kNumSums;
      if constexpr (kPhilox) {
        fill_normals(buf, a.seed, a.offset + static_cast<uint64_t>(base), len);
        residual_chunk<kOld, kRef, kNft>(v + base, x0_row, static_cast<const acc_t*>(buf), vo, vr, len, blend, out);
      } else {
        residual_chunk<kOld, kRef, kNft>(v + base, x0_row, eps + base, vo, vr, len, blend, out);
      }
    }
  });
}

// Fills partial[(row * chunks + chunk) * kNumSums + column]; absent columns stay 0.
void residual_sums_kernel(const ResidualArgs& a, double* partial) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "residual_sums_cpu", [&] {
    dispatch_noise<scalar_t>(a.noise, [&](auto eps_tag, auto philox) {
      using eps_t = decltype(eps_tag);
      dispatch_presence(a.v_old.defined(), a.v_ref.defined(), a.nft, [&](auto old, auto ref, auto nft) {
        residual_sums_tasks<decltype(old)::value, decltype(ref)::value, decltype(nft)::value,
                            decltype(philox)::value, scalar_t, eps_t>(a, partial);
      });
    });
  });
}

template <bool kRef, bool kNft, bool kPhilox, typename scalar_t, typename eps_t>
void residual_backward_tasks(const ResidualArgs& a, const at::Tensor& grad_sums, at::Tensor& grad) {
  using acc_t = acc_of<scalar_t>;
  const int64_t d = a.d, chunks = num_chunks(d, kCpuChunk);
  const scalar_t* v = a.v.data_ptr<scalar_t>();
  const scalar_t* x0 = a.x0.data_ptr<scalar_t>();
  const eps_t* eps = kPhilox ? nullptr : a.noise.data_ptr<eps_t>();
  const scalar_t* v_old = kNft ? a.v_old.data_ptr<scalar_t>() : nullptr;
  const scalar_t* v_ref = kRef ? a.v_ref.data_ptr<scalar_t>() : nullptr;
  const acc_t* gs = grad_sums.data_ptr<acc_t>();
  scalar_t* out = grad.data_ptr<scalar_t>();
  const auto blend = make_nft_blend<acc_t>(a.nft_beta);
  at::parallel_for(0, a.n * chunks, grain_tasks(d), [&](int64_t begin, int64_t end) {
    acc_t buf[kPhilox ? kCpuChunk : 1];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks, start = (task % chunks) * kCpuChunk;
      const int64_t len = std::min(kCpuChunk, d - start), base = row * d + start;
      const scalar_t* x0_row = x0 + (row / a.k) * d + start;
      const scalar_t* vb = v + base;
      const scalar_t* vo = kNft ? v_old + base : nullptr;
      const scalar_t* vr = kRef ? v_ref + base : nullptr;
      scalar_t* o = out + base;
      const auto coef = make_residual_grad_coef<acc_t>(gs + row * kNumSums, blend.g);
      auto run = [&](const auto* e) {
        for (int64_t i = 0; i < len; ++i) {
          const acc_t g = residual_grad<kRef, kNft, acc_t>(
              coef, load<acc_t>(vb, i), load<acc_t>(x0_row, i), load<acc_t>(e, i),
              kNft ? load<acc_t>(vo, i) : acc_t(0), kRef ? load<acc_t>(vr, i) : acc_t(0), blend);
          o[i] = static_cast<scalar_t>(g);
        }
      };
      if constexpr (kPhilox) {
        fill_normals(buf, a.seed, a.offset + static_cast<uint64_t>(base), len);
        run(static_cast<const acc_t*>(buf));
      } else {
        run(eps + base);
      }
    }
  });
}

void residual_backward_kernel(const ResidualArgs& a, const at::Tensor& grad_sums, at::Tensor& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "residual_sums_backward_cpu", [&] {
    dispatch_noise<scalar_t>(a.noise, [&](auto eps_tag, auto philox) {
      using eps_t = decltype(eps_tag);
      dispatch_presence(a.nft, a.v_ref.defined(), a.nft, [&](auto, auto ref, auto nft) {
        residual_backward_tasks<decltype(ref)::value, decltype(nft)::value, decltype(philox)::value, scalar_t,
                                eps_t>(a, grad_sums, grad);
      });
    });
  });
}

// ---------------------------------------------------------------------------
// noising and generate_noise
// ---------------------------------------------------------------------------

template <bool kPhilox, typename scalar_t, typename eps_t>
void noising_tasks(const NoisingArgs& a, at::Tensor& out) {
  using acc_t = acc_of<scalar_t>;
  const int64_t d = a.d, chunks = num_chunks(d, kCpuChunk);
  const scalar_t* x0 = a.x0.data_ptr<scalar_t>();
  const acc_t* t = a.t.data_ptr<acc_t>();
  const eps_t* eps = kPhilox ? nullptr : a.noise.data_ptr<eps_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, a.n * chunks, grain_tasks(d), [&](int64_t begin, int64_t end) {
    acc_t buf[kPhilox ? kCpuChunk : 1];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks, start = (task % chunks) * kCpuChunk;
      const int64_t len = std::min(kCpuChunk, d - start), base = row * d + start;
      const scalar_t* x0_row = x0 + (row / a.k) * d + start;
      scalar_t* ob = o + base;
      const acc_t tr = t[row];
      auto run = [&](const auto* e) {
        for (int64_t i = 0; i < len; ++i)
          ob[i] = static_cast<scalar_t>(noised<acc_t>(tr, load<acc_t>(x0_row, i), load<acc_t>(e, i)));
      };
      if constexpr (kPhilox) {
        fill_normals(buf, a.seed, a.offset + static_cast<uint64_t>(base), len);
        run(static_cast<const acc_t*>(buf));
      } else {
        run(eps + base);
      }
    }
  });
}

void noising_kernel(const NoisingArgs& a, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x0.scalar_type(), "noising_cpu", [&] {
    dispatch_noise<scalar_t>(a.noise, [&](auto eps_tag, auto philox) {
      noising_tasks<decltype(philox)::value, scalar_t, decltype(eps_tag)>(a, out);
    });
  });
}

void generate_noise_kernel(uint64_t seed, uint64_t offset, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "generate_noise_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        o[i] = static_cast<scalar_t>(philox_normal(seed, offset + static_cast<uint64_t>(i)));
    });
  });
}

// ---------------------------------------------------------------------------
// sde_step
// ---------------------------------------------------------------------------

template <typename scalar_t>
void sde_forward_tasks(const SdeArgs& a, at::Tensor& mean, double* partial) {
  using acc_t = acc_of<scalar_t>;
  const int64_t d = a.d, chunks = num_chunks(d, kCpuChunk);
  const scalar_t* v = a.v.data_ptr<scalar_t>();
  const scalar_t* x = a.x.data_ptr<scalar_t>();
  const scalar_t* xp = a.x_prev.data_ptr<scalar_t>();
  const acc_t* coef = a.coef.data_ptr<acc_t>();
  acc_t* m = mean.data_ptr<acc_t>();
  at::parallel_for(0, a.n * chunks, grain_tasks(d), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks, start = (task % chunks) * kCpuChunk;
      const int64_t len = std::min(kCpuChunk, d - start), base = row * d + start;
      const acc_t a_x = coef[row * kNumCoef + kAx], a_v = coef[row * kNumCoef + kAv];
      const scalar_t* xb = x + base;
      const scalar_t* vb = v + base;
      const scalar_t* xpb = xp + base;
      acc_t* mb = m + base;
      acc_t sums[1][kLanes];
      zero_lanes(sums, 1);
      auto element = [&](int64_t i, int lane) {
        const acc_t mu = sde_mean<acc_t>(a_x, a_v, load<acc_t>(xb, i), load<acc_t>(vb, i));
        mb[i] = mu;
        const acc_t diff = load<acc_t>(xpb, i) - mu;
        sums[0][lane] += diff * diff;
      };
      int64_t i = 0;
      for (; i + kLanes <= len; i += kLanes)
        for (int j = 0; j < kLanes; ++j) element(i + j, j);
      for (int j = 0; i < len; ++i, ++j) element(i, j);
      fold_lanes<acc_t>(sums, 1, partial + task);
    }
  });
}

// Writes prev_mean and partial[row * chunks + chunk] = chunk's sum of (x_prev - mean)^2.
void sde_forward_kernel(const SdeArgs& a, at::Tensor& mean, double* partial) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "sde_step_cpu",
                                  [&] { sde_forward_tasks<scalar_t>(a, mean, partial); });
}

template <bool kMeanGrad, typename scalar_t>
void sde_backward_tasks(const SdeArgs& a, const at::Tensor& grad_log_prob, const at::Tensor& grad_mean,
                        at::Tensor& grad) {
  using acc_t = acc_of<scalar_t>;
  const int64_t d = a.d, chunks = num_chunks(d, kCpuChunk);
  const scalar_t* v = a.v.data_ptr<scalar_t>();
  const scalar_t* x = a.x.data_ptr<scalar_t>();
  const scalar_t* xp = a.x_prev.data_ptr<scalar_t>();
  const acc_t* c = a.coef.data_ptr<acc_t>();
  const acc_t* glp = grad_log_prob.data_ptr<acc_t>();
  const acc_t* gm = kMeanGrad ? grad_mean.data_ptr<acc_t>() : nullptr;
  scalar_t* o = grad.data_ptr<scalar_t>();
  at::parallel_for(0, a.n * chunks, grain_tasks(d), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks, start = (task % chunks) * kCpuChunk;
      const int64_t len = std::min(kCpuChunk, d - start), base = row * d + start;
      const acc_t a_x = c[row * kNumCoef + kAx], a_v = c[row * kNumCoef + kAv];
      const acc_t q = sde_grad_factor<acc_t>(glp[row], c[row * kNumCoef + kW], d);
      const scalar_t* xb = x + base;
      const scalar_t* vb = v + base;
      const scalar_t* xpb = xp + base;
      const acc_t* gmb = kMeanGrad ? gm + base : nullptr;
      scalar_t* ob = o + base;
      for (int64_t i = 0; i < len; ++i) {
        const acc_t mu = sde_mean<acc_t>(a_x, a_v, load<acc_t>(xb, i), load<acc_t>(vb, i));
        const acc_t g_mean = kMeanGrad ? gmb[i] : acc_t(0);
        ob[i] = static_cast<scalar_t>(sde_grad<acc_t>(a_v, q, load<acc_t>(xpb, i), mu, g_mean));
      }
    }
  });
}

void sde_backward_kernel(const SdeArgs& a, const at::Tensor& grad_log_prob, const at::Tensor& grad_mean,
                         at::Tensor& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.v.scalar_type(), "sde_step_backward_cpu", [&] {
    if (grad_mean.defined()) {
      sde_backward_tasks<true, scalar_t>(a, grad_log_prob, grad_mean, grad);
    } else {
      sde_backward_tasks<false, scalar_t>(a, grad_log_prob, grad_mean, grad);
    }
  });
}
