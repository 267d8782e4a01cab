/* moda_io.h: reading and writing tensors: safetensors (the Hugging Face format: an 8-byte
 * little-endian header length, a JSON header with dtype/shape/data_offsets per tensor and an
 * optional "__metadata__" object of strings, then the raw little-endian bytes).
 *
 * Reading validates everything (header size, JSON, dtype names, shape products against byte
 * ranges, offsets in bounds, non-overlapping and covering the data) and rejects a bad file with
 * MODA_ERR_FORMAT and a message. Writing goes to "<path>.tmp.<pid>" then rename(2), so a crash
 * never leaves a half-written file under the real name. */
#ifndef MODA_IO_H
#define MODA_IO_H

#include "moda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* MODA_CDEF_BEGIN */
typedef struct moda_tensor_list moda_tensor_list;   /* named tensors, in file order */

int moda_safetensors_read(moda_tensor_list **out, const char *path);
int moda_safetensors_read_buffer(moda_tensor_list **out, const void *bytes, int64_t nbytes);
/* Tensors may have any strides and live on any device (copied to host for writing).
 * metadata_json: NULL, or a JSON object of string values stored as "__metadata__". */
int moda_safetensors_write(const char *path, int64_t n, const char *const *names,
                           const moda_tensor *const *tensors, const char *metadata_json);

int64_t moda_tensor_list_size(const moda_tensor_list *list);
const char *moda_tensor_list_name(const moda_tensor_list *list, int64_t i);  /* NULL if out of range */
/* A new reference to tensor i (the caller frees it); NULL if out of range. */
moda_tensor *moda_tensor_list_get(const moda_tensor_list *list, int64_t i);
const char *moda_tensor_list_metadata(const moda_tensor_list *list);  /* raw JSON or NULL */
void moda_tensor_list_free(moda_tensor_list *list);
/* MODA_CDEF_END */

#ifdef __cplusplus
}
#endif
#endif
