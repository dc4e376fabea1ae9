/* GCC vector extensions shared by the kernels (no intrinsics: the compiler maps them to AVX-512, AVX2 or NEON).

   The kernels work in 16-lane units (16 columns of a tile, 16 lanes of a dot product). A unit is NV native
   vectors `vn` of VN lanes: one zmm with AVX-512, two ymm with AVX, four q registers elsewhere (NEON). Writing
   a 64-byte vector type where the registers are narrower makes GCC lower every operation through the stack
   (the kernels ran 3x slower than PyTorch on an AVX2 Zen 3). Each lane is summed in the same order whatever VN
   is, and the horizontal sums take the 16 lanes in order, so for one compiler target the results are the same bits
   at every VN. Another target (-march level, ISA) may fuse the scalar parts' multiply-adds differently (GCC
   vectorises some of them, multiplying before adding): the same numbers to float32 rounding, which a test checks
   on an AArch64 build run under qemu (tests/kernel_bits.c). */
#ifndef FEATSTORE_VEC_H
#define FEATSTORE_VEC_H

#ifndef VN             /* -DVN=4 or 8: a narrower unit than the CPU's (tests compare the builds bit for bit) */
#if defined(__AVX512F__)
#define VN 16
#elif defined(__AVX__)
#define VN 8
#else
#define VN 4
#endif
#endif
#define NV (16 / VN)

typedef float vn __attribute__((vector_size(VN * 4)));
typedef float vn_mem __attribute__((vector_size(VN * 4), aligned(4), may_alias));   /* vn at any float address */

/* put before every loop over a unit's NV vectors: unrolled, its arrays of vn stay in registers (else GCC keeps
   them in memory, and a tile's accumulators make a store and a load for every FMA) */
#define UNROLL_NV _Pragma("GCC unroll 4")

static inline vn loadn(const float *p) { return *(const vn_mem *)p; }
static inline void storen(float *p, vn v) { *(vn_mem *)p = v; }

/* the 16 lanes of u (NV vectors) summed in lane order */
static inline float hsum16(const vn *u) {
    float s = 0.0f;
    UNROLL_NV
    for (int j = 0; j < NV; j++)
        for (int i = 0; i < VN; i++) s += u[j][i];
    return s;
}

/* WIDE_TILES: a 64-byte vector fits one register (AVX-512's 32 zmm), so a 4 x 64 register tile's 16 accumulators
   and 4 operands fit the register file (v16 is then vn). Elsewhere they would spill, and the kernels run such a
   tile as four 4 x 16 ones: the same sums in the same order. */
#if VN == 16
#define WIDE_TILES 1
typedef vn v16;
#define load16 loadn
#define store16 storen
#else
#define WIDE_TILES 0
#endif

/* KEEP_VN(v): keeps a native vector in a register across a loop (else GCC may re-read it from memory for every FMA
   that uses it: a load-bound loop; 30% of a 4 x 16 tile's time with AVX2); KEEP_IN_REGISTERS: four of them */
#if defined(__x86_64__) || defined(__i386__)
#define KEEP_VN(v) __asm__("" : "+v"(v))
#elif defined(__aarch64__)
#define KEEP_VN(v) __asm__("" : "+w"(v))
#else
#define KEEP_VN(v) ((void)0)
#endif
#define KEEP_IN_REGISTERS(a, b, c, d) do { KEEP_VN(a); KEEP_VN(b); KEEP_VN(c); KEEP_VN(d); } while (0)

#endif
