/* Causal self-attention for short sequences with small heads, forward and backward, on the CPU.
 *
 * Compiled at first use by attention_kernel.py with the sizes as macros: T (sequence length),
 * H (heads), DH (head dimension), T and DH powers of two; once per (T, H, DH) and machine.
 * One (context, head) pair is a few KB: its whole attention — scores, causal softmax, weighted
 * values, and in backward all three input gradients — is computed from registers and L1 with no
 * intermediate tensors. PyTorch's batched 16×16 matmuls and its flash kernel spend most of their
 * time outside the arithmetic at these sizes.
 *
 * Register blocking, with GCC/Clang vector types (`vt`: T lanes over query positions t, `vd`:
 * DH lanes over the head dimension): every product below keeps T independent vector
 * accumulators, so the loops are limited by FMA throughput rather than by FMA latency. Scores
 * are held transposed, S^T[s] as a vector over queries t, so the softmax over keys s is
 * element-wise across vectors (no horizontal max or sum).
 *
 * Layouts (row-major, float32):
 *   qkv   (B, T, 3, H, DH)  the input projection's output, q | k | v along the last axis
 *   out   (B, T, H, DH)     attention output, heads concatenated
 *   prob  (B, H, T, T)      softmax probabilities P^T[s][t] (key s, query t), saved for backward
 *   dqkv  like qkv, dout like out
 *
 * Contexts are split over the OpenMP threads of the library that loads this one (PyTorch's own
 * pool: the shared object resolves libgomp to the copy PyTorch loaded). Every output element is
 * computed by one thread in a fixed order, so results do not depend on the thread count.
 */
#include <stdint.h>
#include <string.h>

#ifdef USE_LIBMVEC  /* glibc's vectorised expf, as its headers declare it under -ffast-math */
__attribute__((simd("notinbranch"))) float expf(float);
#else
#include <math.h>
#endif

#define C (H * DH)
#define ROW (3 * C)

typedef float vt __attribute__((vector_size(4 * T)));
typedef float vd __attribute__((vector_size(4 * DH)));
typedef float vd_u __attribute__((vector_size(4 * DH), aligned(4)));  /* unaligned rows of tensors */

static inline vd load(const float *p) { return *(const vd_u *)p; }
static inline void store(float *p, vd x) { *(vd_u *)p = x; }

static inline vt vexp(vt x) {
  vt r;
#pragma omp simd
  for (int i = 0; i < T; i++) r[i] = expf(x[i]);
  return r;
}

/* xt[d][t] = scale · x[t][d] for a (T, DH) block with row stride `stride`. */
static inline void transpose(const float *x, int64_t stride, float scale, vt xt[DH]) {
  float buf[DH][T];
  for (int t = 0; t < T; t++)
    for (int d = 0; d < DH; d++) buf[d][t] = x[t * stride + d] * scale;
  memcpy(xt, buf, sizeof buf);
}

/* xt[j][i] = x[i][j] for T vectors of T. */
static inline void transpose_square(const vt x[T], vt xt[T]) {
  float buf[T][T];
  for (int i = 0; i < T; i++)
    for (int j = 0; j < T; j++) buf[j][i] = x[i][j];
  memcpy(xt, buf, sizeof buf);
}

typedef int32_t vti __attribute__((vector_size(4 * T)));

static inline vt vmax(vt a, vt b) {  /* GCC's C has no vector ?: */
  const vti gt = a > b;
  return (vt)(((vti)a & gt) | ((vti)b & ~gt));
}

/* acc[i] = Σ_j a[j][i] · rows[j]: T vectors of DH from T scalar weights per row (vectors over i). */
static inline void weighted_rows(const vt a[T], const float *rows, int64_t stride, vd acc[T]) {
  for (int i = 0; i < T; i++) acc[i] = (vd){0};
  for (int j = 0; j < T; j++) {
    const vd r = load(rows + j * stride);
#pragma GCC unroll 64
    for (int i = 0; i < T; i++) acc[i] += a[j][i] * r;
  }
}

/* out[j] = Σ_d x[j][d] · yt[d]: T vectors over t from rows x[j] and transposed yt. */
static inline void rows_times(const float *x, int64_t stride, const vt yt[DH], vt out[T]) {
  for (int j = 0; j < T; j++) out[j] = (vt){0};
  for (int d = 0; d < DH; d++) {
    const vt y = yt[d];
#pragma GCC unroll 64
    for (int j = 0; j < T; j++) out[j] += x[j * stride + d] * y;
  }
}

void attention_forward(const float *restrict qkv, float *restrict out, float *restrict prob,
                       int64_t batch, float scale) {
#pragma omp parallel
  {
  vt mask[T]; /* mask[s][t] = 0 where t >= s, -inf where the query t comes before the key s */
  for (int s = 0; s < T; s++)
    for (int t = 0; t < T; t++) mask[s][t] = t >= s ? 0.0f : -__builtin_inff();
#pragma omp for schedule(static)
  for (int64_t b = 0; b < batch; b++) {
    for (int h = 0; h < H; h++) {
      const float *q = qkv + b * T * ROW + h * DH, *k = q + C, *v = q + 2 * C;
      vt qt[DH], st[T], pt[T];
      vd o[T];
      transpose(q, ROW, scale, qt);
      rows_times(k, ROW, qt, st);  /* S^T[s] = scale · Σ_d k[s][d] q[·][d] */
      vt mx = st[0];  /* the key s = 0 is seen by every query */
      for (int s = 1; s < T; s++) {
        st[s] += mask[s];
        mx = vmax(st[s], mx);
      }
      vt sum = {0};
      for (int s = 0; s < T; s++) {
        pt[s] = vexp(st[s] - mx);  /* exp(-inf) = 0 above the diagonal; the diagonal is finite */
        sum += pt[s];
      }
      const vt inv = 1.0f / sum;
      for (int s = 0; s < T; s++) pt[s] *= inv;
      /* o[t] = Σ_s P^T[s][t] v[s] */
      weighted_rows(pt, v, ROW, o);
      for (int t = 0; t < T; t++) store(out + b * T * C + t * C + h * DH, o[t]);
      memcpy(prob + (b * H + h) * T * T, pt, sizeof pt);
    }
  }
  }
}

/* With S = scale·QKᵀ (causal), P = softmax(S), O = PV:
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(P ∘ dP)),  dQ = scale·dS K,  dK = scale·dSᵀ Q. */
void attention_backward(const float *restrict qkv, const float *restrict prob,
                        const float *restrict dout, float *restrict dqkv, int64_t batch, float scale) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < batch; b++) {
    for (int h = 0; h < H; h++) {
      const float *q = qkv + b * T * ROW + h * DH, *k = q + C, *v = q + 2 * C;
      const float *dO = dout + b * T * C + h * DH;
      float *dq = dqkv + b * T * ROW + h * DH, *dk = dq + C, *dv = dq + 2 * C;
      vt pt[T], p[T], dot[DH], dpt[T], dst[T], ds[T];
      vd acc[T];
      memcpy(pt, prob + (b * H + h) * T * T, sizeof pt);
      /* dV[s] = Σ_t P[t][s] dO[t]; P[t] is a row of Pᵀ's transpose */
      transpose_square(pt, p);
      weighted_rows(p, dO, C, acc);
      for (int s = 0; s < T; s++) store(dv + s * ROW, acc[s]);
      /* dP^T[s] = Σ_d v[s][d] dO[·][d];  D = Σ_s P^T[s] ∘ dP^T[s];  dS^T = scale · P^T ∘ (dP^T − D) */
      transpose(dO, C, 1.0f, dot);
      rows_times(v, ROW, dot, dpt);
      vt D = {0};
      for (int s = 0; s < T; s++) D += pt[s] * dpt[s];
      for (int s = 0; s < T; s++) dst[s] = scale * pt[s] * (dpt[s] - D);
      /* dQ[t] = Σ_s dS[t][s] k[s] = Σ_s dS^T[s][t] k[s] */
      weighted_rows(dst, k, ROW, acc);
      for (int t = 0; t < T; t++) store(dq + t * ROW, acc[t]);
      /* dK[s] = Σ_t dS^T[s][t] q[t]: the weights are dS (rows over s) */
      transpose_square(dst, ds);
      weighted_rows(ds, q, ROW, acc);
      for (int s = 0; s < T; s++) store(dk + s * ROW, acc[s]);
    }
  }
}
