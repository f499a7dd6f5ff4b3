// The CPU statistics kernels built for one instruction set (avx512); see stats_cpu.h. CMakeLists.txt gives
// this file its -m flags.
#define FL_ISA_ENTRY stats_kernels_avx512
#define FL_LANES 16
#include "stats_cpu_kernels.inc"
