/* A PMPI shim for tests/end_of_run.rs: records the thread that initialised MPI and the thread
 * level provided, and says on stderr from which thread MPI_Abort is called. Below
 * MPI_THREAD_MULTIPLE only the thread that initialised MPI may call it; a call from another thread
 * is a violation that Open MPI 4.1 does not show (it aborts anyway). Loaded with LD_PRELOAD. */
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static pthread_t main_thread;
static int provided_level = -1;

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided) {
    int rc = PMPI_Init_thread(argc, argv, required, provided);
    main_thread = pthread_self();
    provided_level = *provided;
    return rc;
}

int MPI_Init(int *argc, char ***argv) {
    int rc = PMPI_Init(argc, argv);
    main_thread = pthread_self();
    provided_level = MPI_THREAD_SINGLE;
    return rc;
}

int MPI_Abort(MPI_Comm comm, int code) {
    int main = pthread_equal(pthread_self(), main_thread);
    if (!main && provided_level < MPI_THREAD_MULTIPLE)
        fprintf(stderr, "PMPI-SHIM VIOLATION: MPI_Abort called from a thread other than the main one at thread level %d\n",
                provided_level);
    else
        fprintf(stderr, "PMPI-SHIM: MPI_Abort called (main thread: %s, thread level %d, multiple is %d)\n",
                main ? "yes" : "no", provided_level, MPI_THREAD_MULTIPLE);
    fflush(stderr);
    /* MPI_Abort makes MPICH's hydra kill every rank at once and drop what it has not yet forwarded
     * from their pipes: this line was lost in 2 of 25 runs of worker-panic-multiple. phalanx waits
     * as long before its own MPI_Abort (ABORT_FLUSH in src/runtime/mod.rs) for the same reason. */
    usleep(200 * 1000);
    return PMPI_Abort(comm, code);
}
