/* A PMPI shim for tests/reduction_threads.rs: an MPI whose reductions with user operations run the
 * user function on a thread of the library's own (as an MPI with a progress thread may), not on
 * the thread that called MPI_Allreduce / MPI_Reduce. The shim gathers every rank's contribution,
 * then combines them in rank order on a new thread, passing the caller's datatype to the user
 * function, as MPI does. Loaded with LD_PRELOAD into the ranks. */
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OPS 256
static struct {
    MPI_Op op;
    MPI_User_function *fn;
} ops[MAX_OPS];
static int n_ops;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

int MPI_Op_create(MPI_User_function *fn, int commute, MPI_Op *op) {
    int rc = PMPI_Op_create(fn, commute, op);
    pthread_mutex_lock(&mu);
    if (rc == MPI_SUCCESS && n_ops < MAX_OPS) {
        ops[n_ops].op = *op;
        ops[n_ops].fn = fn;
        n_ops++;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

int MPI_Op_free(MPI_Op *op) {
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_ops; i++)
        if (ops[i].op == *op) {
            ops[i] = ops[--n_ops];
            break;
        }
    pthread_mutex_unlock(&mu);
    return PMPI_Op_free(op);
}

static MPI_User_function *user_fn(MPI_Op op) {
    MPI_User_function *fn = NULL;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_ops; i++)
        if (ops[i].op == op) fn = ops[i].fn;
    pthread_mutex_unlock(&mu);
    return fn;
}

struct job {
    MPI_User_function *fn;
    char *all;
    void *out;
    int count, size;
    size_t bytes;
    MPI_Datatype dt;
};

/* out = x0 op (x1 op (... op x_{n-1})): the user function computes inout = in op inout. */
static void *combine(void *p) {
    struct job *j = p;
    memcpy(j->out, j->all + (size_t)(j->size - 1) * j->bytes, j->bytes);
    for (int i = j->size - 2; i >= 0; i--) {
        int count = j->count;
        MPI_Datatype dt = j->dt;
        j->fn(j->all + (size_t)i * j->bytes, j->out, &count, &dt);
    }
    return NULL;
}

static int told;

static int on_thread(MPI_User_function *fn, char *all, void *out, int count, int size, size_t bytes, MPI_Datatype dt) {
    struct job j = {fn, all, out, count, size, bytes, dt};
    pthread_t t;
    if (pthread_create(&t, NULL, combine, &j) != 0) return MPI_ERR_INTERN;
    pthread_join(t, NULL);
    if (!told++) {
        fprintf(stderr, "REDUCE-SHIM: user reductions run on a thread of the library's own\n");
        fflush(stderr);
    }
    return MPI_SUCCESS;
}

int MPI_Allreduce(const void *send, void *recv, int count, MPI_Datatype dt, MPI_Op op, MPI_Comm comm) {
    MPI_User_function *fn = user_fn(op);
    if (!fn) return PMPI_Allreduce(send, recv, count, dt, op, comm);
    int size;
    MPI_Aint lb, extent;
    PMPI_Comm_size(comm, &size);
    PMPI_Type_get_extent(dt, &lb, &extent);
    size_t bytes = (size_t)extent * (size_t)count;
    char *all = malloc(bytes * (size_t)size + 1);
    const void *src = send == MPI_IN_PLACE ? recv : send;
    int rc = PMPI_Allgather(src, count, dt, all, count, dt, comm);
    if (rc == MPI_SUCCESS) rc = on_thread(fn, all, recv, count, size, bytes, dt);
    free(all);
    return rc;
}

int MPI_Reduce(const void *send, void *recv, int count, MPI_Datatype dt, MPI_Op op, int root, MPI_Comm comm) {
    MPI_User_function *fn = user_fn(op);
    if (!fn) return PMPI_Reduce(send, recv, count, dt, op, root, comm);
    int size, rank;
    MPI_Aint lb, extent;
    PMPI_Comm_size(comm, &size);
    PMPI_Comm_rank(comm, &rank);
    PMPI_Type_get_extent(dt, &lb, &extent);
    size_t bytes = (size_t)extent * (size_t)count;
    char *all = malloc(bytes * (size_t)size + 1);
    const void *src = send == MPI_IN_PLACE ? recv : send;
    int rc = PMPI_Gather(src, count, dt, all, count, dt, root, comm);
    if (rc == MPI_SUCCESS && rank == root) rc = on_thread(fn, all, recv, count, size, bytes, dt);
    free(all);
    return rc;
}
