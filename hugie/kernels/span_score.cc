// hugie::SpanScore: fused Global Pointer span scoring as an onnxruntime custom op (lite API).
//
// Inputs  q [B, K, L, D] float (before RoPE; one row carries K prompt slots), k [B, L, D] float (before
//         RoPE; shared by the slots of a row), start_bias, end_bias [B, K, L] float, span_mask [B, L] int64,
//         threshold float scalar (a logit; an input, so one session serves every threshold).
// Attrs   max_width (int W).
// Outputs spans [N, 4] int64 rows (batch, slot, start, end inclusive), scores [N] float logits, for
//         mask[b,i] && mask[b,j] && 0 <= j - i < W && s(i, j) > threshold, ordered by (batch, slot, start, end).
// s(i, j) = <rope(q[b,s])_i, rope(k[b])_j> / sqrt(D) + start_bias[b,s,i] + end_bias[b,s,j]  (hugie/scoring.py).
// Only the band j - i < W is computed; nothing of size B x L x L is allocated.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef HUGIE_WITH_CUDA
#include "span_score_cuda.h"
#endif

#define HUGIE_EXPORT __attribute__((visibility("default")))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HUGIE_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HUGIE_SIMD_CLONES
#endif

namespace {

using Ort::Custom::Tensor;

constexpr double kRopeBase = 10000.0;
constexpr int64_t kRowsPerTask = 64;  // start rows of one batch (all its slots) handled by one thread-pool task

// Attributes shared by the CPU and CUDA kernels. Errors are kept and reported from Compute,
// because exceptions must not escape kernel creation through the C ABI.
struct SpanScoreAttrs {
  int64_t max_width = 0;
  std::string error;

  SpanScoreAttrs(const OrtApi* api, const OrtKernelInfo* info) {
    OrtStatus* st = api->KernelInfoGetAttribute_int64(info, "max_width", &max_width);
    if (st != nullptr) {
      error = std::string("SpanScore: missing or invalid attribute max_width (int): ") + api->GetErrorMessage(st);
      api->ReleaseStatus(st);
    }
  }
};

struct Shapes {
  int64_t batch = 0, slots = 0, length = 0, dim = 0;
};

// Validates the six inputs; returns an empty string when they are consistent.
std::string check_inputs(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& start_bias,
                         const Tensor<float>& end_bias, const Tensor<int64_t>& mask, const Tensor<float>& threshold,
                         Shapes* out) {
  const auto& qs = q.Shape();
  if (qs.size() != 4) return "SpanScore: q must have shape [B, K, L, D], got rank " + std::to_string(qs.size());
  if (k.Shape() != std::vector<int64_t>{qs[0], qs[2], qs[3]})
    return "SpanScore: k must have shape [B, L, D] with the B, L and D of q [B, K, L, D], got [" + k.Shape2Str() +
           "]";
  const std::vector<int64_t> bkl{qs[0], qs[1], qs[2]};
  if (start_bias.Shape() != bkl)
    return "SpanScore: start_bias must have shape [B, K, L], got [" + start_bias.Shape2Str() + "]";
  if (end_bias.Shape() != bkl)
    return "SpanScore: end_bias must have shape [B, K, L], got [" + end_bias.Shape2Str() + "]";
  if (mask.Shape() != std::vector<int64_t>{qs[0], qs[2]})
    return "SpanScore: span_mask must have shape [B, L], got [" + mask.Shape2Str() + "]";
  if (threshold.NumberOfElement() != 1)
    return "SpanScore: threshold must hold one float (the logit), got shape [" + threshold.Shape2Str() + "]";
  if (qs[3] % 2 != 0)
    return "SpanScore: head dim D must be even for RoPE (pairs (2m, 2m+1)), got D=" + std::to_string(qs[3]);
  out->batch = qs[0];
  out->slots = qs[1];
  out->length = qs[2];
  out->dim = qs[3];
  return {};
}

// cos/sin of p * 10000^(-2m/D) for p < length, m < D/2, computed in double then rounded to float
// (like scoring.rope_tables). Cached per kernel and grown on demand: an angle depends only on (p, m, D).
struct RopeTable {
  int64_t length = 0, dim = 0;
  std::vector<float> cos, sin;  // [length, D/2]
};

std::shared_ptr<const RopeTable> make_rope_table(int64_t length, int64_t dim) {
  auto t = std::make_shared<RopeTable>();
  t->length = length;
  t->dim = dim;
  const int64_t half = dim / 2;
  t->cos.resize(static_cast<size_t>(length * half));
  t->sin.resize(static_cast<size_t>(length * half));
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t m = 0; m < half; ++m) inv_freq[m] = std::pow(kRopeBase, -static_cast<double>(2 * m) / dim);
  for (int64_t p = 0; p < length; ++p)
    for (int64_t m = 0; m < half; ++m) {
      const double a = static_cast<double>(p) * inv_freq[m];
      t->cos[p * half + m] = static_cast<float>(std::cos(a));
      t->sin[p * half + m] = static_cast<float>(std::sin(a));
    }
  return t;
}

constexpr int64_t kTile = 32;  // band columns kept in registers per pass (4 AVX2 vectors)

// score[t] = dot(q, kt[:, t]) / sqrt_d + start + end[t] for t < width (rounded up to a tile).
// Dots accumulate in d order (no reassociation) in register tiles of kTile columns; the epilogue
// is in double like the NumPy reference. Vectorised across t, cloned for AVX2 with a generic
// fallback. kt and end must be readable up to a whole tile past width (zero / -inf padding).
HUGIE_SIMD_CLONES
void band_scores(const float* __restrict q, const float* __restrict kt, int64_t ld, int64_t dim, int64_t width,
                 double sqrt_d, double start, const float* __restrict end, double* __restrict score) {
  for (int64_t t0 = 0; t0 < width; t0 += kTile) {
    float tile[kTile] = {};
    for (int64_t d = 0; d < dim; ++d) {
      const float qd = q[d];
      const float* __restrict row = kt + d * ld + t0;
      for (int64_t u = 0; u < kTile; ++u) tile[u] += qd * row[u];
    }
    for (int64_t u = 0; u < kTile; ++u)
      score[t0 + u] = static_cast<double>(tile[u]) / sqrt_d + start + static_cast<double>(end[t0 + u]);
  }
}

struct Hit {
  int64_t start, end;
  float score;
};

struct CpuJob {
  const float *q, *k, *start_bias, *end_bias;
  const int64_t* mask;
  int64_t slots, length, dim, width;  // width clamped to [1, length]
  double threshold, sqrt_d;  // epilogue in double, like the NumPy reference
  const RopeTable* rope;
  int64_t tasks_per_batch;  // row blocks per batch
  std::vector<std::vector<Hit>>* hits;  // one vector per (batch, slot, row block): output order
};

// One task: rows [r0, r1) of one batch, for every slot. The k columns the band touches are rotated
// once (stored transposed, [D, cols]) and shared by the slots, which differ only in q and the biases.
// Emits each slot's hits in (start, end) order into that slot's vector.
void run_task(const CpuJob& job, int64_t task) {
  const int64_t b = task / job.tasks_per_batch;
  const int64_t block = task % job.tasks_per_batch;
  const int64_t r0 = block * kRowsPerTask;
  const int64_t r1 = std::min(job.length, r0 + kRowsPerTask);
  const int64_t L = job.length, D = job.dim, half = D / 2;
  const int64_t* mask = job.mask + b * L;
  bool any = false;
  for (int64_t i = r0; i < r1 && !any; ++i) any = mask[i] != 0;
  if (!any) return;

  const int64_t c1 = std::min(L, r1 - 1 + job.width);  // exclusive end of touched columns
  const int64_t used = c1 - r0;
  const int64_t cols = used + kTile;  // + padding read by the last tile of the last row
  thread_local std::vector<float> kt_buf, qrow_buf, end_buf;
  thread_local std::vector<double> score_buf;
  kt_buf.resize(static_cast<size_t>(D * cols));
  qrow_buf.resize(static_cast<size_t>(D));
  end_buf.resize(static_cast<size_t>(cols));
  score_buf.resize(static_cast<size_t>(job.width + kTile));
  // Raw pointers: keeps TLS lookups out of the loops.
  float* const kt = kt_buf.data();
  float* const qrow = qrow_buf.data();
  float* const end = end_buf.data();
  double* const score = score_buf.data();

  // k of the touched columns, rotated and transposed to [D, cols] (zero padding past `used`).
  const float* cosv = job.rope->cos.data();
  const float* sinv = job.rope->sin.data();
  const float* kb = job.k + b * L * D;
  for (int64_t d = 0; d < D; ++d) std::fill(kt + d * cols + used, kt + (d + 1) * cols, 0.f);
  for (int64_t c = 0; c < used; ++c) {
    const int64_t j = r0 + c;
    const float* x = kb + j * D;
    for (int64_t m = 0; m < half; ++m) {
      const float cs = cosv[j * half + m], sn = sinv[j * half + m];
      const float x0 = x[2 * m], x1 = x[2 * m + 1];
      kt[(2 * m) * cols + c] = x0 * cs + (-x1) * sn;
      kt[(2 * m + 1) * cols + c] = x1 * cs + x0 * sn;
    }
  }

  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t slot = 0; slot < job.slots; ++slot) {
    const int64_t bs = b * job.slots + slot;  // (batch, slot) row of q and the biases
    // End bias of the touched columns, -inf where the mask forbids an end (so s > threshold is
    // false without a branch).
    const float* eb = job.end_bias + bs * L;
    for (int64_t c = 0; c < cols; ++c) end[c] = c < used && mask[r0 + c] != 0 ? eb[r0 + c] : kNegInf;

    std::vector<Hit>& out = (*job.hits)[bs * job.tasks_per_batch + block];
    const float* qb = job.q + bs * L * D;
    const float* sb = job.start_bias + bs * L;
    for (int64_t i = r0; i < r1; ++i) {
      if (mask[i] == 0) continue;
      const float* x = qb + i * D;
      for (int64_t m = 0; m < half; ++m) {
        const float cs = cosv[i * half + m], sn = sinv[i * half + m];
        const float x0 = x[2 * m], x1 = x[2 * m + 1];
        qrow[2 * m] = x0 * cs + (-x1) * sn;
        qrow[2 * m + 1] = x1 * cs + x0 * sn;
      }
      const int64_t w = std::min(job.width, L - i);
      band_scores(qrow, kt + (i - r0), cols, D, w, job.sqrt_d, sb[i], end + (i - r0), score);
      for (int64_t t = 0; t < w; ++t)
        if (score[t] > job.threshold) out.push_back(Hit{i, i + t, static_cast<float>(score[t])});
    }
  }
}

void run_task_trampoline(void* job, size_t task) {
  run_task(*static_cast<const CpuJob*>(job), static_cast<int64_t>(task));
}

struct SpanScoreCpu {
  SpanScoreAttrs attrs;
  std::mutex rope_mutex;
  std::shared_ptr<const RopeTable> rope;

  SpanScoreCpu(const OrtApi* api, const OrtKernelInfo* info) : attrs(api, info) {}

  std::shared_ptr<const RopeTable> rope_for(int64_t length, int64_t dim) {
    std::lock_guard<std::mutex> lock(rope_mutex);
    if (!rope || rope->dim != dim || rope->length < length) rope = make_rope_table(length, dim);
    return rope;
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& q, const Tensor<float>& k,
                      const Tensor<float>& start_bias, const Tensor<float>& end_bias, const Tensor<int64_t>& mask,
                      const Tensor<float>& threshold, Tensor<int64_t>& spans, Tensor<float>& scores) {
    if (!attrs.error.empty()) return Ort::Status(attrs.error.c_str(), ORT_INVALID_ARGUMENT);
    Shapes s;
    const std::string err = check_inputs(q, k, start_bias, end_bias, mask, threshold, &s);
    if (!err.empty()) return Ort::Status(err.c_str(), ORT_INVALID_ARGUMENT);

    const int64_t width = std::min(attrs.max_width, s.length);
    const int64_t tasks_per_batch = s.length > 0 ? (s.length + kRowsPerTask - 1) / kRowsPerTask : 1;
    std::vector<std::vector<Hit>> hits;  // [B, K, row blocks], filled in parallel, concatenated in order
    if (s.batch > 0 && s.slots > 0 && s.length > 0 && width > 0) {
      const auto table = rope_for(s.length, s.dim);
      hits.resize(static_cast<size_t>(s.batch * s.slots * tasks_per_batch));
      CpuJob job{q.Data(), k.Data(), start_bias.Data(), end_bias.Data(), mask.Data(), s.slots, s.length, s.dim,
                 width, static_cast<double>(threshold.Data()[0]), std::sqrt(static_cast<double>(s.dim)),
                 table.get(), tasks_per_batch, &hits};
      try {
        Ort::KernelContext(context).ParallelFor(run_task_trampoline, static_cast<size_t>(s.batch * tasks_per_batch),
                                                0, &job);
      } catch (const std::exception& e) {
        return Ort::Status((std::string("SpanScore: CPU kernel failed: ") + e.what()).c_str(), ORT_FAIL);
      }
    }

    size_t total = 0;
    for (const auto& h : hits) total += h.size();
    int64_t* sp = spans.Allocate({static_cast<int64_t>(total), 4});
    float* sc = scores.Allocate({static_cast<int64_t>(total)});
    size_t n = 0;
    for (size_t t = 0; t < hits.size(); ++t) {
      const int64_t bs = static_cast<int64_t>(t) / tasks_per_batch;
      const int64_t b = bs / s.slots, slot = bs % s.slots;
      for (const Hit& h : hits[t]) {
        sp[4 * n] = b;
        sp[4 * n + 1] = slot;
        sp[4 * n + 2] = h.start;
        sp[4 * n + 3] = h.end;
        sc[n] = h.score;
        ++n;
      }
    }
    return Ort::Status{nullptr};
  }
};

#ifdef HUGIE_WITH_CUDA
struct SpanScoreCuda {
  SpanScoreAttrs attrs;

  SpanScoreCuda(const OrtApi* api, const OrtKernelInfo* info) : attrs(api, info) {}

  static Ort::Status cuda_status(const char* where, int code) {
    const std::string msg = std::string("SpanScore CUDA ") + where + ": " + hugie_span_score_cuda_error_string(code);
    return Ort::Status(msg.c_str(), ORT_FAIL);
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& q, const Tensor<float>& k,
                      const Tensor<float>& start_bias, const Tensor<float>& end_bias, const Tensor<int64_t>& mask,
                      const Tensor<float>& threshold, Tensor<int64_t>& spans, Tensor<float>& scores) {
    if (!attrs.error.empty()) return Ort::Status(attrs.error.c_str(), ORT_INVALID_ARGUMENT);
    Shapes s;
    const std::string err = check_inputs(q, k, start_bias, end_bias, mask, threshold, &s);
    if (!err.empty()) return Ort::Status(err.c_str(), ORT_INVALID_ARGUMENT);

    void* stream = Ort::KernelContext(context).GetGPUComputeStream();
    HugieSpanScoreCudaWork work;
    int rc = hugie_span_score_cuda_count(q.Data(), k.Data(), start_bias.Data(), end_bias.Data(), mask.Data(),
                                         s.batch, s.slots, s.length, s.dim, threshold.Data(), attrs.max_width,
                                         stream, &work);
    if (rc != 0) {
      hugie_span_score_cuda_release(&work, stream);
      return cuda_status("count pass", rc);
    }
    Ort::Status status{nullptr};
    try {
      int64_t* sp = spans.Allocate({static_cast<int64_t>(work.total), 4});
      float* sc = scores.Allocate({static_cast<int64_t>(work.total)});
      rc = hugie_span_score_cuda_fill(&work, sp, sc, stream);
      if (rc != 0) status = cuda_status("fill pass", rc);
    } catch (const std::exception& e) {
      status = Ort::Status((std::string("SpanScore: output allocation failed: ") + e.what()).c_str(), ORT_FAIL);
    }
    rc = hugie_span_score_cuda_release(&work, stream);
    if (rc != 0 && status.IsOK()) status = cuda_status("scratch release", rc);
    return status;
  }
};
#endif

}  // namespace

extern "C" HUGIE_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                  const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // The oldest API table still lets us report why.
    const OrtApi* v1 = api_base->GetApi(1);
    const std::string msg = std::string("hugie SpanScore was built against onnxruntime API ") +
                            std::to_string(ORT_API_VERSION) + " but the runtime is " + api_base->GetVersionString();
    return v1 ? v1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);

  // Op definitions and domains must outlive every session using them: created once, never freed.
  static std::mutex mutex;
  static std::vector<OrtCustomOpDomain*>* domains = new std::vector<OrtCustomOpDomain*>();
  static Ort::Custom::OrtLiteCustomOp* cpu_op = nullptr;
#ifdef HUGIE_WITH_CUDA
  static Ort::Custom::OrtLiteCustomOp* cuda_op = nullptr;
#endif
  std::lock_guard<std::mutex> lock(mutex);
  try {
    if (cpu_op == nullptr)
      cpu_op = Ort::Custom::CreateLiteCustomOp<SpanScoreCpu>("SpanScore", "CPUExecutionProvider", 1);
#ifdef HUGIE_WITH_CUDA
    if (cuda_op == nullptr)
      cuda_op = Ort::Custom::CreateLiteCustomOp<SpanScoreCuda>("SpanScore", "CUDAExecutionProvider", 1);
#endif
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("hugie SpanScore: ") + e.what()).c_str());
  }

  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain("hugie", &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, cpu_op)) return st;
#ifdef HUGIE_WITH_CUDA
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, cuda_op)) return st;
#endif
  if (OrtStatus* st = api->AddCustomOpDomain(options, domain)) return st;
  domains->push_back(domain);
  return nullptr;
}
