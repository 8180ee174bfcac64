/* Plain C MPI reference for examples/commbench.rs: the same measurements, the same loop structure,
 * the same buffers, so the ratio of the two is phalanx's overhead.
 *
 *   mpicc -O3 -o commbench_ref benches/c/commbench_ref.c
 *   mpirun -n 2 ./commbench_ref [ITERS] [single|funneled]   # one JSON line on rank 0
 *
 * The thread level defaults to funneled, phalanx's default: Open MPI 4.1 is measurably slower on
 * small messages at MPI_THREAD_FUNNELED than at MPI_THREAD_SINGLE, so compare like with like.
 *
 * Latency: ping-pong between ranks 0 and 1, half the round trip, after a warm-up.
 * Bandwidth: rank 0 posts a window of 64 nonblocking sends from one buffer, rank 1 a window of 64
 * receives into 64 distinct buffers (MPI forbids concurrent receives into one buffer), then rank 1
 * acknowledges with a 4-byte message; bytes moved / time, in MB/s (1e6 bytes).
 * All-reduce: MPI_Allreduce of one double (8 B), mean time per call, the largest mean over ranks. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 64

static double latency(int rank, char *buf, int size, int warm, int iters) {
  double t0 = 0;
  for (int i = 0; i < warm + iters; i++) {
    if (i == warm) { MPI_Barrier(MPI_COMM_WORLD); t0 = MPI_Wtime(); }
    if (rank == 0) {
      MPI_Send(buf, size, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
      MPI_Recv(buf, size, MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      MPI_Recv(buf, size, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(buf, size, MPI_BYTE, 0, 1, MPI_COMM_WORLD);
    }
  }
  return (MPI_Wtime() - t0) / (2.0 * iters) * 1e6;
}

static double bandwidth(int rank, char *sbuf, char *rbuf, int size, int warm, int iters) {
  MPI_Request req[WINDOW];
  int ack = 0;
  double t0 = 0;
  for (int i = 0; i < warm + iters; i++) {
    if (i == warm) { MPI_Barrier(MPI_COMM_WORLD); t0 = MPI_Wtime(); }
    if (rank == 0) {
      for (int w = 0; w < WINDOW; w++) MPI_Isend(sbuf, size, MPI_BYTE, 1, 100, MPI_COMM_WORLD, &req[w]);
      MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
      MPI_Recv(&ack, 1, MPI_INT, 1, 101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      for (int w = 0; w < WINDOW; w++) MPI_Irecv(rbuf + (size_t)w * size, size, MPI_BYTE, 0, 100, MPI_COMM_WORLD, &req[w]);
      MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
      MPI_Send(&ack, 1, MPI_INT, 0, 101, MPI_COMM_WORLD);
    }
  }
  double t = MPI_Wtime() - t0;
  return (double)size * WINDOW * iters / t / 1e6;
}

static double allreduce(int warm, int iters) {
  double x = 1.0, y = 0.0, t0 = 0;
  for (int i = 0; i < warm + iters; i++) {
    if (i == warm) { MPI_Barrier(MPI_COMM_WORLD); t0 = MPI_Wtime(); }
    MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  }
  double mine = (MPI_Wtime() - t0) / iters * 1e6, worst;
  MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

int main(int argc, char **argv) {
  int want = (argc > 2 && strcmp(argv[2], "single") == 0) ? MPI_THREAD_SINGLE : MPI_THREAD_FUNNELED, provided;
  MPI_Init_thread(&argc, &argv, want, &provided);
  int rank, nranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  int iters = argc > 1 ? atoi(argv[1]) : 20000;
  const int mib = 1 << 20;
  char *sbuf = calloc(mib, 1), *rbuf = calloc((size_t)mib * WINDOW, 1);
  double lat = nranks >= 2 ? latency(rank, sbuf, 8, iters / 10, iters) : 0;
  double bw = nranks >= 2 ? bandwidth(rank, sbuf, rbuf, mib, 10, 100) : 0;
  double ar = allreduce(iters / 10, iters);
  if (rank == 0)
    printf("{\"example\":\"commbench_ref\",\"thread_level\":\"%s\",\"ranks\":%d,\"latency_8b_us\":%.4f,\"bandwidth_1mib_mbs\":%.1f,\"allreduce_8b_us\":%.4f}\n",
           want == MPI_THREAD_SINGLE ? "single" : "funneled", nranks, lat, bw, ar);
  free(sbuf);
  free(rbuf);
  MPI_Finalize();
  return 0;
}
