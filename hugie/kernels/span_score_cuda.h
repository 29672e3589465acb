// Host-side interface of the CUDA SpanScore kernels (plain C so span_score.cc needs no CUDA headers).
//
// Usage per call, all on one stream:
//   hugie_span_score_cuda_count(...)   RoPE + pass 1 (count per (batch, slot, start) row) + scan; syncs
//                                      once to read N
//   allocate outputs for N rows
//   hugie_span_score_cuda_fill(...)    pass 2 writes the rows (only when N > 0)
//   hugie_span_score_cuda_release(...) stream-ordered free of the scratch memory
// Every function returns a cudaError_t value (0 = success).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct HugieSpanScoreCudaWork {
  void* scratch;       // one cudaMallocAsync block: rotated q, rotated k, counts, offsets
  const float* qr;     // [B, K, L, D] rotated q (inside scratch)
  const float* kr;     // [B, L, D] rotated k, once per row for all its slots (inside scratch)
  const long long* offsets;  // [B*K*L + 1] exclusive prefix sum of per-row counts (inside scratch)
  const float* start_bias;   // [B, K, L]
  const float* end_bias;     // [B, K, L]
  const int64_t* mask;       // [B, L]
  int64_t batch, slots, length, dim, width;  // width already clamped to [0, length]
  const float* threshold;  // device pointer to the logit threshold (the op's input)
  long long total;     // N, valid after count
} HugieSpanScoreCudaWork;

// q [B, K, L, D], k [B, L, D], start_bias / end_bias [B, K, L], mask [B, L]; spans are [N, 4] rows.
int hugie_span_score_cuda_count(const float* q, const float* k, const float* start_bias,
                                const float* end_bias, const int64_t* mask, int64_t batch, int64_t slots,
                                int64_t length, int64_t dim, const float* threshold, int64_t max_width,
                                void* stream, HugieSpanScoreCudaWork* work);

int hugie_span_score_cuda_fill(const HugieSpanScoreCudaWork* work, int64_t* spans, float* scores,
                               void* stream);

int hugie_span_score_cuda_release(HugieSpanScoreCudaWork* work, void* stream);

const char* hugie_span_score_cuda_error_string(int error);

#ifdef __cplusplus
}
#endif
