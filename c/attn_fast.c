/* attn_fast.c: the fast CPU MoDA attention (shared/moda/SPEC.md), forward and backward.
 *
 * Layout (SPEC section 4): a tile is BM query tokens x the G query heads that share one kv
 * head, so its R = BM*G rows all read the same keys. Row r of a tile is token t0 + r/G, head
 * g*G + r%G. Keys stream through in blocks; scores are computed block by block with an online
 * softmax (FlashAttention), so the T x S score matrix never exists.
 *
 * Every product goes through one register-blocked micro-kernel, C[MR x NR] (+)= A[MR x K] *
 * B[K x NR], with B packed so its NR columns are contiguous: the inner loop is NR independent
 * FMAs that gcc turns into vector FMAs. Scores use B = K^T (keys along columns), P*V uses B = V
 * (head dim along columns). Queries are pre-scaled by scale*log2(e) so probabilities are exp2
 * of score differences, computed by a polynomial that vectorises (libm's exp does not).
 *
 * Depth rows (kd, vd) join the same online softmax:
 * - token visibility: token t's L rows are seen only by t's G rows, a G x L product done per
 *   token with plain vectorised loops (a dense tile would waste a factor BM on it);
 * - chunk visibility (C tokens): the depth rows of the tile's chunk(s) form a virtual key list,
 *   entry e = u*L + l, streamed like sequence keys; each row sees one contiguous interval of
 *   it (tokens of its chunk up to itself), as it sees an interval [0, n) of sequence keys.
 * Both are written as "each row r sees columns [lo[r], hi[r]) of the current key block".
 *
 * Backward (two passes, so no two threads ever add into the same gradient element and the
 * result does not depend on the thread count or the schedule):
 * - pass 1, one item per (b, kv head, key block): loop over the query tiles that see the block,
 *   accumulate dK = scale * dS^T Q and dV = P^T dO in scratch, write them once. Chunk-visible
 *   depth rows are key blocks here too (their gradients sum over several query tiles).
 * - pass 2, one item per (b, kv head, query tile): dQ = scale * dS K over all key blocks, and
 *   the token-visible depth gradients, which only the tile's own rows produce.
 * P is recomputed from lse (float32 lse for f32; for f64 a float64 lse is recomputed first,
 * since float32 lse would cap f64 gradients at ~1e-7 relative accuracy).
 *
 * This file is compiled twice (see Makefile): plain x86-64, and with -mavx2 -mfma
 * -DMODA_AVX2, where the entry points get an _avx2 suffix; the plain build's public functions
 * pick one at run time. Within each build the typed part below is included twice (float,
 * double) from this same file. */
#ifndef MODA_ATTN_FAST_TYPED

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "moda_attn.h"

#ifdef MODA_AVX2
#define ISA(name) name##_avx2
#else
#define ISA(name) name##_base
#endif

/* Vector width of the micro-kernel: 32-byte AVX registers in the AVX2 build, 16-byte SSE2
 * registers in the baseline build (gcc splits wider vectors into scalar code there). */
#ifdef MODA_AVX2
#define VBYTES 32
#else
#define VBYTES 16
#endif
#define MR 6            /* micro-kernel rows; MR x NR accumulators = 12 vector registers */
#define BN 64           /* keys per block in the forward and in pass 2 */
#define BNK 48          /* keys per block in pass 1 (the M dim there: a multiple of MR) */
#define TILE_ROWS 96    /* target rows (tokens x G) of a query tile */
#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return min64(max64(x, lo), hi); }

/* Bump allocator over one thread's scratch; with base 0 it only measures. */
typedef struct { uintptr_t cur; } arena;
static void *carve(arena *a, int64_t nbytes) {
  void *r = (void *)a->cur;
  a->cur += (uintptr_t)round_up(nbytes > 0 ? nbytes : 1, 64);
  return r;
}

/* One call's geometry and shared buffers, for both dtypes. */
typedef struct {
  const moda_attn_params *p;
  int64_t C;          /* depth chunk in tokens; 1 = token visibility */
  int64_t BM;         /* query tokens per tile */
  int64_t ntiles;     /* ceil(T / BM) */
  int64_t off;        /* S - T: query t sits at absolute position t + off */
  int64_t scratch;    /* bytes of scratch per thread */
  char *base;         /* nthreads * scratch bytes */
  double *lse2;       /* backward: [B,Hq,T] lse in log2 units (also the f64 forward's output) */
  double *D;          /* backward: [B,Hq,T] <do, o> */
  /* pass 1 item decoding */
  int64_t nseqb, nchunks, nbpc, per_bg;
} fctx;

/* Sequence keys visible to query token t: [0, nseq). */
static inline int64_t nseq_of(const fctx *f, int64_t t) {
  return f->p->causal ? t + f->off + 1 : f->p->S;
}
/* Depth rows visible to query token t: those of tokens [ulo, uhi). */
static inline int64_t ulo_of(const fctx *f, int64_t t) { return t / f->C * f->C; }
static inline int64_t uhi_of(const fctx *f, int64_t t) {
  return f->p->causal ? t + 1 : min64(f->p->T, t / f->C * f->C + f->C);
}

#define MODA_ATTN_FAST_TYPED
#define real float
#define ubits uint32_t
#define NR (2 * VBYTES / 4)      /* micro-kernel columns: two vectors */
#define FN(name) name##_f32
#include "attn_fast.c"
#undef real
#undef ubits
#undef NR
#undef FN

#define real double
#define ubits uint64_t
#define NR (2 * VBYTES / 8)
#define FN(name) name##_f64
#include "attn_fast.c"
#undef real
#undef ubits
#undef NR
#undef FN
#undef MODA_ATTN_FAST_TYPED

/* One scratch region per thread (moda_parallel_for hands each worker a distinct tid). */
static int alloc_scratch(fctx *f, int64_t scratch, int nthreads) {
  f->scratch = round_up(scratch, 64);
  f->base = moda_aligned_alloc((size_t)(f->scratch * nthreads));
  if (!f->base) return moda_set_error(MODA_ERR_NOMEM, "moda_attn (fast cpu): out of memory for scratch");
  return MODA_OK;
}

static void init_ctx(fctx *f, const moda_attn_params *p) {
  memset(f, 0, sizeof *f);
  f->p = p;
  f->C = p->chunk > 0 ? p->chunk : 1;
  f->BM = max64(1, TILE_ROWS / p->G);
  f->BM = min64(f->BM, p->T);
  f->ntiles = (p->T + f->BM - 1) / f->BM;
  f->off = p->S - p->T;
}

int ISA(moda_attn_fwd_fast_cpu)(const moda_attn_params *p) {
  fctx f;
  init_ctx(&f, p);
  int nthreads = moda_get_num_threads();
  int64_t need = p->dtype == MODA_F32 ? fwd_scratch_f32(&f) : fwd_scratch_f64(&f);
  MODA_CHECK(alloc_scratch(&f, need, nthreads));
  int st = moda_parallel_for(p->B * p->Hk * f.ntiles, 1,
                             p->dtype == MODA_F32 ? fwd_range_f32 : fwd_range_f64, &f);
  moda_aligned_free(f.base);
  return st;
}

int ISA(moda_attn_bwd_fast_cpu)(const moda_attn_params *p) {
  fctx f;
  init_ctx(&f, p);
  const int f32 = p->dtype == MODA_F32;
  int nthreads = moda_get_num_threads();
  const int64_t nrows = p->B * p->Hq * p->T;
  f.lse2 = moda_aligned_alloc(sizeof(double) * (size_t)nrows);
  f.D = moda_aligned_alloc(sizeof(double) * (size_t)nrows);
  int st = MODA_OK;
  if (!f.lse2 || !f.D) {
    st = moda_set_error(MODA_ERR_NOMEM, "moda_attn_bwd (fast cpu): out of memory");
    goto done;
  }
  int64_t need = f32 ? fwd_scratch_f32(&f) : fwd_scratch_f64(&f);
  need = max64(need, f32 ? bwd_scratch_f32(&f) : bwd_scratch_f64(&f));
  st = alloc_scratch(&f, need, nthreads);
  if (st != MODA_OK) goto done;

  /* Row statistics: lse in log2 units, and D = <do, o>. */
  if (f32) {
    for (int64_t b = 0; b < p->B; b++)
      for (int64_t h = 0; h < p->Hq; h++)
        for (int64_t t = 0; t < p->T; t++)
          f.lse2[(b * p->Hq + h) * p->T + t] =
              LOG2E * p->lse[b * p->lse_stride[0] + h * p->lse_stride[1] + t * p->lse_stride[2]];
  } else {
    st = moda_parallel_for(p->B * p->Hk * f.ntiles, 1, fwd_range_f64, &f);   /* f.lse2 set */
    if (st != MODA_OK) goto done;
  }
  st = moda_parallel_for(p->B * p->T, 16, f32 ? rowdot_range_f32 : rowdot_range_f64, &f);
  if (st != MODA_OK) goto done;

  f.nseqb = (p->S + BNK - 1) / BNK;
  if (p->chunk > 0 && p->L > 0) {
    f.nchunks = (p->T + f.C - 1) / f.C;
    f.nbpc = (min64(f.C, p->T) * p->L + BNK - 1) / BNK;
  }
  f.per_bg = f.nseqb + f.nchunks * f.nbpc;
  st = moda_parallel_for(p->B * p->Hk * f.per_bg, 1, f32 ? pass1_range_f32 : pass1_range_f64, &f);
  if (st != MODA_OK) goto done;
  st = moda_parallel_for(p->B * p->Hk * f.ntiles, 1, f32 ? pass2_range_f32 : pass2_range_f64, &f);
done:
  moda_aligned_free(f.lse2);
  moda_aligned_free(f.D);
  moda_aligned_free(f.base);
  return st;
}

#ifndef MODA_AVX2
/* Public entry points (plain build only): the AVX2+FMA variant where the CPU has it. */
int moda_attn_fwd_fast_cpu_avx2(const moda_attn_params *p);
int moda_attn_bwd_fast_cpu_avx2(const moda_attn_params *p);

static int have_avx2(void) {
  static int cached = -1;
  if (cached < 0) {
    __builtin_cpu_init();
    cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return cached;
}

int moda_attn_fwd_fast_cpu(const moda_attn_params *p) {
  return have_avx2() ? moda_attn_fwd_fast_cpu_avx2(p) : moda_attn_fwd_fast_cpu_base(p);
}
int moda_attn_bwd_fast_cpu(const moda_attn_params *p) {
  return have_avx2() ? moda_attn_bwd_fast_cpu_avx2(p) : moda_attn_bwd_fast_cpu_base(p);
}
#endif

#else /* ---------------- MODA_ATTN_FAST_TYPED: the kernels for one `real` ---------------- */

/* 2^x for x <= 0 (x = -inf allowed), vectorisable: x = n + f with n integer, |f| <= 1/2;
 * 2^f by its Taylor series (error < 2e-7 for float, < 2e-16 for double), 2^n added into the
 * exponent bits. Results below the smallest normal number flush to 0. */
static inline real FN(exp2v)(real x) {
  const int mant = sizeof(real) == 4 ? 23 : 52;
  const real lowest = sizeof(real) == 4 ? (real)-125 : (real)-1021;
  const real magic = sizeof(real) == 4 ? (real)12582912.0f : (real)6755399441055744.0; /* 1.5*2^mant */
  real xc = x < lowest ? lowest : x;
  real big = xc + magic;            /* rounds xc to an integer, held in the low mantissa bits */
  real n = big - magic;
  real f = xc - n;
  real y;
  if (sizeof(real) == 4) {
    y = (real)1.5403530393381606e-4;
    y = y * f + (real)1.3333558146428443e-3;
    y = y * f + (real)9.6181291076284772e-3;
    y = y * f + (real)5.5504108664821580e-2;
    y = y * f + (real)2.4022650695910071e-1;
    y = y * f + (real)6.9314718055994531e-1;
    y = y * f + (real)1.0;
  } else {
    y = (real)2.56784359934881958e-11;   /* ln2^k / k!, k = 12 .. 0 */
    y = y * f + (real)4.44553827187081007e-10;
    y = y * f + (real)7.05491162080112088e-09;
    y = y * f + (real)1.01780860092396960e-07;
    y = y * f + (real)1.32154867901443053e-06;
    y = y * f + (real)1.52527338040598377e-05;
    y = y * f + (real)1.54035303933816061e-04;
    y = y * f + (real)1.33335581464284411e-03;
    y = y * f + (real)9.61812910762847688e-03;
    y = y * f + (real)5.55041086648215762e-02;
    y = y * f + (real)2.40226506959100694e-01;
    y = y * f + (real)6.93147180559945286e-01;
    y = y * f + (real)1.0;
  }
  ubits bits, nb;
  memcpy(&bits, &y, sizeof bits);
  memcpy(&nb, &big, sizeof nb);
  bits += nb << mant;                /* low bits of big hold n (two's complement, mod 2^mant) */
  memcpy(&y, &bits, sizeof y);
  return x < lowest ? (real)0 : y;
}

/* C[MR x NR] = (acc ? C : 0) + A[MR x K] * B[K x NR]; A rows lda apart, B rows ldb apart.
 * Written with gcc vector types (NR = 2 vectors of VBYTES) because gcc's auto-vectoriser
 * does not keep a 2-d accumulator array in registers: here the 12 accumulators are named
 * values, each k step is 2 loads of B, MR broadcasts of A and 2*MR independent FMAs. */
typedef real FN(vec) __attribute__((vector_size(VBYTES), aligned(sizeof(real))));
#define VL ((int)(VBYTES / sizeof(real)))
static inline void FN(kernel)(int64_t K, const real *restrict A, int64_t lda,
                              const real *restrict B, int64_t ldb, real *restrict C, int64_t ldc,
                              int acc) {
  typedef FN(vec) vec;
  vec c[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    if (acc) {
      c[i][0] = *(const vec *)(C + i * ldc);
      c[i][1] = *(const vec *)(C + i * ldc + VL);
    } else {
      c[i][0] = (vec){0};
      c[i][1] = (vec){0};
    }
  }
  for (int64_t k = 0; k < K; k++) {
    const vec b0 = *(const vec *)(B + k * ldb), b1 = *(const vec *)(B + k * ldb + VL);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const vec a = (vec){0} + A[i * lda + k];   /* broadcast */
      c[i][0] += a * b0;
      c[i][1] += a * b1;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    *(vec *)(C + i * ldc) = c[i][0];
    *(vec *)(C + i * ldc + VL) = c[i][1];
  }
}
#undef VL

/* C[M x N] (+)= A[M x K] B[K x N] with M a multiple of MR and N of NR (callers pad). */
static void FN(gemm)(int64_t M, int64_t N, int64_t K, const real *A, int64_t lda, const real *B,
                     int64_t ldb, real *C, int64_t ldc, int acc) {
  for (int64_t n0 = 0; n0 < N; n0 += NR)
    for (int64_t m0 = 0; m0 < M; m0 += MR)
      FN(kernel)(K, A + m0 * lda, lda, B + n0, ldb, C + m0 * ldc + n0, ldc, acc);
}

/* ---- key blocks ----
 * A key block is nb consecutive keys of one (b, kv head): sequence keys j = e0 .. e0+nb-1, or
 * depth entries e = u*L + l. kr/vr get a pointer to each key's (and value's) d values. */
static void FN(key_rows)(const fctx *f, int depth, int64_t b, int64_t g, int64_t e0, int64_t nb,
                         const real **kr, const real **vr) {
  const moda_attn_params *p = f->p;
  for (int64_t i = 0; i < nb; i++) {
    const int64_t e = e0 + i;
    if (!depth) {
      kr[i] = (const real *)p->k + b * p->k_stride[0] + e * p->k_stride[1] + g * p->k_stride[2];
      vr[i] = (const real *)p->v + b * p->v_stride[0] + e * p->v_stride[1] + g * p->v_stride[2];
    } else {
      const int64_t u = e / p->L, l = e % p->L;
      kr[i] = (const real *)p->kd + b * p->kd_stride[0] + u * p->kd_stride[1] +
              l * p->kd_stride[2] + g * p->kd_stride[3];
      vr[i] = (const real *)p->vd + b * p->vd_stride[0] + u * p->vd_stride[1] +
              l * p->vd_stride[2] + g * p->vd_stride[3];
    }
  }
}

/* Columns [lo, hi) of key block [e0, e0+nb) that query token t sees. */
static inline void FN(visible_cols)(const fctx *f, int depth, int64_t t, int64_t e0, int64_t nb,
                                    int *lo, int *hi) {
  int64_t a, z;
  if (!depth) {
    a = 0;
    z = nseq_of(f, t);
  } else {
    a = ulo_of(f, t) * f->p->L;
    z = uhi_of(f, t) * f->p->L;
  }
  *lo = (int)clamp64(a - e0, 0, nb);
  *hi = (int)clamp64(z - e0, 0, nb);
}

/* dst[c*ld + i] = rows[i][c]: keys along columns (the B operand of a score product).
 * Columns nb .. round_up(nb, NR) are zeroed. */
static void FN(pack_cols)(real *dst, int64_t ld, const real **rows, int64_t nb, int64_t d) {
  const int64_t nbp = round_up(nb, NR);
  for (int64_t c = 0; c < d; c++)
    for (int64_t i = nb; i < nbp; i++) dst[c * ld + i] = 0;
  for (int64_t i = 0; i < nb; i++) {
    const real *r = rows[i];
    for (int64_t c = 0; c < d; c++) dst[c * ld + i] = r[c];
  }
}

/* dst[i*dp + c] = rows[i][c], zero-padded to dp columns and to nrows_padded rows. */
static void FN(pack_rows)(real *dst, int64_t dp, const real **rows, int64_t nb,
                          int64_t nrows_padded, int64_t d) {
  for (int64_t i = 0; i < nrows_padded; i++) {
    real *o = dst + i * dp;
    if (i < nb) {
      memcpy(o, rows[i], sizeof(real) * (size_t)d);
      for (int64_t c = d; c < dp; c++) o[c] = 0;
    } else {
      for (int64_t c = 0; c < dp; c++) o[c] = 0;
    }
  }
}

/* Rows of one query tile of (b, g), tokens t0 .. t0+nt-1, from a [B,T,Hq,d] tensor:
 * dst[r*dp + c] = mul * src[b, t0 + r/G, g*G + r%G, c], zero-padded to Mp rows, dp cols.
 * With dstT also the transpose, dstT[c*ldT + r] (zero-padded to columns NpT). */
static void FN(pack_tile)(const fctx *f, const void *src, const int64_t *st, int64_t b,
                          int64_t g, int64_t t0, int64_t nt, real mul, real *dst, int64_t dp,
                          int64_t Mp, real *dstT, int64_t ldT, int64_t NpT) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, d = p->d, R = nt * G;
  for (int64_t r = 0; r < Mp; r++) {
    real *o = dst + r * dp;
    if (r < R) {
      const real *s = (const real *)src + b * st[0] + (t0 + r / G) * st[1] + (g * G + r % G) * st[2];
      for (int64_t c = 0; c < d; c++) o[c] = mul * s[c];
      for (int64_t c = d; c < dp; c++) o[c] = 0;
    } else {
      for (int64_t c = 0; c < dp; c++) o[c] = 0;
    }
  }
  if (dstT) {
    for (int64_t c = 0; c < d; c++) {
      for (int64_t r = 0; r < R; r++) dstT[c * ldT + r] = dst[r * dp + c];
      for (int64_t r = R; r < NpT; r++) dstT[c * ldT + r] = 0;
    }
  }
}

/* ---------------------------------- forward ---------------------------------- */

typedef struct {
  real *Q;      /* [Rp][dp]  queries * scale * log2(e) */
  real *Kt;     /* [d][BN]   key block, transposed */
  real *V;      /* [BN][dp]  value block */
  real *Sb;     /* [Rp][BN]  scores, then probabilities */
  real *O;      /* [Rp][dp]  unnormalised output */
  real *m, *l;  /* [Rp]      running max (log2 units) and sum */
  int *lo, *hi; /* [Rp]      visible columns of the current block */
  real *kdT;    /* [d][L]    token-visible depth keys of one token, transposed */
  real *sc;     /* [L]       depth scores of one row */
  const real **kr, **vr;   /* [max(BN, L)] key/value row pointers */
} FN(fwd_scratch_t);

static FN(fwd_scratch_t) FN(fwd_layout)(const fctx *f, arena *a) {
  const moda_attn_params *p = f->p;
  const int64_t Rp = round_up(f->BM * p->G, MR), dp = round_up(p->d, NR), L = p->L;
  FN(fwd_scratch_t) s;
  s.Q = carve(a, sizeof(real) * Rp * dp);
  s.Kt = carve(a, sizeof(real) * p->d * BN);
  s.V = carve(a, sizeof(real) * BN * dp);
  s.Sb = carve(a, sizeof(real) * Rp * BN);
  s.O = carve(a, sizeof(real) * Rp * dp);
  s.m = carve(a, sizeof(real) * Rp);
  s.l = carve(a, sizeof(real) * Rp);
  s.lo = carve(a, sizeof(int) * Rp);
  s.hi = carve(a, sizeof(int) * Rp);
  s.kdT = carve(a, sizeof(real) * p->d * L);
  s.sc = carve(a, sizeof(real) * L);
  s.kr = carve(a, sizeof(real *) * max64(BN, L));   /* also a token's L depth rows */
  s.vr = carve(a, sizeof(real *) * max64(BN, L));
  return s;
}

static int64_t FN(fwd_scratch)(const fctx *f) {
  arena a = {0};
  FN(fwd_layout)(f, &a);
  return (int64_t)a.cur;
}

/* Online-softmax step for rows [0, R) with scores Sb[r][0 .. nb) of one key block: row r sees
 * columns [lo[r], hi[r]). Sb becomes the probabilities (0 where not visible), m/l/O are
 * rescaled to the new running max. */
static void FN(softmax_block)(FN(fwd_scratch_t) *s, int64_t R, int64_t nb, int64_t dp) {
  const int64_t nbp = round_up(nb, NR);
  for (int64_t r = 0; r < R; r++) {
    real *row = s->Sb + r * BN;
    const int a = s->lo[r], z = s->hi[r];
    if (a >= z) {   /* nothing visible in this block */
      for (int64_t j = 0; j < nbp; j++) row[j] = 0;
      continue;
    }
    /* Max and sum through NR lanes so that gcc can vectorise them without reassociating. */
    real lane[NR];
    for (int j = 0; j < NR; j++) lane[j] = -INFINITY;
    for (int64_t j0 = 0; j0 < nbp; j0 += NR)
      for (int j = 0; j < NR; j++) {
        const int64_t jj = j0 + j;
        const real x = (jj >= a && jj < z) ? row[jj] : (real)-INFINITY;
        lane[j] = x > lane[j] ? x : lane[j];
      }
    real mx = lane[0];
    for (int j = 1; j < NR; j++) mx = lane[j] > mx ? lane[j] : mx;
    const real mnew = mx > s->m[r] ? mx : s->m[r];
    const real alpha = FN(exp2v)(s->m[r] - mnew);   /* 0 on the first visible block */
    for (int j = 0; j < NR; j++) lane[j] = 0;
    for (int64_t j0 = 0; j0 < nbp; j0 += NR)
      for (int j = 0; j < NR; j++) {
        const int64_t jj = j0 + j;
        const real e = FN(exp2v)(row[jj] - mnew);
        const real pj = (jj >= a && jj < z) ? e : (real)0;
        row[jj] = pj;
        lane[j] += pj;
      }
    real sum = 0;
    for (int j = 0; j < NR; j++) sum += lane[j];
    s->l[r] = s->l[r] * alpha + sum;
    s->m[r] = mnew;
    if (alpha != (real)1) {
      real *o = s->O + r * dp;
      for (int64_t c = 0; c < dp; c++) o[c] *= alpha;
    }
  }
}

/* One key block through the tile: scores, softmax step, O += P V. */
static void FN(fwd_block)(const fctx *f, FN(fwd_scratch_t) *s, int depth, int64_t b, int64_t g,
                          int64_t t0, int64_t nt, int64_t e0, int64_t nb) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, R = nt * G, Mp = round_up(R, MR), dp = round_up(p->d, NR);
  FN(key_rows)(f, depth, b, g, e0, nb, s->kr, s->vr);
  FN(pack_cols)(s->Kt, BN, s->kr, nb, p->d);
  FN(pack_rows)(s->V, dp, s->vr, nb, nb, p->d);
  for (int64_t tl = 0; tl < nt; tl++) {
    int lo, hi;
    FN(visible_cols)(f, depth, t0 + tl, e0, nb, &lo, &hi);
    for (int64_t i = 0; i < G; i++) { s->lo[tl * G + i] = lo; s->hi[tl * G + i] = hi; }
  }
  FN(gemm)(Mp, round_up(nb, NR), p->d, s->Q, dp, s->Kt, BN, s->Sb, BN, 0);
  FN(softmax_block)(s, R, nb, dp);
  FN(gemm)(Mp, dp, nb, s->Sb, BN, s->V, dp, s->O, dp, 1);
}

/* Token-visible depth rows of the tile (each token's G rows x its own L rows), which start the
 * online softmax: m, l, O are set from them. */
static void FN(fwd_token_depth)(const fctx *f, FN(fwd_scratch_t) *s, int64_t b, int64_t g,
                                int64_t t0, int64_t nt) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, L = p->L, d = p->d, dp = round_up(d, NR);
  for (int64_t tl = 0; tl < nt; tl++) {
    FN(key_rows)(f, 1, b, g, (t0 + tl) * L, L, s->kr, s->vr);
    for (int64_t l = 0; l < L; l++)
      for (int64_t c = 0; c < d; c++) s->kdT[c * L + l] = s->kr[l][c];
    for (int64_t i = 0; i < G; i++) {
      const int64_t r = tl * G + i;
      const real *q = s->Q + r * dp;
      for (int64_t l = 0; l < L; l++) s->sc[l] = 0;
      for (int64_t c = 0; c < d; c++)
        for (int64_t l = 0; l < L; l++) s->sc[l] += q[c] * s->kdT[c * L + l];
      real m = -INFINITY, z = 0;
      for (int64_t l = 0; l < L; l++) m = s->sc[l] > m ? s->sc[l] : m;
      real *o = s->O + r * dp;
      for (int64_t l = 0; l < L; l++) {
        const real w = FN(exp2v)(s->sc[l] - m);
        z += w;
        const real *v = s->vr[l];
        for (int64_t c = 0; c < d; c++) o[c] += w * v[c];
      }
      s->m[r] = m;
      s->l[r] = z;
    }
  }
}

static void FN(fwd_tile)(const fctx *f, FN(fwd_scratch_t) *s, int64_t b, int64_t g, int64_t t0,
                         int64_t nt) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, R = nt * G, Mp = round_up(R, MR), d = p->d, dp = round_up(d, NR);
  const int64_t L = p->L, T = p->T;
  FN(pack_tile)(f, p->q, p->q_stride, b, g, t0, nt, (real)(p->scale * LOG2E), s->Q, dp, Mp,
                NULL, 0, 0);
  for (int64_t r = 0; r < R; r++) { s->m[r] = -INFINITY; s->l[r] = 0; }
  memset(s->O, 0, sizeof(real) * (size_t)(Mp * dp));

  if (L > 0 && f->C == 1) {
    FN(fwd_token_depth)(f, s, b, g, t0, nt);
  } else if (L > 0) {
    /* Depth entries of every token the tile's rows can see: from the start of the first
     * row's chunk to the last row's token (causal) or the end of its chunk (full). */
    const int64_t u0 = ulo_of(f, t0), u1 = uhi_of(f, t0 + nt - 1);
    for (int64_t e0 = u0 * L; e0 < u1 * L; e0 += BN)
      FN(fwd_block)(f, s, 1, b, g, t0, nt, e0, min64(BN, u1 * L - e0));
  }
  const int64_t jend = min64(p->S, nseq_of(f, t0 + nt - 1));
  for (int64_t e0 = 0; e0 < jend; e0 += BN)
    FN(fwd_block)(f, s, 0, b, g, t0, nt, e0, min64(BN, jend - e0));

  for (int64_t r = 0; r < R; r++) {
    const int64_t t = t0 + r / G, h = g * G + r % G;
    const real lsum = s->l[r];
    /* lsum >= 1 for any row with a visible key (its max contributes 2^0). */
    const real inv = lsum > 0 ? (real)1 / lsum : (real)0;
    const double lse2 = lsum > 0 ? (double)s->m[r] + log2((double)lsum) : -INFINITY;
    if (f->lse2) {   /* the f64 backward's statistics: no o, lse in log2 units */
      f->lse2[(b * p->Hq + h) * T + t] = lse2;
      continue;
    }
    real *o = (real *)p->o + b * p->o_stride[0] + t * p->o_stride[1] + h * p->o_stride[2];
    const real *acc = s->O + r * dp;
    for (int64_t c = 0; c < d; c++) o[c] = acc[c] * inv;
    p->lse[b * p->lse_stride[0] + h * p->lse_stride[1] + t * p->lse_stride[2]] =
        (float)(lse2 * LN2);
  }
}

/* Items are (b, kv head, tile), the last tiles first: under the causal mask they are the
 * longest, and handing them out first evens out the threads' finishing times. */
static int FN(fwd_range)(void *ctx, int64_t begin, int64_t end, int tid) {
  const fctx *f = ctx;
  arena a = {(uintptr_t)(f->base + (int64_t)tid * f->scratch)};
  FN(fwd_scratch_t) s = FN(fwd_layout)(f, &a);
  for (int64_t it = begin; it < end; it++) {
    const int64_t tile = f->ntiles - 1 - it % f->ntiles, bg = it / f->ntiles;
    const int64_t b = bg / f->p->Hk, g = bg % f->p->Hk;
    const int64_t t0 = tile * f->BM;
    FN(fwd_tile)(f, &s, b, g, t0, min64(f->BM, f->p->T - t0));
  }
  return MODA_OK;
}

/* D[b,h,t] = <do[b,t,h], o[b,t,h]> for items (b, t). */
static int FN(rowdot_range)(void *ctx, int64_t begin, int64_t end, int tid) {
  const fctx *f = ctx;
  const moda_attn_params *p = f->p;
  for (int64_t it = begin; it < end; it++) {
    const int64_t b = it / p->T, t = it % p->T;
    for (int64_t h = 0; h < p->Hq; h++) {
      const real *o = (const real *)p->o + b * p->o_stride[0] + t * p->o_stride[1] + h * p->o_stride[2];
      const real *g = (const real *)p->dout + b * p->dout_stride[0] + t * p->dout_stride[1] +
                      h * p->dout_stride[2];
      double acc = 0;
      for (int64_t c = 0; c < p->d; c++) acc += (double)o[c] * (double)g[c];
      f->D[(b * p->Hq + h) * p->T + t] = acc;
    }
  }
  return MODA_OK;
}

/* ---------------------------------- backward ---------------------------------- */

typedef struct {
  /* pass 1: a key block against query tiles (queries along columns) */
  real *Kp, *Vp;     /* [BNK][dp] key / value rows */
  real *QT, *dOT;    /* [d][Rc]   tile queries (scaled) / output grads, transposed */
  real *Qr, *dOr;    /* [Rc][dp]  the same, row-major */
  real *ST, *dPT;    /* [BNK][Rc] P^T and dS^T */
  real *dK, *dV;     /* [BNK][dp] accumulators */
  real *lse2, *D;    /* [Rc]      row statistics of the tile */
  /* pass 2: a query tile against key blocks */
  real *Q, *dO;      /* [Rp][dp] */
  real *Kt, *Vt;     /* [d][BN] */
  real *K;           /* [BN][dp] */
  real *Sb, *dP;     /* [Rp][BN] */
  real *dQ;          /* [Rp][dp] */
  real *rl, *rD;     /* [Rp] */
  int *lo, *hi;      /* [Rp] */
  /* pass 2, token-visible depth rows of one token (Gp = G, L rounded up to MR; Lc = L rounded
   * up to NR) */
  real *kdT, *vdT;   /* [d][Lc]  depth keys / values, transposed */
  real *Kd;          /* [L][dp]  depth keys */
  real *sc, *dpv;    /* [Gp][Lc] scores then dS; dP then P */
  real *dST, *PT;    /* [Lm][G]  dS^T, P^T */
  real *dkd, *dvd;   /* [Lm][dp] */
  real *Qg, *dOg, *dQg;    /* [Gp][dp] padded copies of the token's rows (G not a multiple of MR) */
  const real **kr, **vr;   /* [max(BN, L)] */
} FN(bwd_scratch_t);

static FN(bwd_scratch_t) FN(bwd_layout)(const fctx *f, arena *a) {
  const moda_attn_params *p = f->p;
  const int64_t R = f->BM * p->G, Rp = round_up(R, MR), Rc = round_up(R, NR);
  const int64_t d = p->d, dp = round_up(d, NR), L = p->L;
  FN(bwd_scratch_t) s;
  s.Kp = carve(a, sizeof(real) * BNK * dp);
  s.Vp = carve(a, sizeof(real) * BNK * dp);
  s.QT = carve(a, sizeof(real) * d * Rc);
  s.dOT = carve(a, sizeof(real) * d * Rc);
  s.Qr = carve(a, sizeof(real) * Rc * dp);
  s.dOr = carve(a, sizeof(real) * Rc * dp);
  s.ST = carve(a, sizeof(real) * BNK * Rc);
  s.dPT = carve(a, sizeof(real) * BNK * Rc);
  s.dK = carve(a, sizeof(real) * BNK * dp);
  s.dV = carve(a, sizeof(real) * BNK * dp);
  s.lse2 = carve(a, sizeof(real) * Rc);
  s.D = carve(a, sizeof(real) * Rc);
  s.Q = carve(a, sizeof(real) * Rp * dp);
  s.dO = carve(a, sizeof(real) * Rp * dp);
  s.Kt = carve(a, sizeof(real) * d * BN);
  s.Vt = carve(a, sizeof(real) * d * BN);
  s.K = carve(a, sizeof(real) * BN * dp);
  s.Sb = carve(a, sizeof(real) * Rp * BN);
  s.dP = carve(a, sizeof(real) * Rp * BN);
  s.dQ = carve(a, sizeof(real) * Rp * dp);
  s.rl = carve(a, sizeof(real) * Rp);
  s.rD = carve(a, sizeof(real) * Rp);
  s.lo = carve(a, sizeof(int) * Rp);
  s.hi = carve(a, sizeof(int) * Rp);
  const int64_t Gp = round_up(p->G, MR), Lc = round_up(L, NR), Lm = round_up(L, MR);
  s.kdT = carve(a, sizeof(real) * d * Lc);
  s.vdT = carve(a, sizeof(real) * d * Lc);
  s.Kd = carve(a, sizeof(real) * L * dp);
  s.sc = carve(a, sizeof(real) * Gp * Lc);
  s.dpv = carve(a, sizeof(real) * Gp * Lc);
  s.dST = carve(a, sizeof(real) * Lm * p->G);
  s.PT = carve(a, sizeof(real) * Lm * p->G);
  s.dkd = carve(a, sizeof(real) * Lm * dp);
  s.dvd = carve(a, sizeof(real) * Lm * dp);
  s.Qg = carve(a, sizeof(real) * Gp * dp);
  s.dOg = carve(a, sizeof(real) * Gp * dp);
  s.dQg = carve(a, sizeof(real) * Gp * dp);
  s.kr = carve(a, sizeof(real *) * max64(BN, L));
  s.vr = carve(a, sizeof(real *) * max64(BN, L));
  return s;
}

static int64_t FN(bwd_scratch)(const fctx *f) {
  arena a = {0};
  FN(bwd_layout)(f, &a);
  return (int64_t)a.cur;
}

/* Row statistics (lse in log2 units, D) of the tile's rows r < nt*G into lse2[r], D[r]. */
static void FN(tile_stats)(const fctx *f, int64_t b, int64_t g, int64_t t0, int64_t nt,
                           real *lse2, real *D) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G;
  for (int64_t r = 0; r < nt * G; r++) {
    const int64_t i = (b * p->Hq + g * G + r % G) * p->T + t0 + r / G;
    lse2[r] = (real)f->lse2[i];
    D[r] = (real)f->D[i];
  }
}

/* Writes one key row's gradients. Q was scaled by scale*log2(e), so dS^T Q carries a log2(e)
 * too much: dk = ln 2 * (dS^T Q); dv needs no rescale. */
static inline void FN(store_key_grads)(real *dk, real *dv, const real *gk, const real *gv, int64_t d) {
  for (int64_t c = 0; c < d; c++) {
    dk[c] = (real)LN2 * gk[c];
    dv[c] = gv[c];
  }
}

/* The same for depth row l of token u (kv head g) in dkd/dvd. */
static inline void FN(store_depth_grads)(const moda_attn_params *p, int64_t b, int64_t u, int64_t l, int64_t g,
                                         const real *gk, const real *gv) {
  FN(store_key_grads)((real *)p->dkd + b * p->dkd_stride[0] + u * p->dkd_stride[1] + l * p->dkd_stride[2] +
                          g * p->dkd_stride[3],
                      (real *)p->dvd + b * p->dvd_stride[0] + u * p->dvd_stride[1] + l * p->dvd_stride[2] +
                          g * p->dvd_stride[3],
                      gk, gv, p->d);
}

/* Pass 1: one key block (sequence keys, or chunk-visible depth entries of one chunk) against
 * every query tile that sees it; writes the block's dk/dv (or dkd/dvd) rows. */
static void FN(pass1_block)(const fctx *f, FN(bwd_scratch_t) *s, int depth, int64_t b, int64_t g,
                            int64_t e0, int64_t nb) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, d = p->d, dp = round_up(d, NR), T = p->T, L = p->L;
  const int64_t Mb = round_up(nb, MR);
  FN(key_rows)(f, depth, b, g, e0, nb, s->kr, s->vr);
  FN(pack_rows)(s->Kp, dp, s->kr, nb, Mb, d);
  FN(pack_rows)(s->Vp, dp, s->vr, nb, Mb, d);
  memset(s->dK, 0, sizeof(real) * (size_t)(Mb * dp));
  memset(s->dV, 0, sizeof(real) * (size_t)(Mb * dp));

  /* Query tokens that can see some key of the block. */
  int64_t tq0, tq1 = T;
  if (!depth) {
    tq0 = p->causal ? max64(0, e0 - f->off) : 0;
  } else {
    const int64_t u = e0 / L, cs = u / f->C * f->C;
    tq0 = p->causal ? u : cs;
    tq1 = min64(T, cs + f->C);
  }
  for (int64_t t0 = tq0; t0 < tq1; t0 += f->BM) {
    const int64_t nt = min64(f->BM, tq1 - t0), R = nt * G, Rc = round_up(f->BM * G, NR);
    const int64_t Np = round_up(R, NR);
    FN(pack_tile)(f, p->q, p->q_stride, b, g, t0, nt, (real)(p->scale * LOG2E), s->Qr, dp, R,
                  s->QT, Rc, Np);
    FN(pack_tile)(f, p->dout, p->dout_stride, b, g, t0, nt, (real)1, s->dOr, dp, R, s->dOT, Rc, Np);
    FN(tile_stats)(f, b, g, t0, nt, s->lse2, s->D);
    for (int64_t r = R; r < Np; r++) { s->lse2[r] = 0; s->D[r] = 0; }

    FN(gemm)(Mb, Np, d, s->Kp, dp, s->QT, Rc, s->ST, Rc, 0);    /* S^T, log2 units */
    FN(gemm)(Mb, Np, d, s->Vp, dp, s->dOT, Rc, s->dPT, Rc, 0);  /* dP^T */
    for (int64_t i = 0; i < nb; i++) {
      /* Query columns that see key i: an interval of tokens, times G heads. */
      const int64_t e = e0 + i;
      int64_t ta, tz = t0 + nt;
      if (!depth) {
        ta = p->causal ? e - f->off : 0;
      } else {
        const int64_t u = e / L, cs = u / f->C * f->C;
        ta = p->causal ? u : cs;
        tz = min64(tz, cs + f->C);
      }
      const int64_t a = clamp64(ta - t0, 0, nt) * G, z = clamp64(tz - t0, 0, nt) * G;
      real *st = s->ST + i * Rc, *dpt = s->dPT + i * Rc;
      for (int64_t r = 0; r < Np; r++) {
        const real e2 = FN(exp2v)(st[r] - s->lse2[r]);
        const real pr = (r >= a && r < z) ? e2 : (real)0;
        st[r] = pr;
        dpt[r] = pr * (dpt[r] - s->D[r]);
      }
    }
    FN(gemm)(Mb, dp, R, s->ST, Rc, s->dOr, dp, s->dV, dp, 1);   /* dV += P^T dO */
    FN(gemm)(Mb, dp, R, s->dPT, Rc, s->Qr, dp, s->dK, dp, 1);   /* dK += dS^T Q*scale*log2e */
  }

  for (int64_t i = 0; i < nb; i++) {
    const int64_t e = e0 + i;
    if (!depth) {
      FN(store_key_grads)((real *)p->dk + b * p->dk_stride[0] + e * p->dk_stride[1] + g * p->dk_stride[2],
                          (real *)p->dv + b * p->dv_stride[0] + e * p->dv_stride[1] + g * p->dv_stride[2],
                          s->dK + i * dp, s->dV + i * dp, d);
    } else {
      FN(store_depth_grads)(p, b, e / L, e % L, g, s->dK + i * dp, s->dV + i * dp);
    }
  }
}

/* Items per (b, g): nseqb sequence key blocks, then nbpc blocks for each depth chunk (the last
 * chunk may need fewer: its surplus items do nothing). */
static int FN(pass1_range)(void *ctx, int64_t begin, int64_t end, int tid) {
  const fctx *f = ctx;
  const moda_attn_params *p = f->p;
  arena a = {(uintptr_t)(f->base + (int64_t)tid * f->scratch)};
  FN(bwd_scratch_t) s = FN(bwd_layout)(f, &a);
  for (int64_t it = begin; it < end; it++) {
    const int64_t bg = it / f->per_bg, k = it % f->per_bg;
    const int64_t b = bg / p->Hk, g = bg % p->Hk;
    if (k < f->nseqb) {
      const int64_t e0 = k * BNK;
      FN(pass1_block)(f, &s, 0, b, g, e0, min64(BNK, p->S - e0));
    } else {
      const int64_t ch = (k - f->nseqb) / f->nbpc, blk = (k - f->nseqb) % f->nbpc;
      const int64_t cs = ch * f->C, ce = min64(p->T, cs + f->C);
      const int64_t e0 = cs * p->L + blk * BNK, e1 = ce * p->L;
      if (e0 < e1) FN(pass1_block)(f, &s, 1, b, g, e0, min64(BNK, e1 - e0));
    }
  }
  return MODA_OK;
}

/* Pass 2, one row of recomputed probabilities: x[j] (a score in log2 units) becomes
 * dS_j = P_j (dP_j - D) with P_j = 2^(x_j - lse2) for j in [lo, hi) and 0 elsewhere, dP_j from
 * dp[j]; with pv (which may be dp) P_j also goes to pv[j]. n is a multiple of NR. Written in
 * NR-lane chunks, which gcc unrolls into branch-free code (a plain loop on j with the interval
 * test became branchy scalar code). It does not vectorise: exp2v's float compares are not
 * if-converted under the default -ftrapping-math. */
static inline void FN(ds_row)(real *x, const real *dp, real *pv, real l2, real Dr, int64_t lo,
                              int64_t hi, int64_t n) {
  for (int64_t j0 = 0; j0 < n; j0 += NR) {
    real pj[NR], dj[NR];
    for (int j = 0; j < NR; j++) {
      const int64_t jj = j0 + j;
      const real e2 = FN(exp2v)(x[jj] - l2);
      pj[j] = ((jj >= lo) & (jj < hi)) ? e2 : (real)0;
      dj[j] = pj[j] * (dp[jj] - Dr);
    }
    for (int j = 0; j < NR; j++) x[j0 + j] = dj[j];
    if (pv)
      for (int j = 0; j < NR; j++) pv[j0 + j] = pj[j];
  }
}

/* Pass 2, one key block: dS for the tile's rows, dQ += dS K. */
static void FN(pass2_block)(const fctx *f, FN(bwd_scratch_t) *s, int depth, int64_t b, int64_t g,
                            int64_t t0, int64_t nt, int64_t e0, int64_t nb) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, R = nt * G, Mp = round_up(R, MR), d = p->d, dp = round_up(d, NR);
  const int64_t nbp = round_up(nb, NR);
  FN(key_rows)(f, depth, b, g, e0, nb, s->kr, s->vr);
  FN(pack_cols)(s->Kt, BN, s->kr, nb, d);
  FN(pack_cols)(s->Vt, BN, s->vr, nb, d);
  FN(pack_rows)(s->K, dp, s->kr, nb, nb, d);
  FN(gemm)(Mp, nbp, d, s->Q, dp, s->Kt, BN, s->Sb, BN, 0);
  FN(gemm)(Mp, nbp, d, s->dO, dp, s->Vt, BN, s->dP, BN, 0);
  for (int64_t r = 0; r < R; r++) {
    int lo, hi;
    FN(visible_cols)(f, depth, t0 + r / G, e0, nb, &lo, &hi);
    FN(ds_row)(s->Sb + r * BN, s->dP + r * BN, NULL, s->rl[r], s->rD[r], lo, hi, nbp);
  }
  FN(gemm)(Mp, dp, nb, s->Sb, BN, s->K, dp, s->dQ, dp, 1);
}

/* Pass 2, token-visible depth rows of the tile: dq, and the complete dkd/dvd of each token
 * (only its own G rows see them). Per token these are small products through the micro-kernel:
 * S = Q Kd^T and dP = dO Vd^T ([Gp x Lc], depth rows along columns), dq += dS Kd ([Gp x dp],
 * inner dimension L), dkd = dS^T Q and dvd = P^T dO ([Lm x dp], inner dimension G). When G is
 * a multiple of MR a token's rows are read and written in place; otherwise they go through
 * zero-padded [Gp][dp] copies. */
static void FN(pass2_token_depth)(const fctx *f, FN(bwd_scratch_t) *s, int64_t b, int64_t g,
                                  int64_t t0, int64_t nt) {
  const moda_attn_params *p = f->p;
  const int64_t G = p->G, L = p->L, d = p->d, dp = round_up(d, NR);
  const int64_t Gp = round_up(G, MR), Lc = round_up(L, NR), Lm = round_up(L, MR);
  const int direct = Gp == G;
  /* Padding that no token overwrites: rows L .. Lm of dS^T and P^T, rows G .. Gp of the
   * copies. */
  memset(s->dST + L * G, 0, sizeof(real) * (size_t)((Lm - L) * G));
  memset(s->PT + L * G, 0, sizeof(real) * (size_t)((Lm - L) * G));
  if (!direct) {
    memset(s->Qg, 0, sizeof(real) * (size_t)(Gp * dp));
    memset(s->dOg, 0, sizeof(real) * (size_t)(Gp * dp));
  }
  for (int64_t tl = 0; tl < nt; tl++) {
    const int64_t u = t0 + tl;
    FN(key_rows)(f, 1, b, g, u * L, L, s->kr, s->vr);
    FN(pack_cols)(s->kdT, Lc, s->kr, L, d);
    FN(pack_cols)(s->vdT, Lc, s->vr, L, d);
    FN(pack_rows)(s->Kd, dp, s->kr, L, L, d);
    const real *Q = s->Q + tl * G * dp, *dO = s->dO + tl * G * dp;
    real *dQ = s->dQ + tl * G * dp;
    if (!direct) {
      memcpy(s->Qg, Q, sizeof(real) * (size_t)(G * dp));
      memcpy(s->dOg, dO, sizeof(real) * (size_t)(G * dp));
      Q = s->Qg;
      dO = s->dOg;
    }
    FN(gemm)(Gp, Lc, d, Q, dp, s->kdT, Lc, s->sc, Lc, 0);     /* scores, log2 units */
    FN(gemm)(Gp, Lc, d, dO, dp, s->vdT, Lc, s->dpv, Lc, 0);   /* dP */
    for (int64_t i = 0; i < G; i++) {   /* sc becomes dS, dpv becomes P */
      const int64_t r = tl * G + i;
      FN(ds_row)(s->sc + i * Lc, s->dpv + i * Lc, s->dpv + i * Lc, s->rl[r], s->rD[r], 0, L, Lc);
    }
    for (int64_t l = 0; l < L; l++)
      for (int64_t i = 0; i < G; i++) {
        s->dST[l * G + i] = s->sc[i * Lc + l];
        s->PT[l * G + i] = s->dpv[i * Lc + l];
      }
    if (direct) {
      FN(gemm)(Gp, dp, L, s->sc, Lc, s->Kd, dp, dQ, dp, 1);
    } else {
      FN(gemm)(Gp, dp, L, s->sc, Lc, s->Kd, dp, s->dQg, dp, 0);
      for (int64_t c = 0; c < G * dp; c++) dQ[c] += s->dQg[c];
    }
    FN(gemm)(Lm, dp, G, s->dST, G, Q, dp, s->dkd, dp, 0);    /* dS^T Q*scale*log2e */
    FN(gemm)(Lm, dp, G, s->PT, G, dO, dp, s->dvd, dp, 0);    /* P^T dO */
    for (int64_t l = 0; l < L; l++) FN(store_depth_grads)(p, b, u, l, g, s->dkd + l * dp, s->dvd + l * dp);
  }
}

static int FN(pass2_range)(void *ctx, int64_t begin, int64_t end, int tid) {
  const fctx *f = ctx;
  const moda_attn_params *p = f->p;
  arena a = {(uintptr_t)(f->base + (int64_t)tid * f->scratch)};
  FN(bwd_scratch_t) s = FN(bwd_layout)(f, &a);
  const int64_t G = p->G, d = p->d, dp = round_up(d, NR), L = p->L;
  for (int64_t it = begin; it < end; it++) {
    const int64_t tile = f->ntiles - 1 - it % f->ntiles, bg = it / f->ntiles;
    const int64_t b = bg / p->Hk, g = bg % p->Hk;
    const int64_t t0 = tile * f->BM, nt = min64(f->BM, p->T - t0), R = nt * G;
    const int64_t Mp = round_up(R, MR);
    FN(pack_tile)(f, p->q, p->q_stride, b, g, t0, nt, (real)(p->scale * LOG2E), s.Q, dp, Mp,
                  NULL, 0, 0);
    FN(pack_tile)(f, p->dout, p->dout_stride, b, g, t0, nt, (real)1, s.dO, dp, Mp, NULL, 0, 0);
    FN(tile_stats)(f, b, g, t0, nt, s.rl, s.rD);
    memset(s.dQ, 0, sizeof(real) * (size_t)(Mp * dp));

    if (L > 0 && f->C == 1) {
      FN(pass2_token_depth)(f, &s, b, g, t0, nt);
    } else if (L > 0) {
      const int64_t u0 = ulo_of(f, t0), u1 = uhi_of(f, t0 + nt - 1);
      for (int64_t e0 = u0 * L; e0 < u1 * L; e0 += BN)
        FN(pass2_block)(f, &s, 1, b, g, t0, nt, e0, min64(BN, u1 * L - e0));
    }
    const int64_t jend = min64(p->S, nseq_of(f, t0 + nt - 1));
    for (int64_t e0 = 0; e0 < jend; e0 += BN)
      FN(pass2_block)(f, &s, 0, b, g, t0, nt, e0, min64(BN, jend - e0));

    for (int64_t r = 0; r < R; r++) {
      const int64_t t = t0 + r / G, h = g * G + r % G;
      real *dq = (real *)p->dq + b * p->dq_stride[0] + t * p->dq_stride[1] + h * p->dq_stride[2];
      for (int64_t c = 0; c < d; c++) dq[c] = (real)p->scale * s.dQ[r * dp + c];
    }
  }
  return MODA_OK;
}

#endif /* MODA_ATTN_FAST_TYPED */
