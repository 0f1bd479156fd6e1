"""Rotary position embedding of q and k in raw CUDA (the --cuda-only path), one launch for both.

One block per token (b, s); its threads walk the (head, vector) pairs of that token's query and key
heads: each loads VEC elements of the head's first half and the matching VEC of its second half
(16 bytes each: 8 bf16 or 4 fp32), the token's cos/sin at the same offsets, and writes
    out1 = x1*c1 - x2*s1,   out2 = x2*c2 + x1*s2      (rotate_half without building it)
with each product and the sum rounded to the dtype, as eager's q*cos + rotate_half(q)*sin does.

Any strides with a unit-stride head dim: HF's q_proj(x).view(B,S,H,D).transpose(1,2) views are read
in place and the outputs keep q's and k's layout (empty_like), as eager's elementwise ops do.
cos/sin are [B or 1, S, D]. Bytes: read and write q and k once, cos/sin once per token from L2.
At Llama-3.1-8B prefill (4096 tokens, 32 + 8 heads of 128, bf16) that is ~82 MiB, ~27 us at
~3.2 TB/s; eager runs ~10 kernels. A head dim, pointer or stride that is not 16-byte aligned takes
the same kernel with one element per access.

The CUDA source needs only the CUDA headers (kernels and a launcher on raw pointers); the C++
source does the tensor side: checks, the outputs, the current stream.
"""

import torch
from torch import nn
from torch.utils.cpp_extension import load_inline

CUDA_SRC = """
#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

// Round to the dtype and back: the point where eager stores an intermediate tensor.
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_float(from_float<T>(v)); }

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Strides in elements: [batch, head, seq] for q, k and their outputs; [batch, seq] for cos and sin.
struct Strides {
  int64_t q[3], k[3], qo[3], ko[3], c[2], s[2];
};

template <typename T, int VEC>
__global__ void __launch_bounds__(512) rotary_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ cos, const T* __restrict__ sin,
    T* __restrict__ q_out, T* __restrict__ k_out, int seq, int n_q, int n_k, int half, Strides st) {
  using P = Pack<T, VEC>;
  const int64_t token = blockIdx.x;
  const int64_t b = token / seq;
  const int64_t s = token - b * seq;
  const int per_head = half / VEC;  // vector pairs per head
  const int items = (n_q + n_k) * per_head;
  const T* cb = cos + b * st.c[0] + s * st.c[1];
  const T* sb = sin + b * st.s[0] + s * st.s[1];
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int head = it / per_head;
    const int d = (it - head * per_head) * VEC;
    const T* src;
    T* dst;
    if (head < n_q) {
      src = q + b * st.q[0] + head * st.q[1] + s * st.q[2];
      dst = q_out + b * st.qo[0] + head * st.qo[1] + s * st.qo[2];
    } else {
      const int h = head - n_q;
      src = k + b * st.k[0] + h * st.k[1] + s * st.k[2];
      dst = k_out + b * st.ko[0] + h * st.ko[1] + s * st.ko[2];
    }
    const P x1 = *reinterpret_cast<const P*>(src + d);
    const P x2 = *reinterpret_cast<const P*>(src + d + half);
    const P c1 = *reinterpret_cast<const P*>(cb + d);
    const P c2 = *reinterpret_cast<const P*>(cb + d + half);
    const P s1 = *reinterpret_cast<const P*>(sb + d);
    const P s2 = *reinterpret_cast<const P*>(sb + d + half);
    P o1, o2;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(x1.v[j]);
      const float bb = to_float(x2.v[j]);
      o1.v[j] = from_float<T>(rnd<T>(a * to_float(c1.v[j])) + rnd<T>(-bb * to_float(s1.v[j])));
      o2.v[j] = from_float<T>(rnd<T>(bb * to_float(c2.v[j])) + rnd<T>(a * to_float(s2.v[j])));
    }
    *reinterpret_cast<P*>(dst + d) = o1;
    *reinterpret_cast<P*>(dst + d + half) = o2;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename T>
cudaError_t launch(const void* q, const void* k, const void* cos, const void* sin, void* q_out, void* k_out,
                   int batch, int seq, int n_q, int n_k, int half, const Strides& st, cudaStream_t stream) {
  constexpr int V16 = 16 / sizeof(T);
  bool vec = half % V16 == 0 && aligned16(q) && aligned16(k) && aligned16(cos) && aligned16(sin) &&
             aligned16(q_out) && aligned16(k_out);
  const int64_t* all = reinterpret_cast<const int64_t*>(&st);
  for (int i = 0; vec && i < (int)(sizeof(Strides) / sizeof(int64_t)); ++i) vec = all[i] % V16 == 0;
  const int per_head = half / (vec ? V16 : 1);
  const int items = (n_q + n_k) * per_head;
  // One thread per item up to 512 (decode: every head of the token in flight at once).
  const int threads = items >= 512 ? 512 : ((items + 31) / 32) * 32;
  const dim3 grid((unsigned)((int64_t)batch * seq));
  const T* qp = static_cast<const T*>(q);
  const T* kp = static_cast<const T*>(k);
  const T* cp = static_cast<const T*>(cos);
  const T* sp = static_cast<const T*>(sin);
  T* qop = static_cast<T*>(q_out);
  T* kop = static_cast<T*>(k_out);
  if (vec) {
    rotary_kernel<T, V16><<<grid, threads, 0, stream>>>(qp, kp, cp, sp, qop, kop, seq, n_q, n_k, half, st);
  } else {
    rotary_kernel<T, 1><<<grid, threads, 0, stream>>>(qp, kp, cp, sp, qop, kop, seq, n_q, n_k, half, st);
  }
  return cudaGetLastError();
}

}  // namespace

// dtype: 0 float32, 1 bfloat16, 2 float16. strides: 3 each for q, k, q_out, k_out, 2 each for cos, sin.
cudaError_t rotary_launch(const void* q, const void* k, const void* cos, const void* sin, void* q_out, void* k_out,
                          int batch, int seq, int n_q, int n_k, int half, const int64_t* strides, int dtype,
                          cudaStream_t stream) {
  Strides st;
  for (int i = 0; i < 3; ++i) {
    st.q[i] = strides[i];
    st.k[i] = strides[3 + i];
    st.qo[i] = strides[6 + i];
    st.ko[i] = strides[9 + i];
  }
  for (int i = 0; i < 2; ++i) {
    st.c[i] = strides[12 + i];
    st.s[i] = strides[14 + i];
  }
  switch (dtype) {
    case 0: return launch<float>(q, k, cos, sin, q_out, k_out, batch, seq, n_q, n_k, half, st, stream);
    case 1: return launch<__nv_bfloat16>(q, k, cos, sin, q_out, k_out, batch, seq, n_q, n_k, half, st, stream);
    case 2: return launch<__half>(q, k, cos, sin, q_out, k_out, batch, seq, n_q, n_k, half, st, stream);
    default: return cudaErrorInvalidValue;
  }
}
"""

CPP_SRC = """
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

cudaError_t rotary_launch(const void* q, const void* k, const void* cos, const void* sin, void* q_out, void* k_out,
                          int batch, int seq, int n_q, int n_k, int half, const int64_t* strides, int dtype,
                          cudaStream_t stream);

static int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: TORCH_CHECK(false, "unsupported dtype ", t, " (float32, bfloat16 and float16 are)");
  }
}

static at::Tensor unit_last(const at::Tensor& t) { return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous(); }

std::tuple<at::Tensor, at::Tensor> rotary(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& cos_in,
                                          const at::Tensor& sin_in) {
  TORCH_CHECK(q_in.is_cuda() && k_in.is_cuda() && cos_in.is_cuda() && sin_in.is_cuda(),
              "rotary: q, k, cos and sin must be CUDA tensors");
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4, "rotary: q and k must be [batch, heads, seq, head_dim]");
  TORCH_CHECK(cos_in.dim() == 3 && sin_in.dim() == 3, "rotary: cos and sin must be [batch, seq, head_dim]");
  const auto dt = q_in.scalar_type();
  TORCH_CHECK(k_in.scalar_type() == dt && cos_in.scalar_type() == dt && sin_in.scalar_type() == dt,
              "rotary: q, k, cos and sin must share a dtype (got ", dt, ", ", k_in.scalar_type(), ", ",
              cos_in.scalar_type(), ", ", sin_in.scalar_type(), ")");
  const int64_t batch = q_in.size(0), n_q = q_in.size(1), seq = q_in.size(2), dim = q_in.size(3);
  const int64_t n_k = k_in.size(1);
  TORCH_CHECK(k_in.size(0) == batch && k_in.size(2) == seq && k_in.size(3) == dim, "rotary: q and k disagree");
  TORCH_CHECK(dim % 2 == 0, "rotary: head_dim must be even");
  TORCH_CHECK(cos_in.size(1) == seq && cos_in.size(2) == dim && sin_in.sizes() == cos_in.sizes() &&
              (cos_in.size(0) == batch || cos_in.size(0) == 1), "rotary: cos/sin must be [batch or 1, seq, head_dim]");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), cos = unit_last(cos_in), sin = unit_last(sin_in);
  at::Tensor q_out = at::empty_like(q);  // keeps q's layout, as eager's elementwise ops do
  at::Tensor k_out = at::empty_like(k);
  if (q.numel() == 0 && k.numel() == 0) return {q_out, k_out};
  const bool bcast = cos.size(0) == 1;  // one set of angles for every sequence of the batch
  const int64_t strides[16] = {
      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
      q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
      bcast ? 0 : cos.stride(0), cos.stride(1), bcast ? 0 : sin.stride(0), sin.stride(1)};
  C10_CUDA_CHECK(rotary_launch(q.data_ptr(), k.data_ptr(), cos.data_ptr(), sin.data_ptr(), q_out.data_ptr(),
                               k_out.data_ptr(), (int)batch, (int)seq, (int)n_q, (int)n_k, (int)(dim / 2), strides,
                               dtype_code(dt), c10::cuda::getCurrentCUDAStream().stream()));
  return {q_out, k_out};
}
"""

_ext = load_inline(
    name="fk_cuda_rotary_embedding",
    cpp_sources=CPP_SRC,
    cuda_sources=CUDA_SRC,
    functions=["rotary"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return _ext.rotary(q, k, cos, sin)
