/* Plain C reference for the n-body force loop (kernels::nbody::accumulate_forces): the same
 * softened-gravity update with the same operations in the same order, structure of arrays.
 * Built twice by benches/regenerate: `-O3 -march=native` (IEEE, comparable bit for bit) and with
 * `-ffast-math` added (the compiler may then use approximate reciprocal square roots).
 *
 *   gcc -O3 -march=native -o nbody_ref benches/c/nbody_ref.c -lm
 *   ./nbody_ref [N=4096] [REPS=10]        # prints interactions/s as one JSON line */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void forces(int n, const double *x, const double *y, const double *z, const double *m, double eps2,
                   double *ax, double *ay, double *az) {
  for (int i = 0; i < n; i++) {
    double gx = 0, gy = 0, gz = 0;
    for (int j = 0; j < n; j++) {
      double dx = x[j] - x[i], dy = y[j] - y[i], dz = z[j] - z[i];
      double r2 = dx * dx + dy * dy + dz * dz + eps2;
      double inv = 1.0 / sqrt(r2);
      double s = m[j] * (inv * inv * inv);
      gx += s * dx;
      gy += s * dy;
      gz += s * dz;
    }
    ax[i] += gx;
    ay[i] += gy;
    az[i] += gz;
  }
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 4096, reps = argc > 2 ? atoi(argv[2]) : 10;
  double *v = calloc(7 * (size_t)n, sizeof(double));
  double *x = v, *y = v + n, *z = v + 2 * n, *m = v + 3 * n, *ax = v + 4 * n, *ay = v + 5 * n, *az = v + 6 * n;
  srand(1);
  for (int i = 0; i < n; i++) {
    x[i] = rand() / (double)RAND_MAX;
    y[i] = rand() / (double)RAND_MAX;
    z[i] = rand() / (double)RAND_MAX;
    m[i] = 1.0 / n;
  }
  forces(n, x, y, z, m, 1e-4, ax, ay, az); /* warm-up */
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now();
    forces(n, x, y, z, m, 1e-4, ax, ay, az);
    double t = now() - t0;
    if (t < best) best = t;
  }
  printf("{\"n\": %d, \"interactions_per_s\": %.6e, \"checksum\": %.17g}\n", n, (double)n * n / best, ax[0] + ay[n / 2]);
  return 0;
}
