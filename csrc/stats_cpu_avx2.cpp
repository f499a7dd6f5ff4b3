// The CPU statistics kernels built for one instruction set (avx2); see stats_cpu.h. CMakeLists.txt gives
// this file its -m flags.
#define FL_ISA_ENTRY stats_kernels_avx2
#define FL_LANES 8
#include "stats_cpu_kernels.inc"
