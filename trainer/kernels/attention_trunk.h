/* The attention trunk's arguments (attention_trunk.c): the layout trainer/native_trunk.py fills, and the one
   tests/kernel_bits.c fills to run the kernels on another ISA. */
#ifndef FEATSTORE_ATTENTION_TRUNK_H
#define FEATSTORE_ATTENTION_TRUNK_H

/* The layout trainer/native_trunk.py fills (ctypes.Structure of the same fields, in this order). [K, B, X]
   arrays are row-major; per-branch arrays are M pointers. */
typedef struct {
    int K, B, M, H, C, V, softmax, threads;
    /* forward inputs */
    const float *const *z;                       /* M x [K, B, H]: the data layers' outputs, before their ReLU */
    const float *const *w2, *const *b2;          /* M x [K, H, H], M x [K, H] */
    const float *const *w3, *const *b3;
    const float *keep;                           /* [K, B, M H] or NULL */
    const float *wa1, *ba1, *wa2, *ba2, *wa3, *ba3;    /* [K, M H, H], [K, H], [K, H, H], [K, H], ... */
    const float *wf, *bf;                        /* [K, H, M], [K, M] */
    const float *we, *be;                        /* [K, H, C], [K, C] */
    const float *wv, *bv;                        /* [K, H, V], [K, V] */
    /* saved by the forward for the backward */
    float *a1, *a2, *h;                          /* [M, K, B, H] each */
    float *cat;                                  /* [K, B, M H] */
    float *u1, *u2, *u3;                         /* [K, B, H] */
    float *wn;                                   /* [K, M + C + V, H]: Wf, We and Wv transposed */
    float *wt;                                   /* backward scratch (set by the backward): [threads, M H, H],
                                                    each thread's transposes */
    /* forward outputs */
    float *weights, *fused, *emo, *val;          /* [K, B, M], [K, B, H], [K, B, C], [K, B, V] */
    /* backward: incoming gradients, NULL for none */
    const float *g_emo, *g_val, *g_weights, *g_fused;
    /* backward scratch */
    float *g_f, *g_u3, *g_u2, *g_u1;             /* [K, B, H] */
    float *g_s;                                  /* [K, B, M] */
    float *g_cat;                                /* [K, B, M H] */
    float *g_h, *g_a2;                           /* [M, K, B, H] */
    /* backward outputs */
    float *const *g_z;                           /* M x [K, B, H] */
    float *const *g_w2, *const *g_b2, *const *g_w3, *const *g_b3;
    float *g_wa1, *g_ba1, *g_wa2, *g_ba2, *g_wa3, *g_ba3, *g_wf, *g_bf, *g_we, *g_be, *g_wv, *g_bv;
} trunk_t;

void trunk_forward(const trunk_t *t);
void trunk_backward(const trunk_t *t);

#endif
