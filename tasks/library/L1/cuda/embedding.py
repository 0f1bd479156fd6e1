"""Token embedding lookup in raw CUDA (the --cuda-only path): out[t] = weight[ids[t]].

One block per token copies its table row with 16-byte accesses (8 bf16 or 4 fp32 per thread per
step): read one row per token, write it once. At Llama-3.1-8B prefill (4096 tokens x 4096 bf16)
that is 64 MiB moved, ~21 us at ~3.2 TB/s. An id outside the table stops the kernel (__trap), as
eager's device-side assert does, rather than reading out of bounds. A width or pointer that is not
16-byte aligned takes the same kernel with one element per access.

The CUDA source needs only the CUDA headers (kernels and a launcher on raw pointers); the C++
source does the tensor side: checks, the output, the current stream.
"""

import torch
from torch import nn
from torch.utils.cpp_extension import load_inline

CUDA_SRC = """
#include <cstdint>
#include <cuda_runtime.h>

namespace {

// ELEM bytes moved per access: 16 (a vector) or the element size (the unaligned fallback).
template <int ELEM>
struct alignas(ELEM) Chunk {
  unsigned char b[ELEM];
};

template <int ELEM>
__global__ void __launch_bounds__(256) embedding_kernel(
    const int64_t* __restrict__ ids, const unsigned char* __restrict__ table, unsigned char* __restrict__ out,
    int64_t vocab, int64_t row_bytes) {
  using C = Chunk<ELEM>;
  const int64_t token = blockIdx.x;
  const int64_t id = ids[token];
  if (id < 0 || id >= vocab) __trap();  // eager: "index out of range" device-side assert
  const C* src = reinterpret_cast<const C*>(table + id * row_bytes);
  C* dst = reinterpret_cast<C*>(out + token * row_bytes);
  const int64_t n = row_bytes / ELEM;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

cudaError_t embedding_launch(const int64_t* ids, const void* table, void* out, int64_t n_tokens, int64_t vocab,
                             int64_t row_bytes, int elem_bytes, cudaStream_t stream) {
  const bool vec = row_bytes % 16 == 0 && aligned16(table) && aligned16(out);
  const int64_t n = row_bytes / (vec ? 16 : elem_bytes);
  const int threads = n >= 256 ? 256 : (int)((n + 31) / 32) * 32;
  const dim3 grid((unsigned)n_tokens);
  const unsigned char* t = static_cast<const unsigned char*>(table);
  unsigned char* o = static_cast<unsigned char*>(out);
  if (vec) {
    embedding_kernel<16><<<grid, threads, 0, stream>>>(ids, t, o, vocab, row_bytes);
  } else if (elem_bytes == 4) {
    embedding_kernel<4><<<grid, threads, 0, stream>>>(ids, t, o, vocab, row_bytes);
  } else if (elem_bytes == 2) {
    embedding_kernel<2><<<grid, threads, 0, stream>>>(ids, t, o, vocab, row_bytes);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
"""

CPP_SRC = """
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

cudaError_t embedding_launch(const int64_t* ids, const void* table, void* out, int64_t n_tokens, int64_t vocab,
                             int64_t row_bytes, int elem_bytes, cudaStream_t stream);

at::Tensor embedding(const at::Tensor& input_ids, const at::Tensor& weight) {
  TORCH_CHECK(input_ids.is_cuda() && weight.is_cuda(), "embedding: ids and weight must be CUDA tensors");
  TORCH_CHECK(input_ids.scalar_type() == at::kLong, "embedding: ids must be int64, got ", input_ids.scalar_type());
  TORCH_CHECK(weight.dim() == 2, "embedding: weight must be [vocab, hidden]");
  TORCH_CHECK(weight.element_size() == 2 || weight.element_size() == 4, "embedding: unsupported dtype ",
              weight.scalar_type());
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor ids = input_ids.is_contiguous() ? input_ids : input_ids.contiguous();
  const at::Tensor w = weight.is_contiguous() ? weight : weight.contiguous();
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(w.size(1));
  at::Tensor out = at::empty(shape, w.options());
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(embedding_launch(ids.data_ptr<int64_t>(), w.data_ptr(), out.data_ptr(), ids.numel(), w.size(0),
                                  w.size(1) * (int64_t)w.element_size(), (int)w.element_size(),
                                  c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}
"""

_ext = load_inline(
    name="fk_cuda_embedding",
    cpp_sources=CPP_SRC,
    cuda_sources=CUDA_SRC,
    functions=["embedding"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return _ext.embedding(input_ids, self.weight)
