// hone's CUDA kernels for the transformer body: quantized matrix products (plain, with bias and
// residual, and the gated MLP), RoPE fused with the KV-cache write, and attention over the
// slot-grid cache.
//
// Every kernel is batch-invariant by construction: each output element is reduced by one warp
// (or one block) in an order fixed by the reduction length alone, never by how many rows or
// query positions the call holds. A row's logits are then the same bits alone or in a batch, and
// verifying k drafted tokens in one call gives the bits of k single steps.

#include <stdint.h>
#include <cuda_fp16.h>
#include <math.h>

#define WARP 32
// Elements one lane dequantizes at a time: every block format below keeps 8 consecutive
// elements (starting at a multiple of 8) under one scale.
#define CHUNK 8
// Rows of the input reduced together against one dequantized chunk of weights: ROWS for
// decode-sized calls, TALL_ROWS for prefill-sized ones. Each row's sum is formed the same way
// with either, so the choice changes speed, never bits.
#define ROWS 8
#define TALL_ROWS 32

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float f16(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

// ---------------------------------------------------------------------------------------------
// Block formats (ggml's layouts). Each `Dq` type dequantizes the CHUNK elements of one row that
// start at element `e` (a multiple of CHUNK) from the row's first block `row`.

struct Q4_0 {  // 32 elements: f16 d, 16 bytes of nibbles (elements j and j + 16 share byte j)
    static const int QK = 32, BYTES = 18;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const float d = f16(b);
        const int j = e % QK, hi = j >= 16, l = j % 16;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) {
            const int q = hi ? b[2 + l + i] >> 4 : b[2 + l + i] & 0xF;
            y[i] = (q - 8) * d;
        }
    }
};

struct Q4_1 {  // 32 elements: f16 d, f16 m, 16 bytes of nibbles
    static const int QK = 32, BYTES = 20;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const float d = f16(b), m = f16(b + 2);
        const int j = e % QK, hi = j >= 16, l = j % 16;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) {
            const int q = hi ? b[4 + l + i] >> 4 : b[4 + l + i] & 0xF;
            y[i] = q * d + m;
        }
    }
};

struct Q5_0 {  // 32 elements: f16 d, 32 high bits, 16 bytes of nibbles
    static const int QK = 32, BYTES = 22;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const float d = f16(b);
        const uint32_t qh = b[2] | (b[3] << 8) | (b[4] << 16) | ((uint32_t)b[5] << 24);
        const int j = e % QK, hi = j >= 16, l = j % 16;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) {
            const int nib = hi ? b[6 + l + i] >> 4 : b[6 + l + i] & 0xF;
            const int bit = (qh >> (j + i)) & 1;
            y[i] = ((nib | (bit << 4)) - 16) * d;
        }
    }
};

struct Q5_1 {  // 32 elements: f16 d, f16 m, 32 high bits, 16 bytes of nibbles
    static const int QK = 32, BYTES = 24;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const float d = f16(b), m = f16(b + 2);
        const uint32_t qh = b[4] | (b[5] << 8) | (b[6] << 16) | ((uint32_t)b[7] << 24);
        const int j = e % QK, hi = j >= 16, l = j % 16;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) {
            const int nib = hi ? b[8 + l + i] >> 4 : b[8 + l + i] & 0xF;
            const int bit = (qh >> (j + i)) & 1;
            y[i] = (nib | (bit << 4)) * d + m;
        }
    }
};

struct Q8_0 {  // 32 elements: f16 d, 32 signed bytes
    static const int QK = 32, BYTES = 34;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const float d = f16(b);
        const int8_t *q = reinterpret_cast<const int8_t *>(b + 2) + e % QK;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) y[i] = q[i] * d;
    }
};

// The 6-bit scale and minimum of sub-block `j` (of 8) of a Q4_K or Q5_K super-block.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t *q, int &sc, int &m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

struct Q4_K {  // 256 elements: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles
    static const int QK = 256, BYTES = 144;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const int j = e % QK, g = j / 64, w = j % 64, hi = w >= 32, l = w % 32;
        int sc, m;
        scale_min_k4(2 * g + hi, b + 4, sc, m);
        const float d = f16(b) * sc, mn = f16(b + 2) * m;
        const uint8_t *q = b + 16 + 32 * g + l;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) y[i] = d * (hi ? q[i] >> 4 : q[i] & 0xF) - mn;
    }
};

struct Q5_K {  // 256 elements: f16 d, f16 dmin, 12 bytes of scales, 32 bytes of high bits, 128 of nibbles
    static const int QK = 256, BYTES = 176;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const int j = e % QK, g = j / 64, w = j % 64, hi = w >= 32, l = w % 32;
        int sc, m;
        scale_min_k4(2 * g + hi, b + 4, sc, m);
        const float d = f16(b) * sc, mn = f16(b + 2) * m;
        const uint8_t *qh = b + 16 + l;
        const uint8_t *q = b + 48 + 32 * g + l;
        const int shift = 2 * g + hi;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) {
            const int nib = hi ? q[i] >> 4 : q[i] & 0xF;
            y[i] = d * (nib + (((qh[i] >> shift) & 1) << 4)) - mn;
        }
    }
};

struct Q6_K {  // 256 elements: 128 bytes of low nibbles, 64 of high pairs, 16 int8 scales, f16 d
    static const int QK = 256, BYTES = 210;
    __device__ static void dq(const uint8_t *row, int e, float *y) {
        const uint8_t *b = row + (e / QK) * BYTES;
        const int j = e % QK, half = j / 128, w = j % 128, quarter = w / 32, l = w % 32;
        const uint8_t *ql = b + 64 * half + l + (quarter & 1) * 32;
        const uint8_t *qh = b + 128 + 32 * half + l;
        const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + 8 * half;
        const float d = f16(b + 208) * sc[l / 16 + 2 * quarter];
        const int up = quarter >> 1, shift = 2 * quarter;
#pragma unroll
        for (int i = 0; i < CHUNK; i++) {
            const int lo = up ? ql[i] >> 4 : ql[i] & 0xF;
            y[i] = d * ((lo | (((qh[i] >> shift) & 3) << 4)) - 32);
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Matrix products. `w` is `[cols, k]` (one quantized row per output column), `x` is `[n, k]`
// f32, `y` is `[n, cols]`. One warp owns one output column for one group of ROWS input rows
// (grid y): its lanes take chunks lane, lane + 32, ... of the reduction, then the warp sums
// them in a fixed tree, so a dequantized chunk serves every row of the group and the order of
// each sum is the same whatever the number of rows.

template <typename T, int R>
__device__ void dot_rows(const uint8_t *wrow, const float *x, int n0, int rows, int k,
                         float *acc) {
    const int lane = threadIdx.x % WARP;
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    for (int e = lane * CHUNK; e < k; e += WARP * CHUNK) {
        float w[CHUNK];
        T::dq(wrow, e, w);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r < rows) {
                const float *xr = x + (size_t)(n0 + r) * k + e;
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < CHUNK; i++) s = fmaf(w[i], xr[i], s);
                acc[r] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
}

// y = x wᵀ (+ bias) (+ res). `bias` and `res` are read only when their flags are set.
template <typename T, int R>
__device__ void matvec(const uint8_t *w, const float *x, float *y, const float *bias,
                       const float *res, int has_bias, int has_res, int n, int k, int cols) {
    const int col = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (col >= cols) return;
    const uint8_t *wrow = w + (size_t)col * (k / T::QK) * T::BYTES;
    for (int n0 = blockIdx.y * R; n0 < n; n0 += gridDim.y * R) {
        const int rows = min(R, n - n0);
        float acc[R];
        dot_rows<T, R>(wrow, x, n0, rows, k, acc);
        if (threadIdx.x % WARP == 0) {
            for (int r = 0; r < rows; r++) {
                float v = acc[r];
                if (has_bias) v += bias[col];
                if (has_res) v += res[(size_t)(n0 + r) * cols + col];
                y[(size_t)(n0 + r) * cols + col] = v;
            }
        }
    }
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }

// candle's `gelu` (the tanh approximation), as Gemma's MLP uses.
__device__ __forceinline__ float gelu(float g) {
    return 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
}

// The gated MLP's first half: y = act(x gateᵀ) * (x upᵀ); act 0 is SiLU, 1 is GELU.
template <typename T, int R>
__device__ void glu(const uint8_t *gate, const uint8_t *up, const float *x, float *y, int act,
                    int n, int k, int cols) {
    const int col = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (col >= cols) return;
    const size_t stride = (size_t)col * (k / T::QK) * T::BYTES;
    for (int n0 = blockIdx.y * R; n0 < n; n0 += gridDim.y * R) {
        const int rows = min(R, n - n0);
        float g[R], u[R];
        dot_rows<T, R>(gate + stride, x, n0, rows, k, g);
        dot_rows<T, R>(up + stride, x, n0, rows, k, u);
        if (threadIdx.x % WARP == 0) {
            for (int r = 0; r < rows; r++) {
                const float a = act ? gelu(g[r]) : silu(g[r]);
                y[(size_t)(n0 + r) * cols + col] = a * u[r];
            }
        }
    }
}

#define QUANT_KERNELS_R(T, SUFFIX, R)                                                         \
    extern "C" __global__ void matvec_##T##SUFFIX(const uint8_t *w, const float *x, float *y, \
                                                  const float *bias, const float *res,        \
                                                  int has_bias, int has_res, int n, int k,    \
                                                  int cols) {                                 \
        matvec<T, R>(w, x, y, bias, res, has_bias, has_res, n, k, cols);                      \
    }                                                                                         \
    extern "C" __global__ void glu_##T##SUFFIX(const uint8_t *gate, const uint8_t *up,        \
                                               const float *x, float *y, int act, int n,      \
                                               int k, int cols) {                             \
        glu<T, R>(gate, up, x, y, act, n, k, cols);                                           \
    }
#define QUANT_KERNELS(T) QUANT_KERNELS_R(T, , ROWS) QUANT_KERNELS_R(T, _tall, TALL_ROWS)

QUANT_KERNELS(Q4_0)
QUANT_KERNELS(Q4_1)
QUANT_KERNELS(Q5_0)
QUANT_KERNELS(Q5_1)
QUANT_KERNELS(Q8_0)
QUANT_KERNELS(Q4_K)
QUANT_KERNELS(Q5_K)
QUANT_KERNELS(Q6_K)

// ---------------------------------------------------------------------------------------------
// RoPE and the KV-cache write in one pass. Grid (tokens, heads + kv_heads), d / 2 threads.
// q `[n, heads * d]`, k and v `[n, kv_heads * d]` (packed tokens); cos and sin
// `[context, d / 2]`; token t sits at position pos[t] and goes to cache row row[t], slot
// slot[t]; the cache is `[batch, kv_heads, cap, d]`. Rotated queries go to q_out.
extern "C" __global__ void rope_store(const float *q, const float *k, const float *v,
                                      const float *cos_t, const float *sin_t,
                                      const uint32_t *pos, const uint32_t *row,
                                      const uint32_t *slot, float *q_out, float *kc, float *vc,
                                      int heads, int kv_heads, int d, int cap, int interleaved) {
    const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = d / 2;
    if (i >= half) return;
    const float c = cos_t[(size_t)pos[t] * half + i], s = sin_t[(size_t)pos[t] * half + i];
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    if (head < heads) {
        const float *src = q + ((size_t)t * heads + head) * d;
        float *dst = q_out + ((size_t)t * heads + head) * d;
        dst[a] = src[a] * c - src[b] * s;
        dst[b] = src[a] * s + src[b] * c;
    } else {
        const int kh = head - heads;
        const float *ks = k + ((size_t)t * kv_heads + kh) * d;
        const float *vs = v + ((size_t)t * kv_heads + kh) * d;
        const size_t at = (((size_t)row[t] * kv_heads + kh) * cap + slot[t]) * d;
        kc[at + a] = ks[a] * c - ks[b] * s;
        kc[at + b] = ks[a] * s + ks[b] * c;
        vc[at + a] = vs[a];
        vc[at + b] = vs[b];
    }
}

// ---------------------------------------------------------------------------------------------
// Attention for every packed query of a call. Grid (tokens, heads), ATT_WARPS warps per block.
// Query t reads `meta[3t .. 3t + 3]` = (cache row, offset into `keys`, key count): the cache
// slots it sees, in position order. Warp w takes key tiles w, w + ATT_WARPS, ... of 32 keys
// (one key per lane for the scores, then the tile's keys in order for the values), keeping an
// online softmax; the warps' partial results are merged in warp order. The split depends only
// on the key count, so a query's output does not depend on the rest of the call.

#define ATT_WARPS 4
#define MAX_D 256

extern "C" __global__ void attend(const float *q, const float *kc, const float *vc,
                                  const uint32_t *keys, const uint32_t *meta, float *out,
                                  int heads, int kv_heads, int d, int cap, float scale) {
    const int t = blockIdx.x, head = blockIdx.y;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int kh = head / (heads / kv_heads), per_lane = d / WARP;
    const uint32_t crow = meta[3 * t], off = meta[3 * t + 1], count = meta[3 * t + 2];
    const float *kbase = kc + ((size_t)crow * kv_heads + kh) * cap * d;
    const float *vbase = vc + ((size_t)crow * kv_heads + kh) * cap * d;

    __shared__ __align__(16) float qs[MAX_D];
    __shared__ float part_m[ATT_WARPS], part_l[ATT_WARPS];
    __shared__ float part_acc[ATT_WARPS][MAX_D];
    for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = q[((size_t)t * heads + head) * d + i];
    __syncthreads();

    float m = -INFINITY, l = 0.f, acc[MAX_D / WARP];
#pragma unroll
    for (int i = 0; i < MAX_D / WARP; i++) acc[i] = 0.f;
    for (uint32_t base = warp * WARP; base < count; base += ATT_WARPS * WARP) {
        const uint32_t j = base + lane;
        const bool valid = j < count;
        const uint32_t my_slot = valid ? keys[off + j] : 0;
        float s = -INFINITY;
        if (valid) {
            // Vector loads (rows are 16-byte aligned: d is a multiple of 32), summed in order.
            const float4 *kr = reinterpret_cast<const float4 *>(kbase + (size_t)my_slot * d);
            const float4 *q4 = reinterpret_cast<const float4 *>(qs);
            float dot = 0.f;
#pragma unroll 8
            for (int i = 0; i < d / 4; i++) {
                const float4 kv = kr[i], qv = q4[i];
                dot = fmaf(qv.x, kv.x, dot);
                dot = fmaf(qv.y, kv.y, dot);
                dot = fmaf(qv.z, kv.z, dot);
                dot = fmaf(qv.w, kv.w, dot);
            }
            s = dot * scale;
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float p = valid ? expf(s - m_new) : 0.f;
        const float corr = expf(m - m_new);
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < MAX_D / WARP; i++) acc[i] *= corr;
        const int in_tile = min((uint32_t)WARP, count - base);
#pragma unroll 4
        for (int kk = 0; kk < in_tile; kk++) {
            const float pk = __shfl_sync(0xffffffffu, p, kk);
            const uint32_t sk = __shfl_sync(0xffffffffu, my_slot, kk);
            const float *vr = vbase + (size_t)sk * d;
#pragma unroll
            for (int i = 0; i < MAX_D / WARP; i++)
                if (i < per_lane) acc[i] = fmaf(pk, vr[lane + WARP * i], acc[i]);
        }
        m = m_new;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
    for (int i = 0; i < per_lane; i++) part_acc[warp][lane + WARP * i] = acc[i];
    __syncthreads();

    float big = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, part_m[w]);
    float total = 0.f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (part_l[w] > 0.f) total += part_l[w] * expf(part_m[w] - big);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (part_l[w] > 0.f) o += part_acc[w][i] * expf(part_m[w] - big);
        out[((size_t)t * heads + head) * d + i] = o / total;
    }
}
