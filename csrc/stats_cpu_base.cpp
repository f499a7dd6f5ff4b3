// The CPU statistics kernels built for one instruction set (base); see stats_cpu.h. CMakeLists.txt gives
// this file its -m flags.
#define FL_ISA_ENTRY stats_kernels_base
#define FL_LANES 4
#include "stats_cpu_kernels.inc"
