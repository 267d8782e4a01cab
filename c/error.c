/* error.c: the thread-local error message behind moda_last_error(). */
#include <stdarg.h>
#include <stdio.h>

#include "moda.h"

static _Thread_local char last_error[1024];

const char *moda_last_error(void) { return last_error; }

void moda_clear_error(void) { last_error[0] = '\0'; }

int moda_set_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return status;
}
