/* safetensors.c: reading and writing the Hugging Face safetensors format (see moda_io.h).
 *
 * Layout: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data buffer.
 * The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets are
 * relative to the data buffer) plus an optional "__metadata__" object of strings.
 *
 * The reader trusts nothing: the JSON parser below is strict (RFC 8259, UTF-8 checked, no
 * duplicate keys, bounded depth) and every number that becomes a size is checked for sign and
 * overflow before use. As in the reference (Rust) reader, the byte ranges must tile the data
 * buffer exactly: sorted by offset they start at 0, each begins where the previous ended, and
 * the last ends at the end of the file. The path variant validates the header first and then
 * reads each tensor's bytes straight into the tensor with pread, so a file is never held twice
 * in memory.
 *
 * The writer produces what the reference writer produces for the same tensors in the same
 * order: compact JSON, "__metadata__" first, keys dtype/shape/data_offsets, the header padded
 * with spaces to a multiple of 8 bytes. It writes to "<path>.tmp.<pid>", fsyncs, and renames
 * over path, so readers see either the old file or the complete new one. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moda_io.h"

/* The reference implementation's limit; a larger header is a corrupt or hostile file. */
#define ST_MAX_HEADER 100000000ull
/* The header needs depth 3 (root, tensor entry, shape); metadata values are strings. The limit
 * only keeps the recursive parser's stack bounded on hostile input. */
#define JSON_MAX_DEPTH 64

/* ------------------------------------------------------------------------------------------ */
/* dtypes                                                                                      */

static const struct { const char *name; int dtype; } st_dtypes[] = {
  {"F32", MODA_F32}, {"F64", MODA_F64}, {"F16", MODA_F16}, {"BF16", MODA_BF16},
  {"I32", MODA_I32}, {"I64", MODA_I64}, {"U8", MODA_U8},
};
/* Valid in safetensors but with no moda dtype: named in the error so the user knows the file
 * is fine and moda is the limit. */
static const char *const st_unsupported[] = {
  "BOOL", "I8", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",
  "F6_E2M3", "F6_E3M2", "C64",
};

static const char *st_dtype_name(int dtype) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (st_dtypes[i].dtype == dtype) return st_dtypes[i].name;
  return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* a strict JSON parser into a flat node array                                                 */

enum { J_NULL, J_FALSE, J_TRUE, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT };
static const char *const j_type_names[] = {
  "null", "false", "true", "a number", "a string", "an array", "an object",
};

/* How a number literal turned out: only NUM_INT values are usable as sizes. */
enum { NUM_INT, NUM_FRACTION, NUM_OVERFLOW };

typedef struct jnode {
  int type;
  int num_kind;          /* J_NUMBER: NUM_* */
  int num_negative;      /* J_NUMBER: had a leading '-' (so "-0" counts as negative) */
  int64_t num;           /* J_NUMBER with NUM_INT: the value */
  const char *str;       /* J_STRING: decoded UTF-8, NUL-terminated, in the string arena */
  size_t len;            /* J_STRING: decoded length (may include NUL bytes from \u0000) */
  const char *key;       /* member of an object: its decoded key */
  size_t key_len;
  int64_t first;         /* J_ARRAY / J_OBJECT: index of the first child, -1 if none */
  int64_t next;          /* index of the next sibling, -1 if last */
  int64_t count;         /* J_ARRAY / J_OBJECT: number of children */
  size_t begin, end;     /* the value's byte span in the text */
} jnode;

typedef struct jparser {
  const unsigned char *s;
  size_t n, pos;
  jnode *nodes;          /* indices, not pointers: the array moves as it grows */
  int64_t nnodes, cap;
  char *strs;            /* decoded strings; n + 1 bytes suffice (see json_parse) */
  size_t strpos;
  int status;            /* MODA_ERR_FORMAT or MODA_ERR_NOMEM once something failed */
  char err[320];
} jparser;

static int64_t j_fail(jparser *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int64_t j_fail(jparser *p, int status, const char *fmt, ...) {
  if (p->status == MODA_OK) {   /* keep the first (innermost) error */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->status = status;
  }
  return -1;
}

static int64_t j_new(jparser *p, int type) {
  if (p->nnodes == p->cap) {
    int64_t cap = p->cap ? p->cap * 2 : 64;
    jnode *nodes = realloc(p->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes) return j_fail(p, MODA_ERR_NOMEM, "out of memory parsing JSON");
    p->nodes = nodes;
    p->cap = cap;
  }
  jnode *nd = &p->nodes[p->nnodes];
  memset(nd, 0, sizeof *nd);
  nd->type = type;
  nd->first = nd->next = -1;
  nd->begin = p->pos;
  return p->nnodes++;
}

static void j_skip_ws(jparser *p) {
  while (p->pos < p->n) {
    unsigned char c = p->s[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->pos++;
  }
}

/* Describes the byte at the current position for error messages. */
static const char *j_here(jparser *p, char *buf, size_t size) {
  if (p->pos >= p->n) return "end of input";
  unsigned char c = p->s[p->pos];
  if (c >= 0x20 && c < 0x7f) snprintf(buf, size, "'%c'", c);
  else snprintf(buf, size, "byte 0x%02x", c);
  return buf;
}

static int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Reads the 4 hex digits of a \u escape at p->pos. */
static int j_hex4(jparser *p, unsigned *out) {
  if (p->n - p->pos < 4) return (int)j_fail(p, MODA_ERR_FORMAT, "truncated \\u escape at byte %zu", p->pos);
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex_value(p->s[p->pos + i]);
    if (h < 0) return (int)j_fail(p, MODA_ERR_FORMAT, "bad hex digit in \\u escape at byte %zu", p->pos + i);
    v = v * 16 + (unsigned)h;
  }
  p->pos += 4;
  *out = v;
  return 0;
}

/* Length of the valid UTF-8 sequence at s[0..avail), or 0 if invalid (overlong forms,
 * surrogates and code points above U+10FFFF are invalid, per RFC 3629). */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;   /* allowed range of the second byte */
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c == 0xe0) { len = 3; lo = 0xa0; }
  else if (c >= 0xe1 && c <= 0xec) len = 3;
  else if (c == 0xed) { len = 3; hi = 0x9f; }
  else if (c >= 0xee && c <= 0xef) len = 3;
  else if (c == 0xf0) { len = 4; lo = 0x90; }
  else if (c >= 0xf1 && c <= 0xf3) len = 4;
  else if (c == 0xf4) { len = 4; hi = 0x8f; }
  else return 0;
  if (avail < len) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return len;
}

static size_t utf8_encode(char *out, unsigned cp) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Parses a string at p->pos (which is '"') into the arena; returns 0 or -1. */
static int j_string(jparser *p, const char **out, size_t *out_len) {
  size_t start = p->pos++;   /* the opening quote */
  char *dst = p->strs + p->strpos;
  size_t len = 0;
  for (;;) {
    if (p->pos >= p->n)
      return (int)j_fail(p, MODA_ERR_FORMAT, "unterminated string starting at byte %zu", start);
    unsigned char c = p->s[p->pos];
    if (c == '"') { p->pos++; break; }
    if (c < 0x20)
      return (int)j_fail(p, MODA_ERR_FORMAT, "unescaped control character 0x%02x in string at byte %zu",
                         c, p->pos);
    if (c >= 0x80) {
      size_t k = utf8_seq_len(p->s + p->pos, p->n - p->pos);
      if (k == 0) return (int)j_fail(p, MODA_ERR_FORMAT, "invalid UTF-8 in string at byte %zu", p->pos);
      memcpy(dst + len, p->s + p->pos, k);
      len += k;
      p->pos += k;
      continue;
    }
    if (c != '\\') { dst[len++] = (char)c; p->pos++; continue; }
    /* an escape */
    if (++p->pos >= p->n)
      return (int)j_fail(p, MODA_ERR_FORMAT, "unterminated string starting at byte %zu", start);
    unsigned char e = p->s[p->pos++];
    switch (e) {
      case '"': dst[len++] = '"'; break;
      case '\\': dst[len++] = '\\'; break;
      case '/': dst[len++] = '/'; break;
      case 'b': dst[len++] = '\b'; break;
      case 'f': dst[len++] = '\f'; break;
      case 'n': dst[len++] = '\n'; break;
      case 'r': dst[len++] = '\r'; break;
      case 't': dst[len++] = '\t'; break;
      case 'u': {
        size_t at = p->pos - 2;
        unsigned cp;
        if (j_hex4(p, &cp)) return -1;
        if (cp >= 0xdc00 && cp <= 0xdfff)
          return (int)j_fail(p, MODA_ERR_FORMAT, "lone low surrogate \\u%04x at byte %zu", cp, at);
        if (cp >= 0xd800 && cp <= 0xdbff) {   /* must be followed by \u + a low surrogate */
          unsigned lo;
          if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return (int)j_fail(p, MODA_ERR_FORMAT, "high surrogate \\u%04x at byte %zu not followed by a low surrogate", cp, at);
          p->pos += 2;
          if (j_hex4(p, &lo)) return -1;
          if (lo < 0xdc00 || lo > 0xdfff)
            return (int)j_fail(p, MODA_ERR_FORMAT, "high surrogate \\u%04x at byte %zu not followed by a low surrogate", cp, at);
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        len += utf8_encode(dst + len, cp);
        break;
      }
      default:
        return (int)j_fail(p, MODA_ERR_FORMAT, "invalid escape '\\%c' in string at byte %zu",
                           (e >= 0x20 && e < 0x7f) ? e : '?', p->pos - 2);
    }
  }
  dst[len] = '\0';
  p->strpos += len + 1;
  *out = dst;
  *out_len = len;
  return 0;
}

/* A JSON number (full RFC grammar, so a float is recognised and rejected later with a clear
 * message rather than as a syntax error). */
static int64_t j_number(jparser *p) {
  int64_t id = j_new(p, J_NUMBER);
  if (id < 0) return -1;
  size_t start = p->pos;
  int negative = 0, kind = NUM_INT;
  uint64_t mag = 0;
  if (p->s[p->pos] == '-') { negative = 1; p->pos++; }
  if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
    return j_fail(p, MODA_ERR_FORMAT, "invalid number at byte %zu", start);
  if (p->s[p->pos] == '0') {
    p->pos++;
    if (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
      return j_fail(p, MODA_ERR_FORMAT, "number with a leading zero at byte %zu", start);
  } else {
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
      unsigned d = p->s[p->pos++] - '0';
      if (mag > ((uint64_t)INT64_MAX - d) / 10) kind = NUM_OVERFLOW;
      else mag = mag * 10 + d;
    }
  }
  if (p->pos < p->n && p->s[p->pos] == '.') {
    p->pos++;
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
      return j_fail(p, MODA_ERR_FORMAT, "invalid number at byte %zu", start);
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    kind = NUM_FRACTION;
  }
  if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
    p->pos++;
    if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
      return j_fail(p, MODA_ERR_FORMAT, "invalid number at byte %zu", start);
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    kind = NUM_FRACTION;
  }
  jnode *nd = &p->nodes[id];
  nd->num_kind = kind;
  nd->num_negative = negative;
  nd->num = negative ? -(int64_t)mag : (int64_t)mag;
  return id;
}

static int key_cmp(const void *a, const void *b) {
  const jnode *x = *(const jnode *const *)a, *y = *(const jnode *const *)b;
  size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->key, y->key, n);
  if (c) return c;
  return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* Rejects an object with two equal keys (sorting, so a header with many tensors stays fast). */
static int j_check_duplicates(jparser *p, int64_t obj) {
  int64_t n = p->nodes[obj].count;
  if (n < 2) return 0;
  const jnode **keys = malloc((size_t)n * sizeof *keys);
  if (!keys) return (int)j_fail(p, MODA_ERR_NOMEM, "out of memory parsing JSON");
  int64_t i = 0;
  for (int64_t c = p->nodes[obj].first; c >= 0; c = p->nodes[c].next) keys[i++] = &p->nodes[c];
  qsort(keys, (size_t)n, sizeof *keys, key_cmp);
  int rc = 0;
  for (i = 1; i < n; i++)
    if (key_cmp(&keys[i - 1], &keys[i]) == 0) {
      rc = (int)j_fail(p, MODA_ERR_FORMAT, "duplicate key \"%s\" in the object at byte %zu",
                       keys[i]->key, p->nodes[obj].begin);
      break;
    }
  free(keys);
  return rc;
}

static int64_t j_value(jparser *p, int depth);

/* An array or an object at p->pos ('[' or '{'). */
static int64_t j_container(jparser *p, int depth, int is_object) {
  int64_t id = j_new(p, is_object ? J_OBJECT : J_ARRAY);
  if (id < 0) return -1;
  char close = is_object ? '}' : ']';
  int64_t last = -1;
  char here[32];
  p->pos++;
  j_skip_ws(p);
  if (p->pos < p->n && p->s[p->pos] == (unsigned char)close) { p->pos++; goto done; }
  for (;;) {
    const char *key = NULL;
    size_t key_len = 0;
    if (is_object) {
      if (p->pos >= p->n || p->s[p->pos] != '"')
        return j_fail(p, MODA_ERR_FORMAT, "expected a string key at byte %zu, found %s", p->pos,
                      j_here(p, here, sizeof here));
      if (j_string(p, &key, &key_len)) return -1;
      j_skip_ws(p);
      if (p->pos >= p->n || p->s[p->pos] != ':')
        return j_fail(p, MODA_ERR_FORMAT, "expected ':' at byte %zu, found %s", p->pos,
                      j_here(p, here, sizeof here));
      p->pos++;
      j_skip_ws(p);
    }
    int64_t child = j_value(p, depth + 1);
    if (child < 0) return -1;
    p->nodes[child].key = key;
    p->nodes[child].key_len = key_len;
    if (last < 0) p->nodes[id].first = child;
    else p->nodes[last].next = child;
    last = child;
    p->nodes[id].count++;
    j_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == ',') {
      p->pos++;
      j_skip_ws(p);
      continue;
    }
    if (p->pos < p->n && p->s[p->pos] == (unsigned char)close) { p->pos++; break; }
    return j_fail(p, MODA_ERR_FORMAT, "expected ',' or '%c' at byte %zu, found %s", close, p->pos,
                  j_here(p, here, sizeof here));
  }
done:
  p->nodes[id].end = p->pos;
  if (is_object && j_check_duplicates(p, id)) return -1;
  return id;
}

static int64_t j_value(jparser *p, int depth) {
  char here[32];
  if (depth > JSON_MAX_DEPTH)
    return j_fail(p, MODA_ERR_FORMAT, "JSON nested deeper than %d levels at byte %zu",
                  JSON_MAX_DEPTH, p->pos);
  if (p->pos >= p->n) return j_fail(p, MODA_ERR_FORMAT, "unexpected end of JSON");
  unsigned char c = p->s[p->pos];
  int64_t id;
  if (c == '{' || c == '[') return j_container(p, depth, c == '{');
  if (c == '"') {
    if ((id = j_new(p, J_STRING)) < 0) return -1;
    const char *str;
    size_t len;
    if (j_string(p, &str, &len)) return -1;
    p->nodes[id].str = str;
    p->nodes[id].len = len;
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    if ((id = j_number(p)) < 0) return -1;
  } else {
    static const struct { const char *word; int type; } words[] = {
      {"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL},
    };
    id = -1;
    for (int i = 0; i < 3; i++) {
      size_t k = strlen(words[i].word);
      if (p->n - p->pos >= k && memcmp(p->s + p->pos, words[i].word, k) == 0) {
        if ((id = j_new(p, words[i].type)) < 0) return -1;
        p->pos += k;
        break;
      }
    }
    if (id < 0)
      return j_fail(p, MODA_ERR_FORMAT, "unexpected %s at byte %zu", j_here(p, here, sizeof here),
                    p->pos);
  }
  p->nodes[id].end = p->pos;
  return id;
}

/* Parses text[0..n) as one JSON value with optional surrounding whitespace. Returns 0, or -1
 * with p->status / p->err set. Free with json_free. */
static int json_parse(jparser *p, const void *text, size_t n) {
  memset(p, 0, sizeof *p);
  p->s = text;
  p->n = n;
  /* Every decoded string, plus its NUL, is no longer than its quoted source (an escape of k
   * bytes decodes to fewer than k), and sources do not overlap: n + 1 bytes hold them all. */
  p->strs = malloc(n + 1);
  if (!p->strs) return (int)j_fail(p, MODA_ERR_NOMEM, "out of memory parsing JSON");
  j_skip_ws(p);
  if (p->pos >= p->n) return (int)j_fail(p, MODA_ERR_FORMAT, "empty JSON");
  if (j_value(p, 1) < 0) return -1;
  j_skip_ws(p);
  if (p->pos != p->n) {
    char here[32];
    return (int)j_fail(p, MODA_ERR_FORMAT, "unexpected %s after the JSON value at byte %zu",
                       j_here(p, here, sizeof here), p->pos);
  }
  return 0;
}

static void json_free(jparser *p) {
  free(p->nodes);
  free(p->strs);
  p->nodes = NULL;
  p->strs = NULL;
}

/* Checks that node `obj` is an object whose values are all strings (the metadata rule). */
static int j_check_string_object(jparser *p, int64_t obj) {
  if (p->nodes[obj].type != J_OBJECT)
    return (int)j_fail(p, MODA_ERR_FORMAT, "is %s, expected an object of strings",
                       j_type_names[p->nodes[obj].type]);
  for (int64_t c = p->nodes[obj].first; c >= 0; c = p->nodes[c].next)
    if (p->nodes[c].type != J_STRING)
      return (int)j_fail(p, MODA_ERR_FORMAT, "value of \"%s\" is %s, expected a string",
                         p->nodes[c].key, j_type_names[p->nodes[c].type]);
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the tensor list                                                                             */

struct moda_tensor_list {
  int64_t n;
  char **names;
  moda_tensor **tensors;
  char *metadata;        /* the "__metadata__" object's JSON text as found in the file, or NULL */
};

int64_t moda_tensor_list_size(const moda_tensor_list *list) { return list ? list->n : 0; }

const char *moda_tensor_list_name(const moda_tensor_list *list, int64_t i) {
  if (!list || i < 0 || i >= list->n) return NULL;
  return list->names[i];
}

moda_tensor *moda_tensor_list_get(const moda_tensor_list *list, int64_t i) {
  if (!list || i < 0 || i >= list->n) return NULL;
  const moda_tensor *t = list->tensors[i];
  moda_tensor *ref = NULL;
  /* a view of the whole tensor is a new reference to the same storage */
  if (moda_tensor_as_strided(&ref, t, t->ndim, t->sizes, t->strides, t->offset) != MODA_OK)
    return NULL;
  return ref;
}

const char *moda_tensor_list_metadata(const moda_tensor_list *list) {
  return list ? list->metadata : NULL;
}

void moda_tensor_list_free(moda_tensor_list *list) {
  if (!list) return;
  for (int64_t i = 0; i < list->n; i++) {
    free(list->names[i]);
    if (list->tensors[i]) moda_tensor_free(list->tensors[i]);
  }
  free(list->names);
  free(list->tensors);
  free(list->metadata);
  free(list);
}

/* ------------------------------------------------------------------------------------------ */
/* reading                                                                                     */

/* Where the bytes come from: a buffer in memory or an open file (read with pread). */
typedef struct st_source {
  const char *label;           /* "path: " for error messages, or "" */
  const unsigned char *bytes;  /* the whole file, or NULL */
  int fd;
} st_source;

typedef struct st_entry {
  const char *name;            /* in the parser's arena */
  int dtype, ndim;
  int64_t shape[MODA_MAX_DIMS];
  int64_t begin, end;
} st_entry;

static int st_error(const st_source *src, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int st_error(const st_source *src, int status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return moda_set_error(status, "%s%s", src->label, msg);
}

/* Reads a non-negative integer from a JSON node; `what` names it in the error. */
static int st_get_size(const st_source *src, const jnode *nd, const char *name, const char *what,
                       int64_t *out) {
  if (nd->type != J_NUMBER)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": %s is %s, expected an integer", name,
                    what, j_type_names[nd->type]);
  if (nd->num_kind == NUM_FRACTION)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": %s is not an integer", name, what);
  if (nd->num_negative)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": %s is negative", name, what);
  if (nd->num_kind == NUM_OVERFLOW)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": %s overflows int64", name, what);
  *out = nd->num;
  return MODA_OK;
}

/* Fills *e from the JSON object describing tensor `name`. */
static int st_parse_entry(const st_source *src, const jparser *p, const jnode *val,
                          const char *name, st_entry *e) {
  if (val->type != J_OBJECT)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": entry is %s, expected an object", name,
                    j_type_names[val->type]);
  const jnode *dtype = NULL, *shape = NULL, *offsets = NULL;
  for (int64_t c = val->first; c >= 0; c = p->nodes[c].next) {
    const jnode *m = &p->nodes[c];
    if (strcmp(m->key, "dtype") == 0) dtype = m;
    else if (strcmp(m->key, "shape") == 0) shape = m;
    else if (strcmp(m->key, "data_offsets") == 0) offsets = m;
    else
      return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": unexpected key \"%s\"", name, m->key);
  }
  if (!dtype) return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": missing \"dtype\"", name);
  if (!shape) return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": missing \"shape\"", name);
  if (!offsets)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": missing \"data_offsets\"", name);

  memset(e, 0, sizeof *e);
  e->name = name;
  e->dtype = -1;
  if (dtype->type != J_STRING)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": dtype is %s, expected a string", name,
                    j_type_names[dtype->type]);
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (strcmp(dtype->str, st_dtypes[i].name) == 0) e->dtype = st_dtypes[i].dtype;
  if (e->dtype < 0) {
    for (size_t i = 0; i < sizeof st_unsupported / sizeof st_unsupported[0]; i++)
      if (strcmp(dtype->str, st_unsupported[i]) == 0)
        return st_error(src, MODA_ERR_FORMAT,
                        "tensor \"%s\": dtype \"%s\" is not supported by moda "
                        "(F32, F64, F16, BF16, I32, I64, U8 are)", name, dtype->str);
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": unknown dtype \"%s\"", name, dtype->str);
  }

  if (shape->type != J_ARRAY)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": shape is %s, expected an array", name,
                    j_type_names[shape->type]);
  if (shape->count > MODA_MAX_DIMS)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": shape has %" PRId64
                    " dims, moda supports at most %d", name, shape->count, MODA_MAX_DIMS);
  e->ndim = (int)shape->count;
  /* The byte size, checked for overflow; a 0 anywhere makes it 0 whatever the other dims. */
  int64_t nbytes = moda_dtype_size(e->dtype);
  int overflow = 0, has_zero = 0, k = 0;
  for (int64_t c = shape->first; c >= 0; c = p->nodes[c].next, k++) {
    char what[32];
    snprintf(what, sizeof what, "shape[%d]", k);
    int st = st_get_size(src, &p->nodes[c], name, what, &e->shape[k]);
    if (st) return st;
    if (e->shape[k] == 0) has_zero = 1;
    else if (!overflow && __builtin_mul_overflow(nbytes, e->shape[k], &nbytes)) overflow = 1;
  }
  if (has_zero) nbytes = 0;
  else if (overflow)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": shape's byte size overflows int64", name);

  if (offsets->type != J_ARRAY || offsets->count != 2)
    return st_error(src, MODA_ERR_FORMAT,
                    "tensor \"%s\": data_offsets must be an array of 2 integers [begin, end]", name);
  int st = st_get_size(src, &p->nodes[offsets->first], name, "data_offsets[0]", &e->begin);
  if (!st) st = st_get_size(src, &p->nodes[p->nodes[offsets->first].next], name, "data_offsets[1]",
                            &e->end);
  if (st) return st;
  if (e->begin > e->end)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": data_offsets [%" PRId64 ", %" PRId64
                    "] end before they begin", name, e->begin, e->end);
  if (e->end - e->begin != nbytes)
    return st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": shape and dtype %s need %" PRId64
                    " bytes but data_offsets [%" PRId64 ", %" PRId64 "] hold %" PRId64, name,
                    dtype->str, nbytes, e->begin, e->end, e->end - e->begin);
  return MODA_OK;
}

/* A tensor's byte range, for sorting by offset. */
typedef struct st_range { int64_t begin, end, idx; } st_range;

static int range_cmp(const void *a, const void *b) {
  const st_range *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;   /* empty tensors first */
  return 0;
}

/* The ranges, sorted, must tile [0, data_size) exactly (what the reference reader demands):
 * anything else is a corrupt file or bytes nobody accounts for. */
static int st_check_coverage(const st_source *src, const st_entry *e, int64_t n, int64_t data_size) {
  st_range *r = malloc((size_t)(n ? n : 1) * sizeof *r);
  if (!r) return st_error(src, MODA_ERR_NOMEM, "out of memory");
  for (int64_t i = 0; i < n; i++) { r[i].begin = e[i].begin; r[i].end = e[i].end; r[i].idx = i; }
  qsort(r, (size_t)n, sizeof *r, range_cmp);
  int st = MODA_OK;
  int64_t pos = 0, prev = -1;
  for (int64_t i = 0; i < n && st == MODA_OK; i++) {
    const st_entry *cur = &e[r[i].idx];
    if (cur->end > data_size)
      st = st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": data_offsets [%" PRId64 ", %" PRId64
                    "] run past the end of the data (%" PRId64 " bytes)", cur->name, cur->begin,
                    cur->end, data_size);
    else if (cur->begin < pos)
      st = st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": data_offsets [%" PRId64 ", %" PRId64
                    "] overlap those of tensor \"%s\"", cur->name, cur->begin, cur->end,
                    e[prev].name);
    else if (cur->begin > pos)
      st = st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": gap of %" PRId64 " bytes before its "
                    "data_offsets [%" PRId64 ", %" PRId64 "] (tensor data must be contiguous)",
                    cur->name, cur->begin - pos, cur->begin, cur->end);
    pos = cur->end;
    prev = r[i].idx;
  }
  if (st == MODA_OK && pos != data_size)
    st = st_error(src, MODA_ERR_FORMAT, "%" PRId64 " bytes of data after the last tensor are not "
                  "covered by any tensor's data_offsets", data_size - pos);
  free(r);
  return st;
}

/* Reads exactly len bytes at file offset off (pread: no shared file position to race on). */
static int st_pread(const st_source *src, void *dst, size_t len, uint64_t off) {
  unsigned char *d = dst;
  while (len > 0) {
    ssize_t got = pread(src->fd, d, len, (off_t)off);
    if (got < 0) {
      if (errno == EINTR) continue;
      return st_error(src, MODA_ERR_IO, "read failed: %s", strerror(errno));
    }
    if (got == 0) return st_error(src, MODA_ERR_IO, "file ended early (was it truncated while reading?)");
    d += got;
    len -= (size_t)got;
    off += (uint64_t)got;
  }
  return MODA_OK;
}

/* Copies len bytes at offset off of the file into dst, from whichever source we have. */
static int st_fetch(const st_source *src, void *dst, size_t len, uint64_t off) {
  if (len == 0) return MODA_OK;
  if (src->bytes) { memcpy(dst, src->bytes + off, len); return MODA_OK; }
  return st_pread(src, dst, len, off);
}

/* Validates the whole file (file_size bytes) and builds the list. */
static int st_read(moda_tensor_list **out, const st_source *src, uint64_t file_size) {
  if (file_size < 8)
    return st_error(src, MODA_ERR_FORMAT, "file is %" PRIu64 " bytes, too short for the 8-byte "
                    "header length", file_size);
  unsigned char lenbuf[8];
  int st = st_fetch(src, lenbuf, 8, 0);
  if (st) return st;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];   /* little-endian */
  if (hlen == 0)
    return st_error(src, MODA_ERR_FORMAT, "header length is 0 (the header must be a JSON object)");
  if (hlen > ST_MAX_HEADER)
    return st_error(src, MODA_ERR_FORMAT, "header length %" PRIu64 " is over the limit of %llu "
                    "bytes", hlen, ST_MAX_HEADER);
  if (hlen > file_size - 8)
    return st_error(src, MODA_ERR_FORMAT, "header length %" PRIu64 " runs past the end of the "
                    "file (%" PRIu64 " bytes)", hlen, file_size);
  int64_t data_size = (int64_t)(file_size - 8 - hlen);

  unsigned char *hbuf = NULL;
  const unsigned char *header;
  if (src->bytes) {
    header = src->bytes + 8;
  } else {
    if (!(hbuf = malloc(hlen))) return st_error(src, MODA_ERR_NOMEM, "out of memory");
    if ((st = st_fetch(src, hbuf, hlen, 8))) { free(hbuf); return st; }
    header = hbuf;
  }

  jparser p;
  st_entry *entries = NULL;
  moda_tensor_list *list = NULL;
  const jnode *meta = NULL;
  int64_t n = 0;
  if (json_parse(&p, header, hlen)) {
    st = st_error(src, p.status, "header is not valid JSON: %s", p.err);
    goto fail;
  }
  const jnode *root = &p.nodes[0];
  if (root->type != J_OBJECT) {
    st = st_error(src, MODA_ERR_FORMAT, "header is %s, expected a JSON object",
                  j_type_names[root->type]);
    goto fail;
  }
  if (!(entries = malloc((size_t)(root->count ? root->count : 1) * sizeof *entries))) {
    st = st_error(src, MODA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (int64_t c = root->first; c >= 0; c = p.nodes[c].next) {
    const jnode *m = &p.nodes[c];
    if (strcmp(m->key, "__metadata__") == 0 && m->key_len == 12) {
      if (j_check_string_object(&p, c)) {
        st = st_error(src, MODA_ERR_FORMAT, "__metadata__: %s", p.err);
        goto fail;
      }
      meta = m;
      continue;
    }
    /* names become C strings: an embedded NUL would silently truncate one */
    if (strlen(m->key) != m->key_len) {
      st = st_error(src, MODA_ERR_FORMAT, "tensor \"%s\": name contains a NUL character", m->key);
      goto fail;
    }
    if ((st = st_parse_entry(src, &p, m, m->key, &entries[n]))) goto fail;
    n++;
  }
  if ((st = st_check_coverage(src, entries, n, data_size))) goto fail;

  /* The header is good: build the list, then fill each tensor from the data buffer. */
  if (!(list = calloc(1, sizeof *list)) ||
      !(list->names = calloc((size_t)(n ? n : 1), sizeof *list->names)) ||
      !(list->tensors = calloc((size_t)(n ? n : 1), sizeof *list->tensors)) ||
      (meta && !(list->metadata = strndup((const char *)header + meta->begin,
                                          meta->end - meta->begin)))) {
    st = st_error(src, MODA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (int64_t i = 0; i < n; i++) {
    const st_entry *e = &entries[i];
    if (!(list->names[i] = strdup(e->name))) {
      st = st_error(src, MODA_ERR_NOMEM, "out of memory");
      goto fail;
    }
    list->n = i + 1;   /* from here moda_tensor_list_free owns entry i */
    if ((st = moda_tensor_empty(&list->tensors[i], e->dtype, MODA_CPU, e->ndim, e->shape))) {
      st = st_error(src, st, "tensor \"%s\": %s", e->name, moda_last_error());
      goto fail;
    }
    uint64_t off = 8 + hlen + (uint64_t)e->begin;
    if ((st = st_fetch(src, moda_tensor_data(list->tensors[i]), (size_t)(e->end - e->begin), off)))
      goto fail;
  }
  free(entries);
  json_free(&p);
  free(hbuf);
  *out = list;
  return MODA_OK;

fail:
  moda_tensor_list_free(list);
  free(entries);
  json_free(&p);
  free(hbuf);
  return st;
}

int moda_safetensors_read_buffer(moda_tensor_list **out, const void *bytes, int64_t nbytes) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "moda_safetensors_read_buffer: out is NULL");
  *out = NULL;
  if (nbytes < 0 || (!bytes && nbytes > 0))
    return moda_set_error(MODA_ERR_ARG, "moda_safetensors_read_buffer: bad buffer (%p, %" PRId64
                          " bytes)", bytes, nbytes);
  st_source src = { "", bytes ? bytes : (const unsigned char *)"", -1 };
  return st_read(out, &src, (uint64_t)nbytes);
}

int moda_safetensors_read(moda_tensor_list **out, const char *path) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "moda_safetensors_read: out is NULL");
  *out = NULL;
  if (!path) return moda_set_error(MODA_ERR_ARG, "moda_safetensors_read: path is NULL");
  char label[4096 + 8];
  snprintf(label, sizeof label, "%s: ", path);
  st_source src = { label, NULL, -1 };
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return st_error(&src, MODA_ERR_IO, "cannot open: %s", strerror(errno));
  src.fd = fd;
  struct stat sb;
  int st;
  if (fstat(fd, &sb) != 0) st = st_error(&src, MODA_ERR_IO, "cannot stat: %s", strerror(errno));
  else if (!S_ISREG(sb.st_mode)) st = st_error(&src, MODA_ERR_IO, "not a regular file");
  else st = st_read(out, &src, (uint64_t)sb.st_size);
  close(fd);   /* read-only: nothing to lose if close fails */
  return st;
}

/* ------------------------------------------------------------------------------------------ */
/* writing                                                                                     */

/* A growing byte buffer; `failed` latches an allocation failure so callers check once. */
typedef struct sbuf { char *p; size_t len, cap; int failed; } sbuf;

static void sb_add(sbuf *b, const void *s, size_t n) {
  if (b->failed) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) { b->failed = 1; return; }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_i64(sbuf *b, int64_t v) {
  char tmp[32];
  sb_add(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%" PRId64, v));
}

/* A JSON string escaped exactly as serde_json (the reference writer) and Python's json do:
 * short escapes where JSON has them, \u00XX (lowercase hex) for other control characters,
 * everything else (including non-ASCII UTF-8 and '/') as is. */
static void sb_json_string(sbuf *b, const char *s) {
  sb_add(b, "\"", 1);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    switch (*c) {
      case '"': sb_add(b, "\\\"", 2); break;
      case '\\': sb_add(b, "\\\\", 2); break;
      case '\b': sb_add(b, "\\b", 2); break;
      case '\f': sb_add(b, "\\f", 2); break;
      case '\n': sb_add(b, "\\n", 2); break;
      case '\r': sb_add(b, "\\r", 2); break;
      case '\t': sb_add(b, "\\t", 2); break;
      default:
        if (*c < 0x20) {
          char tmp[8];
          snprintf(tmp, sizeof tmp, "\\u%04x", *c);
          sb_add(b, tmp, 6);
        } else {
          sb_add(b, c, 1);
        }
    }
  }
  sb_add(b, "\"", 1);
}

static int utf8_valid(const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq_len(u + i, n - i);
    if (k == 0) return 0;
    i += k;
  }
  return 1;
}

static int str_ptr_cmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the arguments and builds the padded header. */
static int st_build_header(sbuf *h, const char *path, int64_t n, const char *const *names,
                           const moda_tensor *const *tensors, const char *metadata_json) {
  for (int64_t i = 0; i < n; i++) {
    const char *name = names[i];
    const moda_tensor *t = tensors[i];
    if (!name) return moda_set_error(MODA_ERR_ARG, "%s: name %" PRId64 " is NULL", path, i);
    if (strcmp(name, "__metadata__") == 0)
      return moda_set_error(MODA_ERR_ARG, "%s: \"__metadata__\" is reserved and cannot name a "
                            "tensor", path);
    if (!utf8_valid(name))
      return moda_set_error(MODA_ERR_ARG, "%s: tensor name %" PRId64 " is not valid UTF-8", path, i);
    if (!t) return moda_set_error(MODA_ERR_ARG, "%s: tensor \"%s\" is NULL", path, name);
    if (!st_dtype_name(t->dtype_id))
      return moda_set_error(MODA_ERR_DTYPE, "%s: tensor \"%s\" has invalid dtype %d", path, name,
                            t->dtype_id);
    if (t->ndim < 0 || t->ndim > MODA_MAX_DIMS)
      return moda_set_error(MODA_ERR_ARG, "%s: tensor \"%s\" has invalid ndim %d", path, name,
                            t->ndim);
  }
  if (n > 1) {   /* duplicates: sort a copy of the name pointers */
    const char **sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted) return moda_set_error(MODA_ERR_NOMEM, "%s: out of memory", path);
    memcpy(sorted, names, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, str_ptr_cmp);
    for (int64_t i = 1; i < n; i++)
      if (strcmp(sorted[i - 1], sorted[i]) == 0) {
        int st = moda_set_error(MODA_ERR_ARG, "%s: duplicate tensor name \"%s\"", path, sorted[i]);
        free(sorted);
        return st;
      }
    free(sorted);
  }

  sb_add(h, "{", 1);
  if (metadata_json) {
    jparser p;
    size_t mlen = strlen(metadata_json);
    if (json_parse(&p, metadata_json, mlen) || j_check_string_object(&p, 0)) {
      int st = moda_set_error(p.status == MODA_ERR_NOMEM ? MODA_ERR_NOMEM : MODA_ERR_ARG,
                              "%s: metadata: %s", path, p.err);
      json_free(&p);
      return st;
    }
    /* the object itself, without the whitespace around it, so the header stays compact */
    sb_str(h, "\"__metadata__\":");
    sb_add(h, metadata_json + p.nodes[0].begin, p.nodes[0].end - p.nodes[0].begin);
    json_free(&p);
    if (n > 0) sb_add(h, ",", 1);
  }
  int64_t offset = 0;
  for (int64_t i = 0; i < n; i++) {
    const moda_tensor *t = tensors[i];
    int64_t nbytes = moda_dtype_size(t->dtype_id);
    for (int d = 0; d < t->ndim; d++)
      if (t->sizes[d] < 0 || __builtin_mul_overflow(nbytes, t->sizes[d], &nbytes))
        return moda_set_error(MODA_ERR_ARG, "%s: tensor \"%s\" has an invalid or too large shape",
                              path, names[i]);
    int64_t end;
    if (__builtin_add_overflow(offset, nbytes, &end))
      return moda_set_error(MODA_ERR_ARG, "%s: the tensors' total size overflows int64", path);
    if (i > 0) sb_add(h, ",", 1);
    sb_json_string(h, names[i]);
    sb_str(h, ":{\"dtype\":\"");
    sb_str(h, st_dtype_name(t->dtype_id));
    sb_str(h, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
      if (d > 0) sb_add(h, ",", 1);
      sb_i64(h, t->sizes[d]);
    }
    sb_str(h, "],\"data_offsets\":[");
    sb_i64(h, offset);
    sb_add(h, ",", 1);
    sb_i64(h, end);
    sb_str(h, "]}");
    offset = end;
  }
  sb_add(h, "}", 1);
  while (!h->failed && h->len % 8 != 0) sb_add(h, " ", 1);   /* as the reference writer pads */
  if (h->failed) return moda_set_error(MODA_ERR_NOMEM, "%s: out of memory", path);
  if (h->len > ST_MAX_HEADER)
    return moda_set_error(MODA_ERR_ARG, "%s: header would be %zu bytes, over the %llu-byte limit "
                          "readers accept", path, h->len, ST_MAX_HEADER);
  return MODA_OK;
}

static int write_all(FILE *fp, const void *p, size_t n) {
  return n == 0 || fwrite(p, 1, n, fp) == n;
}

/* Writes tensor t's bytes in row-major order: a contiguous host copy when needed. */
static int st_write_tensor(FILE *fp, const char *path, const char *tmp, const char *name,
                           const moda_tensor *t) {
  if (moda_tensor_numel(t) == 0) return MODA_OK;
  moda_tensor *h = NULL;
  int st;
  if (t->device_id == MODA_CPU) {
    st = moda_tensor_contiguous(&h, t);   /* t itself (a new reference) when already contiguous */
  } else {
    st = moda_tensor_empty(&h, t->dtype_id, MODA_CPU, t->ndim, t->sizes);
    if (st == MODA_OK) st = moda_tensor_copy(h, t);
  }
  if (st != MODA_OK) {
    char why[512];   /* copied out: moda_set_error must not read the buffer it writes */
    snprintf(why, sizeof why, "%s", moda_last_error());
    if (h) moda_tensor_free(h);
    return moda_set_error(st, "%s: tensor \"%s\": %s", path, name, why);
  }
  size_t nbytes = (size_t)(moda_tensor_numel(h) * moda_dtype_size(h->dtype_id));
  if (!write_all(fp, moda_tensor_data(h), nbytes))
    st = moda_set_error(MODA_ERR_IO, "%s: writing %s failed: %s", path, tmp, strerror(errno));
  moda_tensor_free(h);
  return st;
}

int moda_safetensors_write(const char *path, int64_t n, const char *const *names,
                           const moda_tensor *const *tensors, const char *metadata_json) {
  if (!path) return moda_set_error(MODA_ERR_ARG, "moda_safetensors_write: path is NULL");
  if (n < 0 || (n > 0 && (!names || !tensors)))
    return moda_set_error(MODA_ERR_ARG, "%s: bad tensor list (n = %" PRId64 ")", path, n);

  sbuf h = {0};
  int st = st_build_header(&h, path, n, names, tensors, metadata_json);
  if (st) { free(h.p); return st; }

  /* Same directory as path, so rename(2) is atomic; the pid keeps two processes apart. */
  size_t tlen = strlen(path) + 32;
  char *tmp = malloc(tlen);
  if (!tmp) { free(h.p); return moda_set_error(MODA_ERR_NOMEM, "%s: out of memory", path); }
  snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());

  FILE *fp = NULL;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    st = moda_set_error(MODA_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
    goto done;   /* nothing was created */
  }
  if (!(fp = fdopen(fd, "wb"))) {
    st = moda_set_error(MODA_ERR_IO, "%s: fdopen %s: %s", path, tmp, strerror(errno));
    close(fd);
    goto fail;
  }
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
  if (!write_all(fp, lenbuf, 8) || !write_all(fp, h.p, h.len)) {
    st = moda_set_error(MODA_ERR_IO, "%s: writing %s failed: %s", path, tmp, strerror(errno));
    goto fail;
  }
  for (int64_t i = 0; i < n; i++)
    if ((st = st_write_tensor(fp, path, tmp, names[i], tensors[i]))) goto fail;
  /* The data must be on disk before the rename makes it visible under the real name. */
  if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
    st = moda_set_error(MODA_ERR_IO, "%s: flushing %s failed: %s", path, tmp, strerror(errno));
    goto fail;
  }
  int rc = fclose(fp);
  fp = NULL;
  if (rc != 0) {
    st = moda_set_error(MODA_ERR_IO, "%s: closing %s failed: %s", path, tmp, strerror(errno));
    goto fail;
  }
  if (rename(tmp, path) != 0) {
    st = moda_set_error(MODA_ERR_IO, "%s: renaming %s into place failed: %s", path, tmp,
                        strerror(errno));
    goto fail;
  }
  /* Persist the rename itself. Best effort: the new file is already complete and in place, so
   * a directory that cannot be opened or synced (some filesystems refuse) is not an error. */
  {
    char *dir = strdup(path), *slash;
    if (dir) {
      slash = strrchr(dir, '/');
      if (!slash) strcpy(dir, ".");
      else if (slash == dir) dir[1] = '\0';
      else *slash = '\0';
      int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) { (void)fsync(dfd); close(dfd); }
      free(dir);
    }
  }
  st = MODA_OK;
  goto done;

fail:
  if (fp) fclose(fp);
  unlink(tmp);   /* whatever went wrong, leave no partial file behind; path is untouched */
done:
  free(tmp);
  free(h.p);
  return st;
}
