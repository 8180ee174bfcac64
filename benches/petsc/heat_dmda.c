/* The same 2-D heat problem as examples/heat.rs, written with PETSc's DMDA the way the PETSc
 * manual's structured-grid examples do it: DMGlobalToLocal every step, then a loop over the owned
 * cells through DMDAVecGetArray. Same update, same operand order, same boundary values (the low
 * face of dimension 0, PETSc's j = -1 row, held at 1; the rest at 0), so the two do the same work.
 *
 *   benches/petsc_compare.sh            # builds this with PETSc's flags and runs both alternately
 *   mpirun -n 2 ./heat_dmda -n 4000 -steps 100
 */
#include <petscdmda.h>

int main(int argc, char **argv) {
  PetscCall(PetscInitialize(&argc, &argv, NULL, NULL));
  PetscInt n = 4000, steps = 100;
  PetscCall(PetscOptionsGetInt(NULL, NULL, "-n", &n, NULL));
  PetscCall(PetscOptionsGetInt(NULL, NULL, "-steps", &steps, NULL));
  const PetscScalar r = 0.2;
  DM da;
  PetscCall(DMDACreate2d(PETSC_COMM_WORLD, DM_BOUNDARY_GHOSTED, DM_BOUNDARY_GHOSTED, DMDA_STENCIL_STAR, n, n,
                         PETSC_DECIDE, PETSC_DECIDE, 1, 1, NULL, NULL, &da));
  PetscCall(DMSetFromOptions(da));
  PetscCall(DMSetUp(da));
  Vec u, unew, ul;
  PetscCall(DMCreateGlobalVector(da, &u));
  PetscCall(VecDuplicate(u, &unew));
  PetscCall(DMCreateLocalVector(da, &ul));
  PetscCall(VecSet(u, 0.0));
  PetscCall(VecSet(ul, 0.0));
  PetscInt xs, ys, xm, ym, gxs, gys, gxm, gym;
  PetscCall(DMDAGetCorners(da, &xs, &ys, NULL, &xm, &ym, NULL));
  PetscCall(DMDAGetGhostCorners(da, &gxs, &gys, NULL, &gxm, &gym, NULL));
  /* Physical-boundary ghosts (DM_BOUNDARY_GHOSTED) are never touched by DMGlobalToLocal: set once. */
  {
    PetscScalar **a;
    PetscCall(DMDAVecGetArray(da, ul, &a));
    if (gys < 0)
      for (PetscInt i = xs; i < xs + xm; i++) a[-1][i] = 1.0;
    PetscCall(DMDAVecRestoreArray(da, ul, &a));
  }
  PetscCall(PetscBarrier(NULL));
  double t0 = MPI_Wtime();
  for (PetscInt s = 0; s < steps; s++) {
    PetscCall(DMGlobalToLocalBegin(da, u, INSERT_VALUES, ul));
    PetscCall(DMGlobalToLocalEnd(da, u, INSERT_VALUES, ul));
    const PetscScalar **a;
    PetscScalar **b;
    PetscCall(DMDAVecGetArrayRead(da, ul, &a));
    PetscCall(DMDAVecGetArray(da, unew, &b));
    for (PetscInt j = ys; j < ys + ym; j++)
      for (PetscInt i = xs; i < xs + xm; i++) {
        PetscScalar c = a[j][i];
        b[j][i] = c + r * (a[j - 1][i] + a[j + 1][i] + a[j][i - 1] + a[j][i + 1] - 4.0 * c);
      }
    PetscCall(DMDAVecRestoreArrayRead(da, ul, &a));
    PetscCall(DMDAVecRestoreArray(da, unew, &b));
    PetscCall(VecSwap(u, unew));
  }
  double local = MPI_Wtime() - t0, seconds;
  MPI_Allreduce(&local, &seconds, 1, MPI_DOUBLE, MPI_MAX, PETSC_COMM_WORLD);
  PetscReal sum;
  PetscCall(VecSum(u, &sum));
  PetscMPIInt size;
  MPI_Comm_size(PETSC_COMM_WORLD, &size);
  PetscCall(PetscPrintf(PETSC_COMM_WORLD,
                        "{\"example\":\"heat_dmda\",\"ranks\":%d,\"n\":%d,\"steps\":%d,\"seconds\":%.6f,\"mlups\":%.2f,\"sum\":%.17g}\n",
                        size, (int)n, (int)steps, seconds, (double)n * n * steps / seconds / 1e6, (double)sum));
  PetscCall(VecDestroy(&u));
  PetscCall(VecDestroy(&unew));
  PetscCall(VecDestroy(&ul));
  PetscCall(DMDestroy(&da));
  PetscCall(PetscFinalize());
  return 0;
}
