// CUDA implementation of hugie::SpanScore (see span_score.cc for the op contract).
//
// Per call, all stream-ordered on ORT's compute stream:
//   1. rope_kernel:  rotate q ([B, K, L, D]) and k ([B, L, D], once per row for all its slots)
//                    into scratch.
//   2. count_kernel: one block per (batch, slot, start) row counts the band entries above threshold.
//   3. scan_kernel:  single-block exclusive scan of the B*K*L + 1 counts -> row offsets; the last
//                    offset is N, copied to the host (the only host sync). Rows are numbered in
//                    (batch, slot, start) order, so the offsets already give the output order.
//   4. fill_kernel:  same blocks recompute the scores and write rows at their offsets; a block
//                    scan over the candidate flags keeps rows ordered by end within a start row.
// Only the band (j - i < W) is ever computed; memory is O(B * K * L * D).
#include "span_score_cuda.h"

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace {

constexpr int kRowThreads = 128;   // threads per (batch, start) row
constexpr int kScanThreads = 1024;
constexpr int kRopeThreads = 256;

size_t align_up(size_t n) { return (n + 255) & ~static_cast<size_t>(255); }

// RoPE exactly like hugie/scoring.py: angle computed in double, cos/sin rounded to float,
// then out = x * cos + rotated * sin in float. x is [rows, D] with position = row % length, which
// holds for q [B, K, L, D] and k [B, L, D] alike.
__global__ void rope_kernel(const float* __restrict__ x, float* __restrict__ xr, long long pairs_total,
                            int64_t length, int64_t dim) {
  const int64_t half = dim / 2;
  for (long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; idx < pairs_total;
       idx += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int64_t m = idx % half;
    const int64_t row = idx / half;
    const int64_t pos = row % length;
    const double inv_freq = pow(10000.0, -static_cast<double>(2 * m) / static_cast<double>(dim));
    double s, c;
    sincos(static_cast<double>(pos) * inv_freq, &s, &c);
    const float cf = static_cast<float>(c), sf = static_cast<float>(s);
    const int64_t at = row * dim + 2 * m;
    const float x0 = x[at], x1 = x[at + 1];
    xr[at] = __fadd_rn(__fmul_rn(x0, cf), __fmul_rn(-x1, sf));
    xr[at + 1] = __fadd_rn(__fmul_rn(x1, cf), __fmul_rn(x0, sf));
  }
}

void launch_rope(const float* x, float* xr, long long rows, int64_t length, int64_t dim, cudaStream_t stream) {
  const long long pairs = rows * (dim / 2);
  const long long blocks = (pairs + kRopeThreads - 1) / kRopeThreads;
  rope_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kRopeThreads, 0, stream>>>(
      x, xr, pairs, length, dim);
}

// s(i, j) for the row whose rotated q sits in shared memory.
__device__ __forceinline__ double band_score(const float2* __restrict__ q_row, const float* __restrict__ kr,
                                            int64_t krow, int64_t dim, double sqrt_d, float start_bias,
                                            float end_bias) {
  const float2* k_row = reinterpret_cast<const float2*>(kr + krow * dim);
  float acc = 0.f;
  for (int64_t d = 0; d < dim / 2; ++d) {
    const float2 a = q_row[d], b = k_row[d];
    acc = __fmaf_rn(a.x, b.x, acc);
    acc = __fmaf_rn(a.y, b.y, acc);
  }
  // Epilogue in double, like the NumPy reference (float32 dot / float64 sqrt(D) + biases).
  // Explicit rounding intrinsics: count and fill must reach bit-identical decisions.
  return __dadd_rn(__dadd_rn(__ddiv_rn(static_cast<double>(acc), sqrt_d), start_bias), end_bias);
}

__device__ __forceinline__ void load_q_row(float2* q_row, const float* qr, int64_t row, int64_t dim) {
  const float2* src = reinterpret_cast<const float2*>(qr + row * dim);
  for (int64_t d = threadIdx.x; d < dim / 2; d += blockDim.x) q_row[d] = src[d];
  __syncthreads();
}

// A block's row is (b * K + s) * L + i: it indexes q rows and the biases; the token row
// b * L + i indexes k and the mask, which the slots of a row share.
__device__ __forceinline__ int64_t token_row(int64_t row, int64_t slots, int64_t length) {
  return row / (slots * length) * length + row % length;
}

__global__ void __launch_bounds__(kRowThreads)
    count_kernel(const float* __restrict__ qr, const float* __restrict__ kr, const float* __restrict__ start_bias,
                 const float* __restrict__ end_bias, const int64_t* __restrict__ mask, int64_t slots,
                 int64_t length, int64_t dim, int64_t width, const float* __restrict__ threshold_ptr,
                 double sqrt_d, long long* __restrict__ counts) {
  extern __shared__ float2 q_row[];
  using Reduce = cub::BlockReduce<int, kRowThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;

  const int64_t row = blockIdx.x;  // (b * K + s) * L + i
  const int64_t tok = token_row(row, slots, length);  // b * L + i
  if (mask[tok] == 0) {            // block-uniform exit
    if (threadIdx.x == 0) counts[row] = 0;
    return;
  }
  const int64_t i = row % length;
  load_q_row(q_row, qr, row, dim);

  const double threshold = static_cast<double>(*threshold_ptr);
  const int64_t candidates = min(width, length - i);
  const float sb = start_bias[row];
  int hits = 0;
  for (int64_t t = threadIdx.x; t < candidates; t += kRowThreads) {
    // k and mask at b * L + j; the end bias at (b * K + s) * L + j
    if (mask[tok + t] != 0 && band_score(q_row, kr, tok + t, dim, sqrt_d, sb, end_bias[row + t]) > threshold)
      ++hits;
  }
  const int total = Reduce(reduce_storage).Sum(hits);
  if (threadIdx.x == 0) counts[row] = total;
}

// Exclusive scan of n values with one block: each thread scans a contiguous chunk.
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(const long long* __restrict__ counts, long long* __restrict__ offsets, long long n) {
  using Scan = cub::BlockScan<long long, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const long long chunk = (n + kScanThreads - 1) / kScanThreads;
  const long long begin = min(n, chunk * threadIdx.x), end = min(n, begin + chunk);
  long long local = 0;
  for (long long x = begin; x < end; ++x) local += counts[x];
  long long running;
  Scan(scan_storage).ExclusiveSum(local, running);
  for (long long x = begin; x < end; ++x) {
    offsets[x] = running;
    running += counts[x];
  }
}

__global__ void __launch_bounds__(kRowThreads)
    fill_kernel(const float* __restrict__ qr, const float* __restrict__ kr, const float* __restrict__ start_bias,
                const float* __restrict__ end_bias, const int64_t* __restrict__ mask,
                const long long* __restrict__ offsets, int64_t slots, int64_t length, int64_t dim,
                int64_t width, const float* __restrict__ threshold_ptr, double sqrt_d,
                int64_t* __restrict__ spans, float* __restrict__ scores) {
  extern __shared__ float2 q_row[];
  using Scan = cub::BlockScan<int, kRowThreads>;
  __shared__ typename Scan::TempStorage scan_storage;

  const int64_t row = blockIdx.x;  // (b * K + s) * L + i
  const int64_t tok = token_row(row, slots, length);
  if (mask[tok] == 0 || offsets[row + 1] == offsets[row]) return;  // block-uniform
  const int64_t i = row % length;
  const int64_t b = row / (slots * length);
  const int64_t slot = row / length % slots;
  load_q_row(q_row, qr, row, dim);

  const double threshold = static_cast<double>(*threshold_ptr);
  const int64_t candidates = min(width, length - i);
  const float sb = start_bias[row];
  long long out = offsets[row];
  // Every thread runs the same number of chunks so the block scan stays collective.
  for (int64_t base = 0; base < candidates; base += kRowThreads) {
    const int64_t t = base + threadIdx.x;
    double s = 0.0;
    int keep = 0;
    if (t < candidates && mask[tok + t] != 0) {
      s = band_score(q_row, kr, tok + t, dim, sqrt_d, sb, end_bias[row + t]);
      keep = s > threshold;
    }
    int pos, chunk_hits;
    Scan(scan_storage).ExclusiveSum(keep, pos, chunk_hits);
    const long long at = out + pos;
    if (keep && at < offsets[row + 1]) {  // the guard only protects memory; passes agree exactly
      spans[4 * at] = b;
      spans[4 * at + 1] = slot;
      spans[4 * at + 2] = i;
      spans[4 * at + 3] = i + t;
      scores[at] = static_cast<float>(s);
    }
    out += chunk_hits;
    __syncthreads();  // scan_storage is reused by the next chunk
  }
}

}  // namespace

extern "C" {

int hugie_span_score_cuda_count(const float* q, const float* k, const float* start_bias, const float* end_bias,
                                const int64_t* mask, int64_t batch, int64_t slots, int64_t length,
                                int64_t dim, const float* threshold, int64_t max_width, void* stream_ptr,
                                HugieSpanScoreCudaWork* work) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  *work = HugieSpanScoreCudaWork{};
  work->start_bias = start_bias;
  work->end_bias = end_bias;
  work->mask = mask;
  work->batch = batch;
  work->slots = slots;
  work->length = length;
  work->dim = dim;
  work->width = max_width < 0 ? 0 : (max_width > length ? length : max_width);
  work->threshold = threshold;
  const long long tokens = static_cast<long long>(batch) * length;  // rows of k and the mask
  const long long rows = tokens * slots;  // (batch, slot, start) rows of q and the biases
  if (rows == 0 || work->width == 0 || dim <= 0) return cudaSuccess;
  if (rows > 0x7fffffffLL) return cudaErrorInvalidConfiguration;  // one block per (batch, slot, start) row

  const size_t q_bytes = align_up(sizeof(float) * static_cast<size_t>(rows) * dim);
  const size_t k_bytes = align_up(sizeof(float) * static_cast<size_t>(tokens) * dim);
  const size_t cnt_bytes = align_up(sizeof(long long) * static_cast<size_t>(rows + 1));
  cudaError_t err = cudaMallocAsync(&work->scratch, q_bytes + k_bytes + 2 * cnt_bytes, stream);
  if (err != cudaSuccess) return err;
  char* base = static_cast<char*>(work->scratch);
  float* qr = reinterpret_cast<float*>(base);
  float* kr = reinterpret_cast<float*>(base + q_bytes);
  long long* counts = reinterpret_cast<long long*>(base + q_bytes + k_bytes);
  long long* offsets = reinterpret_cast<long long*>(base + q_bytes + k_bytes + cnt_bytes);
  work->qr = qr;
  work->kr = kr;
  work->offsets = offsets;

  launch_rope(q, qr, rows, length, dim, stream);
  launch_rope(k, kr, tokens, length, dim, stream);  // once per row, shared by its K slots

  const double sqrt_d = sqrt(static_cast<double>(dim));
  const size_t smem = sizeof(float) * static_cast<size_t>(dim);
  count_kernel<<<static_cast<unsigned>(rows), kRowThreads, smem, stream>>>(
      qr, kr, start_bias, end_bias, mask, slots, length, dim, work->width, threshold, sqrt_d, counts);
  err = cudaMemsetAsync(counts + rows, 0, sizeof(long long), stream);
  if (err != cudaSuccess) return err;
  scan_kernel<<<1, kScanThreads, 0, stream>>>(counts, offsets, rows + 1);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  long long total = 0;
  err = cudaMemcpyAsync(&total, offsets + rows, sizeof(long long), cudaMemcpyDeviceToHost, stream);
  if (err != cudaSuccess) return err;
  err = cudaStreamSynchronize(stream);  // the one host sync: N decides the output shapes
  if (err != cudaSuccess) return err;
  work->total = total;
  return cudaSuccess;
}

int hugie_span_score_cuda_fill(const HugieSpanScoreCudaWork* work, int64_t* spans, float* scores,
                               void* stream_ptr) {
  if (work->total == 0) return cudaSuccess;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const long long rows = static_cast<long long>(work->batch) * work->slots * work->length;
  const double sqrt_d = sqrt(static_cast<double>(work->dim));
  const size_t smem = sizeof(float) * static_cast<size_t>(work->dim);
  fill_kernel<<<static_cast<unsigned>(rows), kRowThreads, smem, stream>>>(
      work->qr, work->kr, work->start_bias, work->end_bias, work->mask, work->offsets, work->slots, work->length,
      work->dim, work->width, work->threshold, sqrt_d, spans, scores);
  return cudaGetLastError();
}

int hugie_span_score_cuda_release(HugieSpanScoreCudaWork* work, void* stream_ptr) {
  if (work->scratch == nullptr) return cudaSuccess;
  cudaError_t err = cudaFreeAsync(work->scratch, static_cast<cudaStream_t>(stream_ptr));
  work->scratch = nullptr;
  return err;
}

const char* hugie_span_score_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

}  // extern "C"
