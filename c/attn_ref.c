/* attn_ref.c: the reference MoDA attention (shared/moda/SPEC.md sections 1-2) on the CPU.
 *
 * This is the oracle every other implementation is tested against, so it is written to be
 * obviously right rather than fast: one query row at a time, every score of the row
 * materialised, float64 accumulation throughout, no tiling and no threads. It reads f32, f64,
 * f16 and bf16 tensors (converted element by element) and writes the dtype it was given.
 *
 * The backward recomputes the softmax in float64 from q, k, v, kd, vd instead of trusting the
 * float32 lse, so finite-difference checks in float64 are not limited by float32 rounding;
 * D = sum_j P_j dP_j, which equals <do, o> exactly in real arithmetic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "moda_attn.h"

static double load(const void *base, int64_t i, int dtype) {
  switch (dtype) {
    case MODA_F32: return ((const float *)base)[i];
    case MODA_F64: return ((const double *)base)[i];
    case MODA_F16: return moda_half_to_float(((const uint16_t *)base)[i]);
    default:       return moda_bf16_to_float(((const uint16_t *)base)[i]);   /* MODA_BF16 */
  }
}

static void store(void *base, int64_t i, int dtype, double x) {
  switch (dtype) {
    case MODA_F32: ((float *)base)[i] = (float)x; break;
    case MODA_F64: ((double *)base)[i] = x; break;
    case MODA_F16: ((uint16_t *)base)[i] = moda_float_to_half((float)x); break;
    default:       ((uint16_t *)base)[i] = moda_float_to_bf16((float)x); break;
  }
}

/* Element offsets of one head row (the d values are contiguous from there). */
static int64_t off3(const int64_t *st, int64_t a, int64_t b, int64_t c) {
  return a * st[0] + b * st[1] + c * st[2];
}
static int64_t off4(const int64_t *st, int64_t a, int64_t b, int64_t c, int64_t e) {
  return a * st[0] + b * st[1] + c * st[2] + e * st[3];
}

/* The keys query t may see: sequence keys [0, nseq), and the depth rows of tokens
 * [u_lo, u_hi] (L rows each), per the mask and the depth visibility. */
typedef struct { int64_t nseq, u_lo, u_hi; } visible_set;

static visible_set visible(const moda_attn_params *p, int64_t t) {
  visible_set vs;
  vs.nseq = p->causal ? p->S - p->T + t + 1 : p->S;
  int64_t C = p->chunk > 0 ? p->chunk : 1;   /* token visibility is chunk visibility with C=1 */
  vs.u_lo = t / C * C;
  int64_t chunk_end = vs.u_lo + C - 1 < p->T - 1 ? vs.u_lo + C - 1 : p->T - 1;
  vs.u_hi = p->causal ? t : chunk_end;
  if (p->L == 0) vs.u_hi = vs.u_lo - 1;      /* no depth rows at all */
  return vs;
}

/* Dot product of a query row with a key row, both read from tensors of dtype dt. */
static double dot(const void *a, int64_t ia, const void *b, int64_t ib, int64_t d, int dt) {
  double s = 0.0;
  for (int64_t c = 0; c < d; c++) s += load(a, ia + c, dt) * load(b, ib + c, dt);
  return s;
}

/* Scores of one query row (b, t, h): seq scores first (index j), then depth scores in the
 * order (u, l). Returns the number of scores; writes m and Z (Z = sum exp(s - m)). */
static int64_t row_scores(const moda_attn_params *p, int64_t b, int64_t t, int64_t h,
                          double *s, double *m_out, double *z_out) {
  const int dt = p->dtype;
  const int64_t g = h / p->G, d = p->d;
  const int64_t iq = off3(p->q_stride, b, t, h);
  visible_set vs = visible(p, t);
  int64_t n = 0;
  for (int64_t j = 0; j < vs.nseq; j++)
    s[n++] = p->scale * dot(p->q, iq, p->k, off3(p->k_stride, b, j, g), d, dt);
  for (int64_t u = vs.u_lo; u <= vs.u_hi; u++)
    for (int64_t l = 0; l < p->L; l++)
      s[n++] = p->scale * dot(p->q, iq, p->kd, off4(p->kd_stride, b, u, l, g), d, dt);
  double m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
  double z = 0.0;
  for (int64_t i = 0; i < n; i++) z += exp(s[i] - m);
  *m_out = m;
  *z_out = z;
  return n;
}

/* The most scores any row has: S sequence keys plus a whole chunk of depth rows. */
static int64_t max_scores(const moda_attn_params *p) {
  int64_t C = p->chunk > 0 ? p->chunk : 1;
  int64_t ntok = C < p->T ? C : p->T;
  return p->S + ntok * p->L + 1;
}

int moda_attn_fwd_ref_cpu(const moda_attn_params *p) {
  const int dt = p->dtype;
  const int64_t d = p->d;
  double *s = malloc(sizeof(double) * max_scores(p));
  double *acc = malloc(sizeof(double) * d);
  if (!s || !acc) {
    free(s); free(acc);
    return moda_set_error(MODA_ERR_NOMEM, "moda_attn_fwd (reference): out of memory");
  }
  for (int64_t b = 0; b < p->B; b++)
    for (int64_t t = 0; t < p->T; t++)
      for (int64_t h = 0; h < p->Hq; h++) {
        const int64_t g = h / p->G;
        double m, z;
        row_scores(p, b, t, h, s, &m, &z);
        visible_set vs = visible(p, t);
        for (int64_t c = 0; c < d; c++) acc[c] = 0.0;
        int64_t n = 0;
        for (int64_t j = 0; j < vs.nseq; j++, n++) {
          double w = exp(s[n] - m);
          int64_t iv = off3(p->v_stride, b, j, g);
          for (int64_t c = 0; c < d; c++) acc[c] += w * load(p->v, iv + c, dt);
        }
        for (int64_t u = vs.u_lo; u <= vs.u_hi; u++)
          for (int64_t l = 0; l < p->L; l++, n++) {
            double w = exp(s[n] - m);
            int64_t iv = off4(p->vd_stride, b, u, l, g);
            for (int64_t c = 0; c < d; c++) acc[c] += w * load(p->vd, iv + c, dt);
          }
        /* z >= 1 whenever any key is visible (the max term contributes exp(0)); a row with
         * nothing visible (cannot happen for valid params) gets o = 0, lse = -inf. */
        int64_t io = off3(p->o_stride, b, t, h);
        for (int64_t c = 0; c < d; c++) store(p->o, io + c, dt, z > 0 ? acc[c] / z : 0.0);
        p->lse[off3(p->lse_stride, b, h, t)] = (float)(z > 0 ? m + log(z) : -INFINITY);
      }
  free(s);
  free(acc);
  return MODA_OK;
}

int moda_attn_bwd_ref_cpu(const moda_attn_params *p) {
  const int dt = p->dtype;
  const int64_t B = p->B, T = p->T, S = p->S, Hk = p->Hk, L = p->L, d = p->d;
  /* Gradients accumulate in float64 over the whole call, then are stored once. */
  const int64_t nq = B * T * p->Hq * d, nk = B * S * Hk * d, nkd = B * T * L * Hk * d;
  double *s = malloc(sizeof(double) * max_scores(p));
  double *dp = malloc(sizeof(double) * max_scores(p));
  double *gq = calloc(nq ? nq : 1, sizeof(double));
  double *gk = calloc(nk ? nk : 1, sizeof(double));
  double *gv = calloc(nk ? nk : 1, sizeof(double));
  double *gkd = calloc(nkd ? nkd : 1, sizeof(double));
  double *gvd = calloc(nkd ? nkd : 1, sizeof(double));
  if (!s || !dp || !gq || !gk || !gv || !gkd || !gvd) {
    free(s); free(dp); free(gq); free(gk); free(gv); free(gkd); free(gvd);
    return moda_set_error(MODA_ERR_NOMEM, "moda_attn_bwd (reference): out of memory");
  }
  /* Dense float64 gradient layouts: [B,T,Hq,d], [B,S,Hk,d], [B,T,L,Hk,d]. */
#define GQ(b, t, h) (gq + (((b) * T + (t)) * p->Hq + (h)) * d)
#define GK(buf, b, j, g) (buf + (((b) * S + (j)) * Hk + (g)) * d)
#define GKD(buf, b, u, l, g) (buf + ((((b) * T + (u)) * L + (l)) * Hk + (g)) * d)
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < p->Hq; h++) {
        const int64_t g = h / p->G;
        const int64_t iq = off3(p->q_stride, b, t, h), ido = off3(p->dout_stride, b, t, h);
        double m, z;
        int64_t n = row_scores(p, b, t, h, s, &m, &z);
        visible_set vs = visible(p, t);
        /* P (in place over s) and dP = <do, v>, then D = sum P dP. */
        int64_t e = 0;
        for (int64_t j = 0; j < vs.nseq; j++, e++)
          dp[e] = dot(p->dout, ido, p->v, off3(p->v_stride, b, j, g), d, dt);
        for (int64_t u = vs.u_lo; u <= vs.u_hi; u++)
          for (int64_t l = 0; l < L; l++, e++)
            dp[e] = dot(p->dout, ido, p->vd, off4(p->vd_stride, b, u, l, g), d, dt);
        double D = 0.0;
        for (int64_t i = 0; i < n; i++) {
          s[i] = exp(s[i] - m) / z;
          D += s[i] * dp[i];
        }
        double *gqr = GQ(b, t, h);
        e = 0;
        for (int64_t j = 0; j < vs.nseq; j++, e++) {
          double ds = s[e] * (dp[e] - D);
          int64_t ik = off3(p->k_stride, b, j, g);
          double *gkr = GK(gk, b, j, g), *gvr = GK(gv, b, j, g);
          for (int64_t c = 0; c < d; c++) {
            gqr[c] += p->scale * ds * load(p->k, ik + c, dt);
            gkr[c] += p->scale * ds * load(p->q, iq + c, dt);
            gvr[c] += s[e] * load(p->dout, ido + c, dt);
          }
        }
        for (int64_t u = vs.u_lo; u <= vs.u_hi; u++)
          for (int64_t l = 0; l < L; l++, e++) {
            double ds = s[e] * (dp[e] - D);
            int64_t ik = off4(p->kd_stride, b, u, l, g);
            double *gkr = GKD(gkd, b, u, l, g), *gvr = GKD(gvd, b, u, l, g);
            for (int64_t c = 0; c < d; c++) {
              gqr[c] += p->scale * ds * load(p->kd, ik + c, dt);
              gkr[c] += p->scale * ds * load(p->q, iq + c, dt);
              gvr[c] += s[e] * load(p->dout, ido + c, dt);
            }
          }
      }
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < p->Hq; h++)
        for (int64_t c = 0; c < d; c++)
          store(p->dq, off3(p->dq_stride, b, t, h) + c, dt, GQ(b, t, h)[c]);
    for (int64_t j = 0; j < S; j++)
      for (int64_t g = 0; g < Hk; g++)
        for (int64_t c = 0; c < d; c++) {
          store(p->dk, off3(p->dk_stride, b, j, g) + c, dt, GK(gk, b, j, g)[c]);
          store(p->dv, off3(p->dv_stride, b, j, g) + c, dt, GK(gv, b, j, g)[c]);
        }
    for (int64_t u = 0; u < T; u++)
      for (int64_t l = 0; l < L; l++)
        for (int64_t g = 0; g < Hk; g++)
          for (int64_t c = 0; c < d; c++) {
            store(p->dkd, off4(p->dkd_stride, b, u, l, g) + c, dt, GKD(gkd, b, u, l, g)[c]);
            store(p->dvd, off4(p->dvd_stride, b, u, l, g) + c, dt, GKD(gvd, b, u, l, g)[c]);
          }
  }
#undef GQ
#undef GK
#undef GKD
  free(s); free(dp); free(gq); free(gk); free(gv); free(gkd); free(gvd);
  return MODA_OK;
}
