/* Runs trainer/kernels on fixed inputs and writes every output to stdout (tests/test_native.py): built once for
   this machine and once for another ISA (run under an emulator), the two must give the same numbers. Each output
   is a record: its name (16 bytes, NUL-padded), its float count (int64), the float32 values. The shapes have row
   and column tails: data_forward, two fused Adam steps with the next step's product (an idle model in the first),
   a plain Adam step, dropout from 1-, 8- and 16-bit draws, and the attention trunk's forward and backward with
   softmax. Link with the kernels' shared library. */
#include <stdio.h>
#include <stdlib.h>

#include "../trainer/kernels/attention_trunk.h"

void data_forward(const float *x, long long x_model_stride, const float *W, const float *b, const float *scale,
                  float *y, int K, int B, int D, int H, int threads);
void scale_bias(float *y, const float *b, const float *scale, int K, int B, int H);
int wgrad_adam(const float *x, long long x_model_stride, const float *g, float *W, float *m, float *v, int K, int B,
               int D, int H, const float *step_size, const float *bc2_sqrt, const float *wd,
               const unsigned char *active, float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
               int threads);
int wgrad_adam_next(const float *x, long long x_model_stride, const float *g, float *W, float *m, float *v, int K,
                    int B, int D, int H, const float *step_size, const float *bc2_sqrt, const float *wd,
                    const unsigned char *active, float one_minus_beta1, float beta2, float one_minus_beta2,
                    float eps, const float *xn, long long xn_model_stride, float *zn, int threads);
void dropout_apply(const float *x, long long x_model_stride, const unsigned char *raw, long long raw_model_bytes,
                   const int *bits, const int *thr, const float *scale, float *out, int K, long long numel,
                   int threads);
int vector_lanes(void);

static unsigned long long state = 88172645463325252ULL;

static unsigned int next_u32(void) {      /* xorshift64: the same numbers on every machine */
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (unsigned int)(state >> 32);
}

/* n floats uniform in [-a, a), a fraction `zeros` of them 0 (a dropped input) */
static float *rnd(size_t n, float a, float zeros) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float u = (float)(next_u32() >> 8) / 16777216.0f;
        p[i] = (float)(next_u32() >> 8) / 16777216.0f < zeros ? 0.0f : (2.0f * u - 1.0f) * a;
    }
    return p;
}

static float *zeros(size_t n) { return calloc(n, sizeof(float)); }

static void put(const char *name, const float *p, size_t n) {
    char tag[16] = {0};
    long long count = (long long)n;
    snprintf(tag, sizeof tag, "%s", name);
    fwrite(tag, 1, sizeof tag, stdout);
    fwrite(&count, sizeof count, 1, stdout);
    fwrite(p, sizeof(float), n, stdout);
}

static void data_layers(int K, int B, int D, int H) {
    size_t x_n = (size_t)K * B * D, w_n = (size_t)K * D * H, y_n = (size_t)K * B * H;
    float *x = rnd(x_n, 1.0f, 0.3f), *xn = rnd(x_n, 1.0f, 0.3f), *W = rnd(w_n, 0.05f, 0.0f);
    float *m = zeros(w_n), *v = zeros(w_n), *b = rnd((size_t)K * H, 0.5f, 0.0f), *scale = rnd(K, 1.0f, 0.0f);
    float *y = zeros(y_n), *zn = zeros(y_n), lr[8], bc2[8], wd[8];
    unsigned char active[8];
    data_forward(x, (long long)B * D, W, b, scale, y, K, B, D, H, 2);
    put("data_forward", y, y_n);
    for (int step = 1; step <= 3; step++) {
        float *g = rnd(y_n, 0.01f, 0.0f);
        for (int k = 0; k < K; k++) {
            lr[k] = 1e-3f * (float)(k + 1);
            bc2[k] = (float)step / 10.0f + 0.5f;
            wd[k] = k % 2 ? 1e-5f : 0.0f;
            active[k] = step > 1 || k != 1;
        }
        if (step < 3) {
            wgrad_adam_next(x, (long long)B * D, g, W, m, v, K, B, D, H, lr, bc2, wd, active, 0.1f, 0.999f,
                            0.001f, 1e-8f, xn, (long long)B * D, zn, 2);
            scale_bias(zn, b, scale, K, B, H);
            put("next_product", zn, y_n);
        } else {
            wgrad_adam(xn, (long long)B * D, g, W, m, v, K, B, D, H, lr, bc2, wd, active, 0.1f, 0.999f, 0.001f,
                       1e-8f, 2);
        }
        free(g);
    }
    put("adam_w", W, w_n); put("adam_m", m, w_n); put("adam_v", v, w_n);
    free(x); free(xn); free(W); free(m); free(v); free(b); free(scale); free(y); free(zn);
}

static void dropout(void) {
    enum { K = 3, N = 5000 };
    int bits[K] = {1, 8, 16}, thr[K] = {1, 77, -32768 + 19661};
    float scale[K] = {2.0f, 1.4285714f, 1.25f}, *x = rnd((size_t)K * N, 1.0f, 0.0f), *out = zeros((size_t)K * N);
    unsigned char *raw = malloc((size_t)K * 2 * N);
    for (size_t i = 0; i < (size_t)K * 2 * N; i++) raw[i] = (unsigned char)next_u32();
    dropout_apply(x, N, raw, 2 * N, bits, thr, scale, out, K, N, 2);
    put("dropout", out, (size_t)K * N);
    dropout_apply(NULL, 0, raw, 2 * N, bits, thr, NULL, out, K, N, 2);
    put("dropout_mask", out, (size_t)K * N);
    free(x); free(out); free(raw);
}

static void trunk(int K, int B, int M, int H, int C, int V) {
    const size_t KBH = (size_t)K * B * H, KHH = (size_t)K * H * H, KH = (size_t)K * H, MH = (size_t)M * H;
    const float *z[4], *w2[4], *b2[4], *w3[4], *b3[4];
    float *g_z[4], *g_w2[4], *g_b2[4], *g_w3[4], *g_b3[4];
    for (int b = 0; b < M; b++) {
        z[b] = rnd(KBH, 1.0f, 0.0f); w2[b] = rnd(KHH, 0.1f, 0.0f); b2[b] = rnd(KH, 0.1f, 0.0f);
        w3[b] = rnd(KHH, 0.1f, 0.0f); b3[b] = rnd(KH, 0.1f, 0.0f);
        g_z[b] = zeros(KBH); g_w2[b] = zeros(KHH); g_b2[b] = zeros(KH); g_w3[b] = zeros(KHH); g_b3[b] = zeros(KH);
    }
    trunk_t t = {.K = K, .B = B, .M = M, .H = H, .C = C, .V = V, .softmax = 1, .threads = 2};
    t.z = z; t.w2 = w2; t.b2 = b2; t.w3 = w3; t.b3 = b3;
    t.keep = rnd((size_t)K * B * MH, 2.0f, 0.0f);
    t.wa1 = rnd(K * MH * H, 0.1f, 0.0f); t.ba1 = rnd(KH, 0.1f, 0.0f); t.wa2 = rnd(KHH, 0.1f, 0.0f);
    t.ba2 = rnd(KH, 0.1f, 0.0f); t.wa3 = rnd(KHH, 0.1f, 0.0f); t.ba3 = rnd(KH, 0.1f, 0.0f);
    t.wf = rnd(KH * M, 0.1f, 0.0f); t.bf = rnd((size_t)K * M, 0.1f, 0.0f); t.we = rnd(KH * C, 0.1f, 0.0f);
    t.be = rnd((size_t)K * C, 0.1f, 0.0f); t.wv = rnd(KH * V, 0.1f, 0.0f); t.bv = rnd((size_t)K * V, 0.1f, 0.0f);
    t.a1 = zeros(M * KBH); t.a2 = zeros(M * KBH); t.h = zeros(M * KBH); t.cat = zeros((size_t)K * B * MH);
    t.u1 = zeros(KBH); t.u2 = zeros(KBH); t.u3 = zeros(KBH); t.wn = zeros(K * (M + C + V) * (size_t)H);
    t.wt = zeros(2 * MH * H);
    t.weights = zeros((size_t)K * B * M); t.fused = zeros(KBH); t.emo = zeros((size_t)K * B * C);
    t.val = zeros((size_t)K * B * V);
    t.g_emo = rnd((size_t)K * B * C, 0.1f, 0.0f); t.g_val = rnd((size_t)K * B * V, 0.1f, 0.0f);
    t.g_weights = rnd((size_t)K * B * M, 0.1f, 0.0f); t.g_fused = rnd(KBH, 0.1f, 0.0f);
    t.g_f = zeros(KBH); t.g_u3 = zeros(KBH); t.g_u2 = zeros(KBH); t.g_u1 = zeros(KBH);
    t.g_s = zeros((size_t)K * B * M); t.g_cat = zeros((size_t)K * B * MH); t.g_h = zeros(M * KBH);
    t.g_a2 = zeros(M * KBH);
    t.g_z = g_z; t.g_w2 = g_w2; t.g_b2 = g_b2; t.g_w3 = g_w3; t.g_b3 = g_b3;
    t.g_wa1 = zeros(K * MH * H); t.g_ba1 = zeros(KH); t.g_wa2 = zeros(KHH); t.g_ba2 = zeros(KH);
    t.g_wa3 = zeros(KHH); t.g_ba3 = zeros(KH); t.g_wf = zeros(KH * M); t.g_bf = zeros((size_t)K * M);
    t.g_we = zeros(KH * C); t.g_be = zeros((size_t)K * C); t.g_wv = zeros(KH * V); t.g_bv = zeros((size_t)K * V);
    trunk_forward(&t);
    trunk_backward(&t);
    put("trunk_weights", t.weights, (size_t)K * B * M); put("trunk_fused", t.fused, KBH);
    put("trunk_emotion", t.emo, (size_t)K * B * C); put("trunk_valence", t.val, (size_t)K * B * V);
    for (int b = 0; b < M; b++) {
        put("trunk_g_z", g_z[b], KBH); put("trunk_g_w2", g_w2[b], KHH); put("trunk_g_b2", g_b2[b], KH);
        put("trunk_g_w3", g_w3[b], KHH); put("trunk_g_b3", g_b3[b], KH);
    }
    put("trunk_g_wa1", t.g_wa1, K * MH * H); put("trunk_g_ba1", t.g_ba1, KH); put("trunk_g_wa2", t.g_wa2, KHH);
    put("trunk_g_ba2", t.g_ba2, KH); put("trunk_g_wa3", t.g_wa3, KHH); put("trunk_g_ba3", t.g_ba3, KH);
    put("trunk_g_wf", t.g_wf, KH * M); put("trunk_g_bf", t.g_bf, (size_t)K * M);
    put("trunk_g_we", t.g_we, KH * C); put("trunk_g_be", t.g_be, (size_t)K * C);
    put("trunk_g_wv", t.g_wv, KH * V); put("trunk_g_bv", t.g_bv, (size_t)K * V);
    /* the rest is freed at exit */
}

int main(void) {
    fprintf(stderr, "%d lanes\n", vector_lanes());
    data_layers(3, 37, 131, 80);
    data_layers(2, 32, 300, 128);
    dropout();
    trunk(3, 9, 3, 80, 6, 1);
    trunk(2, 32, 2, 128, 4, 0);
    return 0;
}
