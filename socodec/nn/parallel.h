/* socodec: the one parallel loop of the native kernels (activation.c, transformer.c).
 *
 * parallel_for(fn, ctx, n, threads) runs fn(ctx, lo, hi) over [0, n) cut into `threads` contiguous
 * parts (fewer when n is smaller) and returns the OR of their results (0: success). Built with
 * OpenMP (and linked to the runtime PyTorch has loaded), the parts run on PyTorch's own threads:
 * after one of its parallel operators they are still awake, and threads of our own would have to
 * share the cores with them. Without OpenMP, POSIX threads; a part whose thread cannot be started
 * runs on the calling thread.
 */
#ifndef SOCODEC_PARALLEL_H
#define SOCODEC_PARALLEL_H

#include <pthread.h>
#include <stdint.h>

#define MAX_THREADS 256

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);
#endif

typedef int (*range_fn)(const void *ctx, int64_t lo, int64_t hi);

#ifndef _OPENMP
typedef struct {
    range_fn fn;
    const void *ctx;
    int64_t lo, hi;
    int status;
} range_job_t;

static void *range_job(void *p) {
    range_job_t *j = (range_job_t *)p;
    j->status = j->fn(j->ctx, j->lo, j->hi);
    return NULL;
}
#endif

static int parallel_for(range_fn fn, const void *ctx, int64_t n, int threads) {
    if (n <= 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = (int)n;
    if (threads == 1) return fn(ctx, 0, n);
#ifdef _OPENMP
    int status = 0;
#pragma omp parallel num_threads(threads) reduction(| : status)
    {
        int t = omp_get_thread_num(), parts = omp_get_num_threads();
        status |= fn(ctx, n * t / parts, n * (t + 1) / parts);
    }
    return status;
#else
    range_job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 0; t < threads; t++) jobs[t] = (range_job_t){fn, ctx, n * t / threads, n * (t + 1) / threads, 0};
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, range_job, &jobs[t]) == 0;
    range_job(&jobs[0]);
    int status = jobs[0].status;
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            range_job(&jobs[t]);
        status |= jobs[t].status;
    }
    return status;
#endif
}

#endif
