/* Plain C reference for heat (kernels::heat): the same explicit update, one step per sweep, on the
 * same grid (n^d owned cells, a ring of boundary cells, the low face of dimension 0 held at 1, the
 * rest at 0), two arrays swapped each step, parallel over the outermost dimension with OpenMP.
 *   2-D: u + r (n + s + w + e - 4u), r = 0.2;   3-D: u + r (n + s + w + e + b + t - 6u), r = 0.15.
 * It prints the sum over every cell, boundary included: a check that two builds computed the same
 * field (with FMA contraction, as GCC does by default where the target has FMA, each cell gets the
 * same operations as phalanx's; heat itself prints a hash of the owned cells, not this sum).
 *
 *   gcc -O3 -march=native -fopenmp -o heat_ref benches/c/heat_ref.c
 *   OMP_NUM_THREADS=1 ./heat_ref DIMS N STEPS     # prints cell updates/s as one JSON line */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void step2(long g, long n, double r, const double *restrict u, double *restrict v) {
#pragma omp parallel for schedule(static)
  for (long i = 1; i <= n; i++)
    for (long j = 1; j <= n; j++) {
      long c = i * g + j;
      v[c] = u[c] + r * (u[c - g] + u[c + g] + u[c - 1] + u[c + 1] - 4.0 * u[c]);
    }
}

static void step3(long g, long n, double r, const double *restrict u, double *restrict v) {
  long p = g * g;
#pragma omp parallel for schedule(static)
  for (long i = 1; i <= n; i++)
    for (long j = 1; j <= n; j++)
      for (long k = 1; k <= n; k++) {
        long c = i * p + j * g + k;
        v[c] = u[c] + r * (u[c - g] + u[c + g] + u[c - 1] + u[c + 1] + u[c - p] + u[c + p] - 6.0 * u[c]);
      }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: heat_ref DIMS N STEPS\n");
    return 2;
  }
  int dims = atoi(argv[1]);
  long n = atol(argv[2]), steps = atol(argv[3]), g = n + 2;
  if ((dims != 2 && dims != 3) || n < 1 || steps < 1) {
    fprintf(stderr, "heat_ref: DIMS must be 2 or 3, N and STEPS at least 1\n");
    return 2;
  }
  long cells = dims == 2 ? g * g : g * g * g, face = dims == 2 ? g : g * g;
  double r = dims == 2 ? 0.2 : 0.15;
  double *u = malloc(cells * sizeof(double)), *v = malloc(cells * sizeof(double));
  if (!u || !v) return 1;
  /* First touch by the threads that sweep the same planes. */
#pragma omp parallel for schedule(static)
  for (long i = 0; i < g; i++) {
    memset(u + i * face, 0, face * sizeof(double));
    memset(v + i * face, 0, face * sizeof(double));
  }
  /* The low face of dimension 0 at 1 over its owned cells; its edges stay 0 (phalanx sets them to 1:
   * the face-neighbour stencil never reads them). */
  for (long c = 0; c < face; c++) {
    int inside = dims == 2 ? (c >= 1 && c <= n) : (c / g >= 1 && c / g <= n && c % g >= 1 && c % g <= n);
    u[c] = v[c] = inside ? 1.0 : 0.0;
  }
  double t0 = now();
  for (long s = 0; s < steps; s++) {
    if (dims == 2)
      step2(g, n, r, u, v);
    else
      step3(g, n, r, u, v);
    double *t = u;
    u = v;
    v = t;
  }
  double sec = now() - t0, sum = 0;
  for (long c = 0; c < cells; c++) sum += u[c];
  double updates = (double)steps * (dims == 2 ? n * n : n * n * n);
  printf("{\"dims\": %d, \"n\": %ld, \"steps\": %ld, \"seconds\": %.6f, \"rate\": %.6e, \"sum\": %.17g}\n", dims, n,
         steps, sec, updates / sec, sum);
  return 0;
}
