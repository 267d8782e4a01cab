/* rng.c: a counter-based random generator. Draw number c of seed s is mix(s, c), a pure
 * function, so a fill gives the same values however it is split across threads. The mixer is
 * the splitmix64 finaliser applied to a Weyl-sequence position keyed by the seed. */
#include <math.h>

#include "internal.h"

static uint64_t rng_seed = 0x853c49e6748fea9bull;
static uint64_t rng_counter = 0;

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t draw(uint64_t seed, uint64_t c) {
  return mix64(mix64(seed) + (c + 1) * 0x9e3779b97f4a7c15ull);
}

/* uniform in (0, 1]: never 0, so log() in Box-Muller is finite */
static inline double unit(uint64_t u) { return ((u >> 11) + 1) * (1.0 / 9007199254740992.0); }

void moda_manual_seed(uint64_t seed) { rng_seed = seed; rng_counter = 0; }
void moda_rng_get_state(uint64_t *seed, uint64_t *counter) {
  if (seed) *seed = rng_seed;
  if (counter) *counter = rng_counter;
}
void moda_rng_set_state(uint64_t seed, uint64_t counter) { rng_seed = seed; rng_counter = counter; }

typedef struct { moda_tensor *t; uint64_t seed, base; double a, b; int normal; } fill_ctx;

/* Element i (in row-major order of the shape) uses draw(s) base + i (uniform) or the pair
 * 2(base + i), 2(base + i) + 1 (normal, Box-Muller cosine branch). */
static int fill_rows(void *p, int64_t begin, int64_t end, int tid) {
  fill_ctx *c = p;
  moda_tensor *t = c->t;
  int64_t inner = t->ndim ? t->sizes[t->ndim - 1] : 1;
  char *base = moda_tensor_data(t);
  for (int64_t r = begin; r < end; r++) {
    /* offset of row r: unravel over all dims but the last */
    int64_t off = 0, rem = r;
    for (int d = t->ndim - 2; d >= 0; d--) { off += (rem % t->sizes[d]) * t->strides[d]; rem /= t->sizes[d]; }
    int64_t is = t->ndim ? t->strides[t->ndim - 1] : 0;
    for (int64_t i = 0; i < inner; i++) {
      uint64_t n = c->base + (uint64_t)(r * inner + i);
      double v;
      if (c->normal) {
        double u1 = unit(draw(c->seed, 2 * n)), u2 = unit(draw(c->seed, 2 * n + 1));
        v = c->a + c->b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
      } else {
        v = c->a + (c->b - c->a) * (unit(draw(c->seed, n)) - 0x1p-53);   /* [a, b) */
      }
      moda_store_f64(base, off + i * is, t->dtype_id, v);
    }
  }
  return MODA_OK;
}

static int fill_random(moda_tensor *t, double a, double b, int normal, const char *what) {
  if (!t || !t->storage) return moda_set_error(MODA_ERR_ARG, "%s: tensor is NULL", what);
  if (!moda_dtype_is_float(t->dtype_id))
    return moda_set_error(MODA_ERR_DTYPE, "%s: expected a float tensor, got %s", what, moda_dtype_name(t->dtype_id));
  int64_t numel = moda_tensor_numel(t);
  if (t->device_id != MODA_CPU) {   /* draw on the host, then copy: same stream on every device */
    moda_tensor *h;
    MODA_CHECK(moda_tensor_empty(&h, t->dtype_id, MODA_CPU, t->ndim, t->sizes));
    int st = fill_random(h, a, b, normal, what);
    if (st == MODA_OK) st = moda_tensor_copy(t, h);
    moda_tensor_free(h);
    return st;
  }
  fill_ctx c = {t, rng_seed, rng_counter, a, b, normal};
  rng_counter += (uint64_t)numel;
  if (numel == 0) return MODA_OK;
  int64_t rows = numel / (t->ndim ? t->sizes[t->ndim - 1] : 1);
  int64_t grain = 1 + 16384 / (numel / rows);
  return moda_parallel_for(rows, grain, fill_rows, &c);
}

int moda_tensor_randn(moda_tensor *t, double mean, double std) { return fill_random(t, mean, std, 1, "randn"); }
int moda_tensor_rand(moda_tensor *t, double low, double high) { return fill_random(t, low, high, 0, "rand"); }
