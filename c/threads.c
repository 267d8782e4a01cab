/* threads.c: the thread count and moda_parallel_for.
 * Threads are started per call (a few tens of microseconds) and take ranges from a shared
 * atomic counter, so uneven work (causal masks) balances itself. A parallel_for inside a worker
 * runs inline: no nested oversubscription. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define MODA_MAX_THREADS 256

static int num_threads = 0;              /* 0: not yet decided */
static _Thread_local int in_worker = 0;

static int default_threads(void) {
  const char *env = getenv("MODA_NUM_THREADS");
  if (env) {
    int n = atoi(env);
    if (n > 0) return n;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

void moda_set_num_threads(int n) {
  if (n <= 0) n = default_threads();
  num_threads = n > MODA_MAX_THREADS ? MODA_MAX_THREADS : n;
}

int moda_get_num_threads(void) {
  if (num_threads <= 0) moda_set_num_threads(0);
  return num_threads;
}

typedef struct {
  moda_range_fn fn;
  void *ctx;
  int64_t n, grain;
  int64_t next;          /* next unclaimed item, atomic */
  int status;            /* first failure, atomic */
} job;

typedef struct { job *j; int tid; } worker_arg;

static void run_ranges(job *j, int tid) {
  for (;;) {
    if (__atomic_load_n(&j->status, __ATOMIC_RELAXED) != MODA_OK) return;
    int64_t begin = __atomic_fetch_add(&j->next, j->grain, __ATOMIC_RELAXED);
    if (begin >= j->n) return;
    int64_t end = begin + j->grain < j->n ? begin + j->grain : j->n;
    int st = j->fn(j->ctx, begin, end, tid);
    if (st != MODA_OK) {
      int expected = MODA_OK;
      __atomic_compare_exchange_n(&j->status, &expected, st, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    }
  }
}

static void *worker(void *p) {
  worker_arg *a = p;
  in_worker = 1;
  run_ranges(a->j, a->tid);
  return NULL;
}

int moda_parallel_for(int64_t n, int64_t grain, moda_range_fn fn, void *ctx) {
  if (n <= 0) return MODA_OK;
  if (grain < 1) grain = 1;
  int64_t chunks = (n + grain - 1) / grain;
  int nt = moda_get_num_threads();
  if (nt > chunks) nt = (int)chunks;
  job j = {fn, ctx, n, grain, 0, MODA_OK};
  if (nt <= 1 || in_worker) {
    int saved = in_worker;
    in_worker = 1;
    run_ranges(&j, 0);
    in_worker = saved;
    return j.status;
  }
  pthread_t th[MODA_MAX_THREADS];
  worker_arg args[MODA_MAX_THREADS];
  int started = 0;
  for (int t = 1; t < nt; t++) {
    args[t].j = &j;
    args[t].tid = t;
    if (pthread_create(&th[t], NULL, worker, &args[t]) != 0) break;   /* fewer threads is fine */
    started = t;
  }
  in_worker = 1;
  run_ranges(&j, 0);
  in_worker = 0;
  for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
  /* A thread that failed to start left its ranges in the counter: the caller's loop took them. */
  return j.status;
}
