/* src/blas_core.h — makes sure OpenBLAS uses the kernels this CPU can run fastest. */
#ifndef DM_BLAS_CORE_H
#define DM_BLAS_CORE_H

/* OpenBLAS 0.3.21 (Debian 12) does not recognise some newer x86 CPUs and falls back to its
 * "Prescott" (SSE3) kernels, about 5× slower. If that happened, the CPU has AVX2+FMA, and the
 * user did not choose a core (OPENBLAS_CORETYPE), this sets OPENBLAS_CORETYPE to SkylakeX
 * (AVX-512) or Haswell (AVX2) and re-executes the program (OpenBLAS reads it only at load).
 * DINOMAP_BLAS_CORE=keep disables it. Returns only if nothing had to change. */
void dm_blas_pick_core(char **argv);

#endif
