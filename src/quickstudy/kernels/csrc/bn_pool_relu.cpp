// Fused training-mode batch norm -> 2x2 max-pool (stride 2) -> ReLU for channels-last float32 or bfloat16 CPU
// tensors, the tail of a Conv4 block, for graphs that are differentiated once (see models/fused_block.py).
// bfloat16 (the convolution outputs under autocast): x, out, grad_out and grad_x are bfloat16, the weight,
// bias and statistics float32, and all arithmetic is in float, as torch's own bfloat16 batch norm; the
// output equals rounding the float result once (rounding is monotone, so it commutes with max and ReLU).
//
// Forward, per channel c over the M = N*H*W values: mean, biased var, s = 1/sqrt(var + eps),
// y = x * (w s) + (b - mean w s), out = relu(max over each 2x2 window of y). y is never stored.
// Backward, given g = dL/dout: gy = g at the window's first maximum where out > 0, else 0;
//   gb = sum gy,  gw = s (sum gy x - mean gb),  gx = w s gy + k2 x + k3,
//   k2 = -w s^2 gw / M,  k3 = -w s gb / M - k2 mean,
// the batch-norm gradient through the batch statistics (as the native kernel). Only x, the statistics and
// the output are kept between forward and backward: not y (the pool's input) nor the pool's int64 indices.
// Per-image partial sums in double, added in image order: the results do not depend on the thread count.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

// Element storage: float as is, bfloat16 as its 16 bits. Branch-free conversions so that loops over the
// channels vectorise; the store rounds to nearest even and keeps NaN a (quiet) NaN, as c10::BFloat16.
using bf16 = uint16_t;

inline float load(float v) { return v; }
inline float load(bf16 v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
inline T store(float v);
template <>
inline float store<float>(float v) { return v; }
template <>
inline bf16 store<bf16>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<bf16>(v != v ? 0x7FC0u : rounded);
}

template <typename T>
const T* data(const Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }
template <typename T>
T* mutable_data(Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

void check_input(const Tensor& x, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == dtype, name, ": expected a ", dtype, " CPU tensor, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              ": expected a 4-d channels_last tensor");
}

void check_vector(const Tensor& v, int64_t channels, const char* name) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.dim() == 1 && v.size(0) == channels &&
                  v.is_contiguous(),
              name, ": expected a contiguous float32 CPU vector of ", channels, " values");
}

template <typename T>
void accumulate_moments(const T* __restrict__ x, const double* __restrict__ shift, double* __restrict__ sum,
                        double* __restrict__ squares, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const double d = static_cast<double>(load(x[c])) - shift[c];
    sum[c] += d;
    squares[c] += d * d;
  }
}

// One 2x2 window, all channels: relu of the maximum of y = x * scale + shift (NaN wins, as torch's max-pool).
template <typename T>
void window_forward(const T* __restrict__ x0, const T* __restrict__ x1, const T* __restrict__ x2,
                    const T* __restrict__ x3, const float* __restrict__ scale, const float* __restrict__ shift,
                    T* __restrict__ out, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    float m = load(x0[c]) * scale[c] + shift[c];
    const float y1 = load(x1[c]) * scale[c] + shift[c], y2 = load(x2[c]) * scale[c] + shift[c],
                y3 = load(x3[c]) * scale[c] + shift[c];
    m = (y1 > m || y1 != y1) ? y1 : m;
    m = (y2 > m || y2 != y2) ? y2 : m;
    m = (y3 > m || y3 != y3) ? y3 : m;
    out[c] = store<T>((m > 0.0f || m != m) ? m : 0.0f);
  }
}

// y = x * scale + shift, in float as torch's batch-norm kernel; the backward recomputes y bit for bit
void affine_of(const float* weight, const float* bias, const float* mean, const float* invstd, int64_t channels,
               float* scale, float* shift) {
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = invstd[c] * weight[c];
    shift[c] = bias[c] - mean[c] * scale[c];
  }
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_impl(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                        double eps) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  TORCH_CHECK(N > 0 && H > 0 && W > 0, "bn_pool_relu_forward: empty input");
  check_vector(weight, C, "bn_pool_relu_forward weight");
  check_vector(bias, C, "bn_pool_relu_forward bias");
  const T* xp = data<T>(x);
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const int64_t pixels = H * W;
  std::vector<double> first(C);  // the shift of the sums
  for (int64_t c = 0; c < C; ++c) first[c] = load(xp[c]);

  // statistics: shifted sums (by the first value of each channel) in double, one partial per image
  std::vector<double> sums(N * C, 0.0), squares(N * C, 0.0);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      double* s = sums.data() + n * C;
      double* q = squares.data() + n * C;
      const T* image = xp + n * pixels * C;
      for (int64_t p = 0; p < pixels; ++p) {
        accumulate_moments(image + p * C, first.data(), s, q, C);
      }
    }
  });
  Tensor mean = at::empty({C}, weight.options());
  Tensor var = at::empty({C}, mean.options());
  Tensor invstd = at::empty({C}, mean.options());
  std::vector<float> scale(C), shift(C);
  const double count = static_cast<double>(N * pixels);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0, q = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      s += sums[n * C + c];
      q += squares[n * C + c];
    }
    const double shifted_mean = s / count;
    const double v = std::max(q / count - shifted_mean * shifted_mean, 0.0);
    const double m = first[c] + shifted_mean;
    mean.data_ptr<float>()[c] = static_cast<float>(m);
    var.data_ptr<float>()[c] = static_cast<float>(v);
    invstd.data_ptr<float>()[c] = static_cast<float>(1.0 / std::sqrt(v + eps));
  }
  affine_of(wp, bp, mean.data_ptr<float>(), invstd.data_ptr<float>(), C, scale.data(), shift.data());

  Tensor out = at::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  T* op = mutable_data<T>(out);
  const float* sc = scale.data();
  const float* sh = shift.data();
  at::parallel_for(0, N * Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / Ho, ho = row % Ho;
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const T* p0 = xp + ((n * H + 2 * ho) * W + 2 * wo) * C;
        const T* p1 = p0 + C;
        const T* p2 = p0 + W * C;
        const T* p3 = p2 + C;
        window_forward(p0, p1, p2, p3, sc, sh, op + (row * Wo + wo) * C, C);
      }
    }
  });
  return {out, mean, var, invstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                   double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "bn_pool_relu_forward: expected float32 or bfloat16, got ", x.scalar_type());
  check_input(x, "bn_pool_relu_forward", x.scalar_type());
  return x.scalar_type() == at::kFloat ? forward_impl<float>(x, weight, bias, eps)
                                       : forward_impl<bf16>(x, weight, bias, eps);
}

// One 2x2 window, all channels: where the gradient goes (0-3, 4-7: none) and its sums; branch-free so that
// the compiler vectorises over the channels.
template <typename T>
void window_gradient(const T* __restrict__ x0p, const T* __restrict__ x1p, const T* __restrict__ x2p,
                     const T* __restrict__ x3p, const float* __restrict__ scale, const float* __restrict__ shift,
                     const T* __restrict__ out, const T* __restrict__ grad, uint8_t* __restrict__ where,
                     float* __restrict__ sum_g, float* __restrict__ sum_gx, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const float x0 = load(x0p[c]), x1 = load(x1p[c]), x2 = load(x2p[c]), x3 = load(x3p[c]);
    const float y1 = x1 * scale[c] + shift[c], y2 = x2 * scale[c] + shift[c], y3 = x3 * scale[c] + shift[c];
    float m = x0 * scale[c] + shift[c], xk = x0;
    int32_t k = 0;
    const bool t1 = (y1 > m || y1 != y1);
    m = t1 ? y1 : m;
    xk = t1 ? x1 : xk;
    k = t1 ? 1 : k;
    const bool t2 = (y2 > m || y2 != y2);
    m = t2 ? y2 : m;
    xk = t2 ? x2 : xk;
    k = t2 ? 2 : k;
    const bool t3 = (y3 > m || y3 != y3);
    xk = t3 ? x3 : xk;
    k = t3 ? 3 : k;
    const bool passes = !(load(out[c]) <= 0.0f);  // ReLU's gradient, as torch's threshold_backward
    const float incoming = load(grad[c]);  // loaded unconditionally: a conditional load blocks vectorisation
    const float g = passes ? incoming : 0.0f;
    sum_g[c] += g;
    sum_gx[c] += g * xk;
    // 4-7 (k | 4): no gradient; a bit-or, not a select, which keeps this loop vectorised for bfloat16 too
    where[c] = static_cast<uint8_t>(k | (static_cast<int32_t>(!passes) << 2));
  }
}

// One 2x2 window, all channels: gx = k2 x + k3 (+ k1 g where the gradient goes), for window position j.
template <typename T>
void window_input_gradient(const T* __restrict__ x, const float* __restrict__ k1, const float* __restrict__ k2,
                           const float* __restrict__ k3, const T* __restrict__ grad,
                           const uint8_t* __restrict__ where, int j, T* __restrict__ grad_x, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const float routed = k1[c] * load(grad[c]);  // unconditionally, and -fno-trapping-math: else not vectorised
    grad_x[c] = store<T>(k2[c] * load(x[c]) + k3[c] + (where[c] == j ? routed : 0.0f));
  }
}

template <typename T>
void affine_rows(const T* __restrict__ x, const float* __restrict__ k2, const float* __restrict__ k3,
                 T* __restrict__ grad_x, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) grad_x[c] = store<T>(k2[c] * load(x[c]) + k3[c]);
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> backward_impl(const Tensor& grad_out, const Tensor& x, const Tensor& out,
                                                 const Tensor& weight, const Tensor& bias, const Tensor& mean,
                                                 const Tensor& invstd) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Ho = H / 2, Wo = W / 2;
  TORCH_CHECK(out.sizes() == grad_out.sizes() && out.size(0) == N && out.size(1) == C && out.size(2) == Ho &&
                  out.size(3) == Wo,
              "bn_pool_relu_backward: shapes do not match");
  check_vector(weight, C, "bn_pool_relu_backward weight");
  check_vector(bias, C, "bn_pool_relu_backward bias");
  check_vector(mean, C, "bn_pool_relu_backward mean");
  check_vector(invstd, C, "bn_pool_relu_backward invstd");
  const T* xp = data<T>(x);
  const T* op = data<T>(out);
  const T* gp = data<T>(grad_out);
  const float* wp = weight.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();
  std::vector<float> scale(C), shift(C);
  affine_of(wp, bias.data_ptr<float>(), mp, ip, C, scale.data(), shift.data());
  const float* sc = scale.data();
  const float* sh = shift.data();

  // pass 1: the window position each gradient goes to (4-7: none), and the sums of gy and gy * x; branch-free
  // over the channels so that the compiler vectorises it; per-image sums in float, across images in double
  Tensor where = at::empty({N, Ho, Wo, C}, x.options().dtype(at::kByte).memory_format(at::MemoryFormat::Contiguous));
  uint8_t* wh = where.data_ptr<uint8_t>();
  std::vector<double> sum_g(N * C, 0.0), sum_gx(N * C, 0.0);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> image_g(C), image_gx(C);
    float* sg = image_g.data();
    float* sgx = image_gx.data();
    for (int64_t n = begin; n < end; ++n) {
      std::fill(image_g.begin(), image_g.end(), 0.0f);
      std::fill(image_gx.begin(), image_gx.end(), 0.0f);
      for (int64_t ho = 0; ho < Ho; ++ho) {
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const T* p0 = xp + ((n * H + 2 * ho) * W + 2 * wo) * C;
          const T* p1 = p0 + C;
          const T* p2 = p0 + W * C;
          const T* p3 = p2 + C;
          const int64_t o = ((n * Ho + ho) * Wo + wo) * C;
          window_gradient(p0, p1, p2, p3, sc, sh, op + o, gp + o, wh + o, sg, sgx, C);
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        sum_g[n * C + c] = sg[c];
        sum_gx[n * C + c] = sgx[c];
      }
    }
  });
  Tensor grad_weight = at::empty({C}, weight.options());
  Tensor grad_bias = at::empty({C}, weight.options());
  std::vector<float> k1(C), k2(C), k3(C);
  const double count = static_cast<double>(N * H * W);
  for (int64_t c = 0; c < C; ++c) {
    double gb = 0.0, gx = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      gb += sum_g[n * C + c];
      gx += sum_gx[n * C + c];
    }
    const double s = ip[c], w = wp[c];
    const double gw = s * (gx - static_cast<double>(mp[c]) * gb);
    grad_weight.data_ptr<float>()[c] = static_cast<float>(gw);
    grad_bias.data_ptr<float>()[c] = static_cast<float>(gb);
    const double c2 = -w * s * s * gw / count;
    k1[c] = static_cast<float>(w * s);
    k2[c] = static_cast<float>(c2);
    k3[c] = static_cast<float>(-w * s * gb / count - c2 * mp[c]);
  }

  // pass 2: gx = k2 x + k3 everywhere, plus k1 g at each window's chosen position; one write per value
  Tensor grad_x = at::empty({N, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  T* gxp = mutable_data<T>(grad_x);
  const float* a1 = k1.data();
  const float* a2 = k2.data();
  const float* a3 = k3.data();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xi = xp + n * H * W * C;
      T* gi = gxp + n * H * W * C;
      for (int64_t ho = 0; ho < Ho; ++ho) {
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const int64_t o = ((n * Ho + ho) * Wo + wo) * C;
          const T* go = gp + o;
          const uint8_t* k = wh + o;
          const int64_t corner = ((2 * ho) * W + 2 * wo) * C;
          const int64_t offset[4] = {corner, corner + C, corner + W * C, corner + W * C + C};
          for (int j = 0; j < 4; ++j) {
            window_input_gradient(xi + offset[j], a1, a2, a3, go, k, j, gi + offset[j], C);
          }
        }
      }
      // the last row and column when H or W is odd belong to no window
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t w = (h < 2 * Ho ? 2 * Wo : 0); w < W; ++w) {
          const int64_t p = (h * W + w) * C;
          affine_rows(xi + p, a2, a3, gi + p, C);
        }
      }
    }
  });
  return {grad_x, grad_weight, grad_bias};
}

std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad_out, const Tensor& x, const Tensor& out,
                                            const Tensor& weight, const Tensor& bias, const Tensor& mean,
                                            const Tensor& invstd) {
  const at::ScalarType dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "bn_pool_relu_backward: expected float32 or bfloat16, got ",
              dtype);
  check_input(x, "bn_pool_relu_backward x", dtype);
  check_input(out, "bn_pool_relu_backward out", dtype);
  check_input(grad_out, "bn_pool_relu_backward grad_out", dtype);
  return dtype == at::kFloat ? backward_impl<float>(grad_out, x, out, weight, bias, mean, invstd)
                             : backward_impl<bf16>(grad_out, x, out, weight, bias, mean, invstd);
}

}  // namespace

TORCH_LIBRARY(quickstudy_fused, m) {
  m.def("bn_pool_relu_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)",
        &forward);
  m.def("bn_pool_relu_backward(Tensor grad_out, Tensor x, Tensor out, Tensor weight, Tensor bias, Tensor mean, Tensor invstd)"
        " -> (Tensor, Tensor, Tensor)",
        &backward);
}
