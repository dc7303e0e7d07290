// Build settings shared by the CPU kernels.
#pragma once

// Hot loops are compiled twice, for AVX2 + FMA and for baseline x86-64; the dynamic loader
// picks the one the CPU runs (a wheel cannot assume AVX2).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MINERVA_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MINERVA_SIMD_CLONES
#endif

// Out of line: restrict-qualified parameters are what let GCC vectorise a loop; once
// inlined into a lambda capturing by reference, it must assume stores alias the captures.
#define MINERVA_NOINLINE __attribute__((noinline))
