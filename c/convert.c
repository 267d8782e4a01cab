/* convert.c: dtype names and sizes, and the float16 / bfloat16 <-> float32 conversions
 * (round to nearest even, NaN and infinity preserved). */
#include <string.h>

#include "moda.h"

static const struct { const char *name; int64_t size; } dtype_info[MODA_NUM_DTYPES] = {
  [MODA_F32] = {"float32", 4},  [MODA_F64] = {"float64", 8}, [MODA_F16] = {"float16", 2},
  [MODA_BF16] = {"bfloat16", 2}, [MODA_I32] = {"int32", 4},  [MODA_I64] = {"int64", 8},
  [MODA_U8] = {"uint8", 1},
};

int64_t moda_dtype_size(int dtype) {
  return dtype >= 0 && dtype < MODA_NUM_DTYPES ? dtype_info[dtype].size : 0;
}

const char *moda_dtype_name(int dtype) {
  return dtype >= 0 && dtype < MODA_NUM_DTYPES ? dtype_info[dtype].name : "invalid";
}

int moda_dtype_from_name(const char *name) {
  if (!name) return -1;
  for (int i = 0; i < MODA_NUM_DTYPES; i++)
    if (strcmp(name, dtype_info[i].name) == 0) return i;
  return -1;
}

const char *moda_device_name(int device) {
  return device == MODA_CPU ? "cpu" : device == MODA_CUDA ? "cuda" : "invalid";
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float moda_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));      /* inf / nan */
  if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));  /* normal */
  if (mant == 0) return bits_f32(sign);                                      /* +-0 */
  /* subnormal: value = mant * 2^-24, exact in float32 */
  float v = (float)mant * (1.0f / 16777216.0f);
  return sign ? -v : v;
}

uint16_t moda_float_to_half(float f) {
  uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000;
  uint32_t absu = u & 0x7fffffffu;
  if (absu >= 0x7f800000u)                                  /* inf or nan (keep it a nan) */
    return (uint16_t)(sign | 0x7c00 | (absu > 0x7f800000u ? 0x200 | ((absu >> 13) & 0x3ff) : 0));
  if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
  if (absu < 0x38800000u) {                                 /* below the smallest normal half */
    /* subnormal or zero: scale so the integer part is the half mantissa, round to even */
    float a = bits_f32(absu) * 16777216.0f;                 /* exact: a power of two */
    uint32_t m = (uint32_t)a;
    float rem = a - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
    return (uint16_t)(sign | m);                            /* m == 0x400 becomes the min normal */
  }
  uint32_t exp = ((absu >> 23) - 112) << 10, mant = (absu >> 13) & 0x3ff;
  uint32_t h = exp | mant, rest = absu & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;    /* carry may roll into the exponent */
  return (uint16_t)(sign | h);
}

float moda_bf16_to_float(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t moda_float_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
  u += 0x7fffu + ((u >> 16) & 1);                                           /* nearest even */
  return (uint16_t)(u >> 16);
}
