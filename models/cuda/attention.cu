/* models/cuda/attention.cu — attention in one kernel with an online softmax (flash-attention
 * style) for head dimensions 64 and 128, bf16 inputs on the tensor cores (WMMA 16×16×16, fp32
 * accumulation): the scores of a 64-query × 64-key tile never leave shared memory, so neither the
 * N×N score matrices nor the two batched products of the reference path (vit_cuda.cu) are
 * needed. Per block: 64 queries of one head of one image, 4 warps of 16 query rows; per key
 * tile: S = Q·Kᵀ·scale (WMMA) → running max and sum per row, P = e^(S−m) in bf16
 * (kernel_math.h's online softmax) → O = alpha·O + P·V (WMMA, O in shared memory) → at the end
 * O/l written as fp32 and/or bf16 rows [t, h·hd + i] like the reference. The two-product path
 * stays the reference (DINOMAP_CUDA_ATTENTION=gemm), and the GPU check compares the two. */
#include <mma.h>

#include "cuda_internal.h"
#include "../kernel_math.h"

using namespace nvcuda;

enum { BQ = 64, BK = 64, WARPS = 4, THREADS = WARPS * 32 };

template <int HD> static constexpr size_t smem_bytes()
{
    /* Q, K, V tiles (bf16), S (fp32) and P (bf16) per warp, O (fp32) */
    return (size_t)3 * BQ * HD * 2 + (size_t)BQ * BK * 4 + (size_t)BQ * BK * 2 +
           (size_t)BQ * HD * 4;
}

/* rows [r0, r0+64) of a tile from qkv (bf16 [T, 3D]) at column offset col, zero beyond n */
template <int HD>
static __device__ void load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *qkv, int64_t row0,
                                 int r0, int n, int64_t ld, int col)
{
    constexpr int V = HD / 8; /* 16-byte vectors per row */
    for (int i = threadIdx.x; i < BQ * V; i += THREADS) {
        int r = i / V, c = i % V;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + r < n)
            v = *(const uint4 *)(qkv + (row0 + r0 + r) * ld + col + c * 8);
        *(uint4 *)(dst + r * HD + c * 8) = v;
    }
}

template <int HD>
static __global__ void __launch_bounds__(THREADS)
    k_attention(const __nv_bfloat16 *qkv, float *o, __nv_bfloat16 *ob, int N, int D, float scale)
{
    extern __shared__ __align__(128) unsigned char sm[];
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)sm, *Ks = Qs + BQ * HD, *Vs = Ks + BK * HD;
    float *Ss = (float *)(Vs + BK * HD);
    __nv_bfloat16 *Ps = (__nv_bfloat16 *)(Ss + BQ * BK);
    float *Os = (float *)(Ps + BQ * BK);
    int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ld = 3 * (int64_t)D, row0 = (int64_t)b * N;
    load_tile<HD>(Qs, qkv, row0, q0, N, ld, h * HD);
    for (int i = threadIdx.x; i < BQ * HD; i += THREADS)
        Os[i] = 0.0f;
    /* this lane's row of the warp's 16 and its half of the tile's columns */
    int r = warp * 16 + (lane >> 1), half = lane & 1;
    float m = -INFINITY, l = 0.0f;
    float *Sw = Ss + warp * 16 * BK, *Ow = Os + warp * 16 * HD;
    __nv_bfloat16 *Pw = Ps + warp * 16 * BK;
    const __nv_bfloat16 *Qw = Qs + warp * 16 * HD;
    for (int k0 = 0; k0 < N; k0 += BK) {
        __syncthreads(); /* the previous tile's K, V are no longer read */
        load_tile<HD>(Ks, qkv, row0, k0, N, ld, D + h * HD);
        load_tile<HD>(Vs, qkv, row0, k0, N, ld, 2 * D + h * HD);
        __syncthreads();
        /* S = Q Kᵀ for the warp's 16 rows */
        for (int j = 0; j < BK / 16; j++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < HD / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bk;
                wmma::load_matrix_sync(a, Qw + kk * 16, HD);
                wmma::load_matrix_sync(bk, Ks + j * 16 * HD + kk * 16, HD);
                wmma::mma_sync(acc, a, bk, acc);
            }
            wmma::store_matrix_sync(Sw + j * 16, acc, BK, wmma::mem_row_major);
        }
        __syncwarp();
        /* the online softmax of row r over this tile (two lanes per row) */
        float *srow = Sw + (lane >> 1) * BK;
        int c0 = half * (BK / 2), valid = N - k0;
        float mx = -INFINITY;
        for (int c = c0; c < c0 + BK / 2; c++)
            if (c < valid)
                mx = fmaxf(mx, srow[c] * scale);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float mn = fmaxf(m, mx), alpha = dm_cm_online_alpha(m, mn), sum = 0.0f;
        for (int c = c0; c < c0 + BK / 2; c++) {
            float p = c < valid ? dm_cm_expf(srow[c] * scale - mn) : 0.0f;
            sum += p;
            Pw[(lane >> 1) * BK + c] = __nv_bfloat16_raw{ dm_cm_f32_bf16(p) };
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = alpha * l + sum;
        m = mn;
        for (int i = half * (HD / 2); i < (half + 1) * (HD / 2); i++)
            Ow[(lane >> 1) * HD + i] *= alpha;
        __syncwarp();
        /* O += P V */
        for (int j = 0; j < HD / 16; j++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, Ow + j * 16, HD, wmma::mem_row_major);
            for (int kk = 0; kk < BK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bv;
                wmma::load_matrix_sync(a, Pw + kk * 16, BK);
                wmma::load_matrix_sync(bv, Vs + kk * 16 * HD + j * 16, HD);
                wmma::mma_sync(acc, a, bv, acc);
            }
            wmma::store_matrix_sync(Ow + j * 16, acc, HD, wmma::mem_row_major);
        }
        __syncwarp();
    }
    int t = q0 + r;
    if (t >= N)
        return;
    float inv = 1.0f / l;
    int64_t base = (row0 + t) * D + h * HD;
    for (int i = half * (HD / 2); i < (half + 1) * (HD / 2); i++) {
        float v = Ow[(lane >> 1) * HD + i] * inv;
        if (o)
            o[base + i] = v;
        if (ob)
            ob[base + i] = __nv_bfloat16_raw{ dm_cm_f32_bf16(v) };
    }
}

int dm_cu_attention_supported(int hd) { return hd == 64 || hd == 128; }

int dm_cu_attention(const __nv_bfloat16 *qkv, float *o, __nv_bfloat16 *ob, int B, int N, int nh,
                    int hd, float scale, cudaStream_t st, dm_err *err)
{
    dim3 grid((unsigned)((N + BQ - 1) / BQ), (unsigned)nh, (unsigned)B);
    int D = nh * hd;
    if (hd == 64) {
        constexpr size_t sm = smem_bytes<64>();
        CU_TRY(cudaFuncSetAttribute(k_attention<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)sm), "the attention kernel's shared memory");
        k_attention<64><<<grid, THREADS, sm, st>>>(qkv, o, ob, N, D, scale);
    } else if (hd == 128) {
        constexpr size_t sm = smem_bytes<128>();
        CU_TRY(cudaFuncSetAttribute(k_attention<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)sm), "the attention kernel's shared memory");
        k_attention<128><<<grid, THREADS, sm, st>>>(qkv, o, ob, N, D, scale);
    } else {
        return dm_cu_err(err, DM_EUNSUPPORTED, "fused attention: head dimension %d", hd);
    }
    return dm_cu_check(cudaGetLastError(), "the attention kernel", err);
}
