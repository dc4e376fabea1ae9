/* GCC vector extensions shared by the kernels (no intrinsics: the compiler maps them to AVX-512, AVX2 or NEON). */
#ifndef FEATSTORE_VEC_H
#define FEATSTORE_VEC_H

typedef float v16 __attribute__((vector_size(64), aligned(4)));

static inline v16 load16(const float *p) { v16 v; __builtin_memcpy(&v, p, 64); return v; }
static inline void store16(float *p, v16 v) { __builtin_memcpy(p, &v, 64); }

/* keeps four vectors in registers across a loop (else GCC may re-read them from memory every iteration) */
#if defined(__x86_64__) || defined(__i386__)
#define KEEP_IN_REGISTERS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))
#else
#define KEEP_IN_REGISTERS(a, b, c, d) ((void)0)
#endif

#endif
