/* OpenBLAS's parallel jobs on our OpenMP pool: the callback of openblas_set_threads_callback_function
 * (OpenBLAS >= 0.3.27) that fastnn/threads.py installs, so numpy's BLAS and our kernels share one
 * pool of threads instead of two that busy-wait against each other. No reference counterpart. */
#ifndef FNN_BLASPOOL_H
#define FNN_BLASPOOL_H

#include <stddef.h>
#include <stdlib.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*fnn_blas_dojob)(int thread_num, void *jobdata, int dojob_data);

#define FNN_BLAS_STACK_JOBS 64

typedef struct {
    fnn_blas_dojob dojob;
    int job;
    void *jobdata;
    int dojob_data;
} fnn_blas_extra;

static void *fnn_blas_extra_run(void *p) {
    fnn_blas_extra *e = (fnn_blas_extra *)p;
    e->dojob(e->job, e->jobdata, e->dojob_data);
    return NULL;
}

/* Jobs first..numjobs-1 on threads of their own. OpenBLAS's jobs wait for each other (a GEMM's
 * threads share packed panels), so every job needs a thread that runs at the same time as the
 * others: where the OpenMP team came out smaller than asked (nested inside another parallel
 * region, OMP_DYNAMIC, OMP_THREAD_LIMIT) the missing threads are plain pthreads. */
static void fnn_blas_extra_jobs(fnn_blas_dojob dojob, int first, int numjobs, size_t elsize,
                                void *jobdata, int dojob_data, pthread_t *tid, fnn_blas_extra *ex,
                                int *started) {
    int i;
    for (i = first; i < numjobs; i++) {
        ex[i].dojob = dojob;
        ex[i].job = i;
        ex[i].jobdata = (char *)jobdata + (size_t)i * elsize;
        ex[i].dojob_data = dojob_data;
        started[i] = pthread_create(&tid[i], NULL, fnn_blas_extra_run, &ex[i]) == 0;
        if (!started[i])   /* no thread to be had: run it here (a last resort) */
            fnn_blas_extra_run(&ex[i]);
    }
}

static void fnn_blas_join(int first, int numjobs, pthread_t *tid, const int *started) {
    int i;
    for (i = first; i < numjobs; i++)
        if (started[i])
            pthread_join(tid[i], NULL);
}

/* openblas_threads_callback: run numjobs jobs at once, job i on jobdata + i * elsize; return when
 * all are done (OpenBLAS's pthreads server always asks for that: sync = 1). */
static void fnn_blas_pool_run(int sync, fnn_blas_dojob dojob, int numjobs, size_t elsize,
                              void *jobdata, int dojob_data) {
    pthread_t tid_s[FNN_BLAS_STACK_JOBS], *tid = tid_s;
    fnn_blas_extra ex_s[FNN_BLAS_STACK_JOBS], *ex = ex_s;
    int started_s[FNN_BLAS_STACK_JOBS], *started = started_s;
    (void)sync;
    if (numjobs <= 1) {
        if (numjobs == 1)
            dojob(0, jobdata, dojob_data);
        return;
    }
    if (numjobs > FNN_BLAS_STACK_JOBS) {   /* more jobs than this machine is likely to have */
        tid = (pthread_t *)malloc(numjobs * sizeof(pthread_t));
        ex = (fnn_blas_extra *)malloc(numjobs * sizeof(fnn_blas_extra));
        started = (int *)malloc(numjobs * sizeof(int));
        if (!tid || !ex || !started) {     /* cannot even track threads: jobs one by one */
            int i;
            for (i = 0; i < numjobs; i++)
                dojob(i, (char *)jobdata + (size_t)i * elsize, dojob_data);
            free(tid); free(ex); free(started);
            return;
        }
    }
#ifdef _OPENMP
    #pragma omp parallel num_threads(numjobs)
    {
        int rank = omp_get_thread_num(), team = omp_get_num_threads();
        if (rank == 0 && team < numjobs)
            fnn_blas_extra_jobs(dojob, team, numjobs, elsize, jobdata, dojob_data, tid, ex, started);
        if (rank < numjobs)
            dojob(rank, (char *)jobdata + (size_t)rank * elsize, dojob_data);
        if (rank == 0 && team < numjobs)
            fnn_blas_join(team, numjobs, tid, started);
    }
#else
    fnn_blas_extra_jobs(dojob, 1, numjobs, elsize, jobdata, dojob_data, tid, ex, started);
    dojob(0, jobdata, dojob_data);
    fnn_blas_join(1, numjobs, tid, started);
#endif
    if (tid != tid_s) {
        free(tid); free(ex); free(started);
    }
}

static void *fnn_blas_pool_callback(void) { return (void *)&fnn_blas_pool_run; }

#endif
