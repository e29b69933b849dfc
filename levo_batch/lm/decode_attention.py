"""Decode attention with per-row lengths as one split-K (flash-decoding) CUDA kernel pair.

One new token per row attends its own cache prefix `[0, positions[r]]`. At large batches a decoding step is
bound by reading keys and values (LeVo 2 has no grouped KV heads), so the kernel reads each row's keys and
values exactly once, only up to that row's length (a slot refilled later never reads the longest row's
length), never materialises scores, masks or probabilities, and reads bf16 and fp16 caches as well as 8-bit
caches in `mx.quantize`'s layout directly (dequantised in registers). MLX 0.32 on CUDA has no such kernel:
its fused decode attention accepts no array mask, so the fallback is two matmuls and a masked softmax over the
longest row's bucket.

Work split: block (row·head, split) covers `CHUNK` keys of one row and head with 128 threads; a group of
`D / 8` lanes (16-bit floats: 16 bytes per lane) or `D / 16` lanes (8-bit) owns one key at a time and keeps an
online softmax (running max, sum and output in float32); the block merges its groups, and a second small
kernel merges the splits of each row and head. Splits past a row's length return at once.

`cuda_decode_attention` returns None where the kernel does not apply (not on CUDA, unsupported shapes), and
the caller runs its portable path. On Metal, MLX's own fused attention already takes the mask in one kernel
(`cache.masked_fused_decode`); a per-row-length Metal kernel is not written (it cannot be tested here).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

CHUNK = 256
"""Keys per block: the attention bucket, so a bucket of n·256 columns is n splits."""
THREADS = 128
ENABLED = True
LOG2E = 1.4426950408889634

_HEADER = """
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float2 levo_float2(const __nv_bfloat162& h) { return __bfloat1622float2(h); }
__device__ __forceinline__ float2 levo_float2(const __half2& h) { return __half22float2(h); }

// Eight 16-bit floats (one 16-byte load; H2 is the pair type: __nv_bfloat162 or __half2) -> eight floats.
template <typename H2>
__device__ __forceinline__ void levo_half8(const uint4& w, float* out) {
  const H2* h = reinterpret_cast<const H2*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = levo_float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void levo_u8x16(const uint4& w, float* out) {
  // Byte b of a word -> the float 2^23 + b (one byte permute), minus 2^23: exact, and no int->float
  // conversions, which run at a quarter of the FMA rate and would bound the 8-bit kernel.
  const uint32_t parts[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      out[4 * i + b] = __uint_as_float(__byte_perm(parts[i], 0x4b000000u, 0x7650u + b)) - 8388608.f;
    }
  }
}
"""

# Shared by both cache layouts: VEC values per lane, LANES lanes per key, GROUPS keys per block pass, each
# group UNROLL keys deep so 2·UNROLL 16-byte loads per lane are in flight. FETCH(u, pos) loads key and value
# `pos` raw into slot u (indices clamped to the row, so the loads need no branch), K_AT / V_AT decode slot u
# into VEC floats. q is pre-scaled by scale·log2(e), so the softmax runs on exp2.
_PARTIAL_BODY = """
  constexpr int LANES = D / VEC;
  constexpr int GROUPS = THREADS / LANES;
  constexpr int UNROLL = 4;
  const int rh = blockIdx.x;
  const int split = blockIdx.y;
  const int splits = gridDim.y;
  const int len = positions[rh / HEADS] + 1;
  const int start = split * CHUNK;
  if (start >= len) return;
  const int stop = min(start + CHUNK, len);
  const int tid = threadIdx.x;
  const int g = tid / LANES;
  const int lane = tid % LANES;
  const float sc = scale[0];

  // q may be a strided view (a slice of the rotated q/k); its last axis is contiguous.
  const size_t q_at = size_t(rh / HEADS) * qv_strides[0] + size_t(rh % HEADS) * qv_strides[1];
  float q[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) q[i] = float(qv[q_at + lane * VEC + i]) * sc;
  const size_t row0 = size_t(rh) * CAPACITY;

  float m = -INFINITY, l = 0.f;
  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  RAW_DECL;

  for (int base = start; base < stop; base += GROUPS * UNROLL) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int j = min(base + g + u * GROUPS, stop - 1);
      FETCH(u, row0 + j);
    }
    float s[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float kv[VEC];
      K_AT(u, kv);
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) dot += q[i] * kv[i];
#pragma unroll
      for (int off = LANES / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      s[u] = (base + g + u * GROUPS < stop) ? dot : -INFINITY;
    }
    float mnew = m;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) mnew = fmaxf(mnew, s[u]);
    if (mnew != -INFINITY) {
      const float corr = exp2f(m - mnew);
      l *= corr;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] *= corr;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const float p = exp2f(s[u] - mnew);
        l += p;
        float vv[VEC];
        V_AT(u, vv);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += p * vv[i];
      }
      m = mnew;
    }
  }

  __shared__ float sm_m[GROUPS];
  __shared__ float sm_l[GROUPS];
  __shared__ float sm_acc[GROUPS * D];
  if (lane == 0) {
    sm_m[g] = m;
    sm_l[g] = l;
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) sm_acc[g * D + lane * VEC + i] = acc[i];
  __syncthreads();
  float big = -INFINITY;
  for (int k = 0; k < GROUPS; ++k) big = fmaxf(big, sm_m[k]);
  const size_t part = size_t(rh) * splits + split;
  for (int d = tid; d < D; d += THREADS) {
    float o = 0.f;
    for (int k = 0; k < GROUPS; ++k) {
      if (sm_m[k] != -INFINITY) o += sm_acc[k * D + d] * exp2f(sm_m[k] - big);
    }
    part_o[part * D + d] = o;
  }
  if (tid == 0) {
    float total = 0.f;
    for (int k = 0; k < GROUPS; ++k) {
      if (sm_m[k] != -INFINITY) total += sm_l[k] * exp2f(sm_m[k] - big);
    }
    part_ml[part * 2] = big;
    part_ml[part * 2 + 1] = total;
  }
"""

_FLOAT_LOADS = """
#define RAW_DECL uint4 kr[4], vr[4]
#define FETCH(u, pos) do {                                                              \\
    kr[u] = *reinterpret_cast<const uint4*>(keys + (pos) * D + lane * VEC);             \\
    vr[u] = *reinterpret_cast<const uint4*>(values + (pos) * D + lane * VEC);           \\
  } while (0)
#define K_AT(u, dst) HALF8(kr[u], dst)
#define V_AT(u, dst) HALF8(vr[u], dst)
"""

HALF2 = {mx.bfloat16: ("bf16", "__nv_bfloat162"), mx.float16: ("f16", "__half2")}
"""The 16-bit cache dtypes the kernel reads: kernel-name suffix and CUDA pair type of each; 8-bit caches of
either model dtype keep their scales and biases in it."""

# 8-bit caches in mx.quantize's layout: packed uint32 [.., D/4] (4 values per word, low byte first), scales
# and biases [.., D/QGROUP]; value = scale * q + bias. A lane's 16 values lie in one group.
_QUANT_LOADS = """
#define RAW_DECL uint4 kr[4], vr[4]; float ka[4], kb[4], va[4], vb[4]
#define FETCH(u, pos) do {                                                              \\
    const size_t g_ = (pos) * (D / QGROUP) + lane * VEC / QGROUP;                       \\
    kr[u] = *reinterpret_cast<const uint4*>(k_packed + (pos) * (D / 4) + lane * 4);     \\
    vr[u] = *reinterpret_cast<const uint4*>(v_packed + (pos) * (D / 4) + lane * 4);     \\
    ka[u] = float(k_scales[g_]); kb[u] = float(k_biases[g_]);                           \\
    va[u] = float(v_scales[g_]); vb[u] = float(v_biases[g_]);                           \\
  } while (0)
#define K_AT(u, dst) do { levo_u8x16(kr[u], dst);                                       \\
    _Pragma("unroll") for (int i_ = 0; i_ < VEC; ++i_) dst[i_] = ka[u] * dst[i_] + kb[u]; } while (0)
#define V_AT(u, dst) do { levo_u8x16(vr[u], dst);                                       \\
    _Pragma("unroll") for (int i_ = 0; i_ < VEC; ++i_) dst[i_] = va[u] * dst[i_] + vb[u]; } while (0)
"""

_COMBINE_BODY = """
  const int rh = blockIdx.x;
  const int splits = SPLITS;
  const int len = positions[rh / HEADS] + 1;
  const int used = min(splits, (len + CHUNK - 1) / CHUNK);
  const size_t base = size_t(rh) * splits;
  float big = -INFINITY;
  for (int s = 0; s < used; ++s) big = fmaxf(big, part_ml[(base + s) * 2]);
  float total = 0.f;
  for (int s = 0; s < used; ++s) {
    const float mm = part_ml[(base + s) * 2];
    if (mm != -INFINITY) total += part_ml[(base + s) * 2 + 1] * exp2f(mm - big);
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < used; ++s) {
      const float mm = part_ml[(base + s) * 2];
      if (mm != -INFINITY) o += part_o[(base + s) * D + d] * exp2f(mm - big);
    }
    out[size_t(rh) * D + d] = OutT(o / total);
  }
"""


@lru_cache(maxsize=None)
def _kernels(quantized: bool, dtype: mx.Dtype):
    """One kernel pair per cache layout and model dtype, each under its own name so compiled kernels of
    different input types never share a cache entry."""
    inputs = ["qv", "positions", "scale"]
    inputs += ["k_packed", "k_scales", "k_biases", "v_packed", "v_scales", "v_biases"] if quantized \
        else ["keys", "values"]
    suffix, pair = HALF2[dtype]
    loads = _QUANT_LOADS if quantized else f"#define HALF8 levo_half8<{pair}>\n{_FLOAT_LOADS}"
    partial = mx.fast.cuda_kernel(
        name=f"levo_decode_attn_{'q8_' if quantized else ''}{suffix}",
        input_names=inputs,
        output_names=["part_o", "part_ml"],
        header=_HEADER + loads,
        source=_PARTIAL_BODY,
        ensure_row_contiguous=False,
    )
    combine = mx.fast.cuda_kernel(
        name=f"levo_decode_attn_combine_{suffix}",
        input_names=["positions", "part_o", "part_ml"],
        output_names=["out"],
        source=_COMBINE_BODY,
    )
    return partial, combine


def applies(head_dim: int, dtype: mx.Dtype) -> bool:
    """On MLX CUDA's GPU, for bf16 or fp16 caches (or 8-bit ones of such models) and head dims the lane layout
    covers; `ENABLED` False forces the portable path (benchmarks compare the two)."""
    return (ENABLED and mx.default_device() == mx.gpu and mx.cuda.is_available() and dtype in HALF2
            and head_dim % 16 == 0 and head_dim <= 256)


def cuda_decode_attention(q: mx.array, cache: list[mx.array], positions: mx.array, length: int, scale: float,
                          group_size: int | None = None) -> mx.array:
    """`q` [R, H, 1, D] attends cache rows `[0, positions[r]]`; `cache` is `[keys, values]` `[R, H, C, D]`
    (bf16 or fp16, as `q`) or the six `mx.quantize` arrays of 8-bit keys then values (`group_size` given).
    `length` bounds every row's length (the step's bucket): it fixes the number of splits, so shapes repeat
    across steps."""
    rows, heads, _, dim = q.shape
    quantized = group_size is not None
    capacity = cache[0].shape[2]
    splits = -(-length // CHUNK)
    partial, combine = _kernels(quantized, cache[-1].dtype)
    template = [("D", dim), ("VEC", 16 if quantized else 8), ("THREADS", THREADS), ("CHUNK", CHUNK),
                ("CAPACITY", capacity), ("HEADS", heads)]
    if quantized:
        template.append(("QGROUP", group_size))
    scale_arr = mx.array([scale * LOG2E], dtype=mx.float32)
    part_o, part_ml = partial(
        inputs=[q, positions, scale_arr, *cache],
        template=template,
        grid=(rows * heads * THREADS, splits, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[(rows * heads * splits, dim), (rows * heads * splits, 2)],
        output_dtypes=[mx.float32, mx.float32],
    )
    (out,) = combine(
        inputs=[positions, part_o, part_ml],
        template=[("D", dim), ("CHUNK", CHUNK), ("SPLITS", splits), ("HEADS", heads), ("OutT", q.dtype)],
        grid=(rows * heads * min(dim, THREADS), 1, 1),
        threadgroup=(min(dim, THREADS), 1, 1),
        output_shapes=[q.shape],
        output_dtypes=[q.dtype],
    )
    return out
