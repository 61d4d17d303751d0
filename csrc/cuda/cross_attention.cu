// Image->text cross-attention of both caption branches with the column statistics of differential pooling:
// the CUDA C++ twin of kernels/cross_attention_triton.py's forward (same outputs, same lse for the backward).
//
// One block per (tile of kRows query rows, image). It walks the heads and, per head, each branch: the branch's
// keys (transposed) and values go to shared memory as fp32, each warp takes rows of the tile, a lane per key for
// the scores and softmax, a lane per output dim for P·V. The head-sum of the probabilities of every (row, key)
// of the tile stays in shared memory, so the N×M maps never reach device memory; at the end the block writes the
// tile's column sums to a partial buffer that the host reduces (deterministic).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

constexpr int kWarps = 8;
constexpr int kRows = 32;
constexpr int kMaxKeys = 128;
constexpr int kMaxDim = 128;
constexpr int kKeysPerLane = kMaxKeys / 32;
constexpr int kDimsPerLane = kMaxDim / 32;

struct Layout {
  int64_t b, h, n;
};

struct Branch {
  const void* k;
  const void* v;
  const bool* valid;
  void* o;
};

__device__ __forceinline__ float warp_max(float x) {
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWarps * 32) forward_kernel(
    const scalar_t* __restrict__ q, Branch fg, Branch bg, float* __restrict__ lse, float* __restrict__ part,
    Layout lq, Layout lk, int batch, int heads, int nq, int m, int dim, int row_start, float scale) {
  extern __shared__ float smem[];
  const int ldk = (m % 2 == 1) ? m : m + 1;  // odd row pitch: the transposed stores spread over the banks
  float* k_t = smem;                          // [dim][ldk]
  float* v_s = k_t + dim * ldk;               // [m][dim]
  float* w_sum = v_s + m * dim;               // [2][kRows][m]
  float* q_row = w_sum + 2 * kRows * m;       // [kWarps][dim]
  float* p_row = q_row + kWarps * dim;        // [kWarps][m]

  const int tile = blockIdx.x;
  const int b = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int n_tiles = gridDim.x;
  float* my_q = q_row + warp * dim;
  float* my_p = p_row + warp * m;

  for (int i = threadIdx.x; i < 2 * kRows * m; i += blockDim.x) w_sum[i] = 0.f;

  for (int h = 0; h < heads; ++h) {
    for (int br = 0; br < 2; ++br) {
      const scalar_t* k = static_cast<const scalar_t*>(br == 0 ? fg.k : bg.k) + b * lk.b + h * lk.h;
      const scalar_t* v = static_cast<const scalar_t*>(br == 0 ? fg.v : bg.v) + b * lk.b + h * lk.h;
      const bool* valid = (br == 0 ? fg.valid : bg.valid) + b * m;
      __syncthreads();
      for (int i = threadIdx.x; i < m * dim; i += blockDim.x) {
        const int j = i / dim, d = i % dim;
        k_t[d * ldk + j] = static_cast<float>(k[j * lk.n + d]);
        v_s[j * dim + d] = static_cast<float>(v[j * lk.n + d]);
      }
      __syncthreads();
      bool key_ok[kKeysPerLane];
#pragma unroll
      for (int t = 0; t < kKeysPerLane; ++t) {
        const int j = lane + 32 * t;
        key_ok[t] = j < m && valid[j];
      }
      scalar_t* o = static_cast<scalar_t*>(br == 0 ? fg.o : bg.o) + ((int64_t)b * heads + h) * nq * dim;
      float* lse_bh = lse + (((int64_t)br * batch + b) * heads + h) * nq;
      for (int r = warp; r < kRows; r += kWarps) {
        const int row = tile * kRows + r;
        if (row >= nq) break;
        const scalar_t* q_src = q + b * lq.b + h * lq.h + row * lq.n;
        for (int d = lane; d < dim; d += 32) my_q[d] = static_cast<float>(q_src[d]);
        __syncwarp();
        float s[kKeysPerLane];
        float row_max = -INFINITY;
#pragma unroll
        for (int t = 0; t < kKeysPerLane; ++t) {
          s[t] = -INFINITY;
          if (key_ok[t]) {
            const int j = lane + 32 * t;
            float acc = 0.f;
            for (int d = 0; d < dim; ++d) acc = fmaf(my_q[d], k_t[d * ldk + j], acc);
            s[t] = acc * scale;
          }
          row_max = fmaxf(row_max, s[t]);
        }
        row_max = warp_max(row_max);
        float p[kKeysPerLane];
        float row_sum = 0.f;
#pragma unroll
        for (int t = 0; t < kKeysPerLane; ++t) {
          p[t] = key_ok[t] ? __expf(s[t] - row_max) : 0.f;
          row_sum += p[t];
        }
        row_sum = warp_sum(row_sum);
        const float inv = 1.f / row_sum;
        float* w_row = w_sum + (br * kRows + r) * m;
#pragma unroll
        for (int t = 0; t < kKeysPerLane; ++t) {
          const int j = lane + 32 * t;
          if (j < m) {
            my_p[j] = p[t] * inv;
            w_row[j] += p[t] * inv;
          }
        }
        __syncwarp();
        float acc[kDimsPerLane];
#pragma unroll
        for (int u = 0; u < kDimsPerLane; ++u) acc[u] = 0.f;
        for (int j = 0; j < m; ++j) {
          const float pj = my_p[j];
#pragma unroll
          for (int u = 0; u < kDimsPerLane; ++u) {
            const int d = lane + 32 * u;
            if (d < dim) acc[u] = fmaf(pj, v_s[j * dim + d], acc[u]);
          }
        }
#pragma unroll
        for (int u = 0; u < kDimsPerLane; ++u) {
          const int d = lane + 32 * u;
          if (d < dim) o[(int64_t)row * dim + d] = static_cast<scalar_t>(acc[u]);
        }
        if (lane == 0) lse_bh[row] = row_max + logf(row_sum);
        __syncwarp();
      }
    }
  }
  __syncthreads();
  const float inv_h = 1.f / heads;
  for (int j = threadIdx.x; j < m; j += blockDim.x) {
    float fb = 0.f, ff = 0.f, bb = 0.f;
    for (int r = 0; r < kRows; ++r) {
      const int row = tile * kRows + r;
      if (row < row_start || row >= nq) continue;
      const float wf = w_sum[r * m + j] * inv_h;
      const float wb = w_sum[(kRows + r) * m + j] * inv_h;
      fb += wf * wb;
      ff += wf * wf;
      bb += wb * wb;
    }
    float* out = part + (((int64_t)b * n_tiles + tile) * 3) * m + j;
    out[0] = fb;
    out[m] = ff;
    out[2 * m] = bb;
  }
}

void check_input(const torch::Tensor& t, const char* name, const torch::Tensor& q) {
  TORCH_CHECK(t.is_cuda(), "fba._C_cuda.cross_attention_forward: ", name, " is on ", t.device(),
              "; CPU tensors are refused (the reference path in fba.kernels handles them)");
  TORCH_CHECK(t.device() == q.device(), "fba._C_cuda.cross_attention_forward: ", name, " is on ", t.device(),
              ", q on ", q.device());
}

}  // namespace

std::vector<torch::Tensor> cross_attention_forward(torch::Tensor q, torch::Tensor k_f, torch::Tensor v_f,
                                                   torch::Tensor k_b, torch::Tensor v_b, torch::Tensor valid_f,
                                                   torch::Tensor valid_b, int64_t row_start) {
  const std::pair<const char*, torch::Tensor*> inputs[] = {{"q", &q},         {"k_f", &k_f}, {"v_f", &v_f},
                                                           {"k_b", &k_b},     {"v_b", &v_b}, {"valid_f", &valid_f},
                                                           {"valid_b", &valid_b}};
  for (const auto& [name, t] : inputs) check_input(*t, name, q);
  TORCH_CHECK(q.dim() == 4, "fba._C_cuda.cross_attention_forward: q must be [B,H,Nq,d], got ", q.sizes());
  const int64_t batch = q.size(0), heads = q.size(1), nq = q.size(2), dim = q.size(3), m = k_f.size(2);
  TORCH_CHECK(m >= 1 && m <= kMaxKeys, "fba._C_cuda.cross_attention_forward: ", m, " keys (at most ", kMaxKeys, ")");
  TORCH_CHECK(dim >= 1 && dim <= kMaxDim, "fba._C_cuda.cross_attention_forward: head dim ", dim, " (at most ",
              kMaxDim, ")");
  for (const torch::Tensor* t : {&k_f, &v_f, &k_b, &v_b}) {
    TORCH_CHECK(t->sizes() == torch::IntArrayRef({batch, heads, m, dim}) && t->scalar_type() == q.scalar_type(),
                "fba._C_cuda.cross_attention_forward: keys/values must be [B,H,M,d] in q's dtype, got ", t->sizes(),
                " ", t->scalar_type());
  }
  if (q.stride(3) != 1) q = q.contiguous();
  if (k_f.stride(3) != 1 || k_f.strides() != v_f.strides() || k_f.strides() != k_b.strides() ||
      k_f.strides() != v_b.strides()) {
    k_f = k_f.contiguous(), v_f = v_f.contiguous(), k_b = k_b.contiguous(), v_b = v_b.contiguous();
  }
  for (torch::Tensor* valid : {&valid_f, &valid_b}) {
    TORCH_CHECK(valid->scalar_type() == torch::kBool && valid->sizes() == torch::IntArrayRef({batch, m}),
                "fba._C_cuda.cross_attention_forward: valid masks must be bool [B,M], got ", valid->sizes());
    *valid = valid->contiguous();
  }
  const c10::cuda::CUDAGuard guard(q.device());
  auto o_f = torch::empty({batch, heads, nq, dim}, q.options());
  auto o_b = torch::empty_like(o_f);
  auto lse = torch::empty({2, batch, heads, nq}, q.options().dtype(torch::kFloat32));
  const int64_t n_tiles = (nq + kRows - 1) / kRows;
  auto part = torch::empty({batch, n_tiles, 3, m}, q.options().dtype(torch::kFloat32));
  const int ldk = (m % 2 == 1) ? m : m + 1;
  const size_t smem = sizeof(float) * (dim * ldk + m * dim + 2 * kRows * m + kWarps * dim + kWarps * m);
  const Layout lq{q.stride(0), q.stride(1), q.stride(2)}, lk{k_f.stride(0), k_f.stride(1), k_f.stride(2)};
  const dim3 grid(n_tiles, batch);
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto launch = [&](auto tag) {
    using scalar_t = decltype(tag);
    C10_CUDA_CHECK(cudaFuncSetAttribute(forward_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    const Branch fg{k_f.data_ptr(), v_f.data_ptr(), valid_f.data_ptr<bool>(), o_f.data_ptr()};
    const Branch bg{k_b.data_ptr(), v_b.data_ptr(), valid_b.data_ptr<bool>(), o_b.data_ptr()};
    forward_kernel<scalar_t><<<grid, kWarps * 32, smem, stream>>>(
        static_cast<const scalar_t*>(q.data_ptr()), fg, bg, lse.data_ptr<float>(), part.data_ptr<float>(), lq, lk,
        static_cast<int>(batch), static_cast<int>(heads), static_cast<int>(nq), static_cast<int>(m),
        static_cast<int>(dim), static_cast<int>(row_start), scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (q.scalar_type()) {
    case torch::kFloat: launch(float{}); break;
    case torch::kHalf: launch(c10::Half{}); break;
    case torch::kBFloat16: launch(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "fba._C_cuda.cross_attention_forward: dtype ", q.scalar_type(),
                         " (float32, float16, bfloat16 only)");
  }
  return {o_f, o_b, part.sum(1), lse};
}
