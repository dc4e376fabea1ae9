/* The attention fusion model's trunk, forward and backward, K models at once (see trainer/native_trunk.py).

   Everything of models/attention.py after the data layers' products, for M branches of width H (H % 16 == 0):
       a1_b = relu(z_b)              a2_b = relu(a1_b W2_b + b2_b)       h_b = relu(a2_b W3_b + b3_b)
       cat  = [h_0 .. h_M-1] * keep  (keep: the dropout mask times 1 / (1 - p), or none)
       u1 = relu(cat Wa1 + ba1)      u2 = relu(u1 Wa2 + ba2)             u3 = relu(u2 Wa3 + ba3)
       s  = u3 Wf + bf               weights = s, or softmax(s)          fused = sum_b weights_b * h_b
       emotion = fused We + be       valence = fused Wv + bv
   In PyTorch these are ~40 operators a step on [K, 32, 128] tensors and as many in the backward, each dispatched
   and threaded on its own (10-20 us apiece, most of it overhead), and bmm runs each model's small product on one
   thread. Here the forward is two parallel loops: the narrow weights' transposes (one task a model), then the
   layers over (model, block of rows) tasks -- every operator of the trunk is row-wise. The backward is two more:
   the row-wise gradients of every activation, each task transposing the square weights it multiplies by into its
   thread's scratch just before use (in L2: made in the forward for all models at once, they went to memory and
   back, and the forward read the weights twice), then the weight and bias gradients, one (model, layer) task
   each, summed over the rows in order. Every element is computed by one thread in one order, so results do not
   depend on the thread count.
   Products of width H or M * H run in 4-row x 64-column (then 16-column) register tiles; the narrow ones (M
   weights, C classes, V valence outputs) as dot products in 16 lanes over the transposed weights. Without
   AVX-512 (vec.h) the 64-column tiles run as four 16-column ones, and the square transposes element by element.
   ReLU keeps NaN as torch.relu does; its gradient passes where the output is > 0 (threshold_backward).
   GCC vector extensions (no intrinsics, see vec.h): the compiler maps them to AVX-512, AVX2 or NEON. */
#include <math.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention_trunk.h"
#include "forward_tile.h"

/* ------------------------------------------------------------------------------------------- products */

/* Y[r, :N] = X[r, :D] @ W[:D, :N] for rows [0, rows); N % 16 == 0. */
static void mm_nn(const float *X, int ldx, const float *W, int N, float *Y, int ldy, int rows, int D) {
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *x0 = X + (size_t)r * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
        float *y0 = Y + (size_t)r * ldy, *y1 = y0 + ldy, *y2 = y1 + ldy, *y3 = y2 + ldy;
        int n = 0;
        for (; n + 64 <= N; n += 64) tile4x64(x0, x1, x2, x3, 1, W + n, N, D, y0 + n, y1 + n, y2 + n, y3 + n, 0);
        for (; n < N; n += 16) tile4x16(x0, x1, x2, x3, 1, W + n, N, D, y0 + n, y1 + n, y2 + n, y3 + n, 0);
    }
    for (; r < rows; r++) {
        const float *x0 = X + (size_t)r * ldx;
        float *y0 = Y + (size_t)r * ldy;
        for (int n = 0; n < N; n += VN) {
            vn a0 = {0};
            for (int d = 0; d < D; d++) a0 += x0[d] * loadn(W + (size_t)d * N + n);
            storen(y0 + n, a0);
        }
    }
}

/* Y[r, n] = X[r, :D] . WT[n, :D] for a narrow N (the M weights, C classes, V valence outputs): each a dot
   product in 16 lanes (WT: the weight transposed, `narrow_t`). */
static void mm_dot(const float *X, int ldx, const float *WT, int N, float *Y, int ldy, int rows, int D) {
    int D16 = D / 16 * 16;
    for (int r = 0; r < rows; r++) {
        const float *x = X + (size_t)r * ldx;
        for (int n = 0; n < N; n++) {
            const float *w = WT + (size_t)n * D;
            vn acc[NV] = {{0}};
            for (int d = 0; d < D16; d += 16)
                UNROLL_NV
                for (int j = 0; j < NV; j++) acc[j] += loadn(x + d + j * VN) * loadn(w + d + j * VN);
            float s = hsum16(acc);
            for (int d = D16; d < D; d++) s += x[d] * w[d];
            Y[(size_t)r * ldy + n] = s;
        }
    }
}

/* Y[r, :D] += sum_n G[r, n] WT[n, :D]: the input gradient of a narrow layer, in vectors over D */
static void mm_acc_t(const float *G, int ldg, const float *WT, int N, float *Y, int ldy, int rows, int D) {
    for (int r = 0; r < rows; r++) {
        float *y = Y + (size_t)r * ldy;
        for (int n = 0; n < N; n++) {
            float g = G[(size_t)r * ldg + n];
            const float *w = WT + (size_t)n * D;
            for (int d = 0; d < D; d++) y[d] += g * w[d];
        }
    }
}

/* T[:N, :D] = W[:D, :N]^T for a narrow N */
static void narrow_t(const float *W, int D, int N, float *T) {
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) T[(size_t)n * D + d] = W[(size_t)d * N + n];
}

/* dW[:D, :N] = X[:rows, :D]^T @ G[:rows, :N] and db[:N] = sum of G's rows (db may be NULL), summed over the rows
   in order. */
static void mm_tn(const float *X, int ldx, const float *G, int ldg, float *dW, float *db, int rows, int D, int N) {
    if (N % 16 == 0) {
        int d = 0;
        for (; d + 4 <= D; d += 4) {
            float *w0 = dW + (size_t)d * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
            const float *x = X + d;
            int n = 0;
            for (; n + 64 <= N; n += 64)
                tile4x64(x, x + 1, x + 2, x + 3, ldx, G + n, ldg, rows, w0 + n, w1 + n, w2 + n, w3 + n, 0);
            for (; n < N; n += 16)
                tile4x16(x, x + 1, x + 2, x + 3, ldx, G + n, ldg, rows, w0 + n, w1 + n, w2 + n, w3 + n, 0);
        }
    } else {    /* a narrow N: 16 rows of dW at a time, each column n summed over the rows in a vector */
        int d = 0;
        for (; d + 16 <= D; d += 16)
            for (int n = 0; n < N; n++) {
                vn acc[NV] = {{0}};
                for (int r = 0; r < rows; r++)
                    UNROLL_NV
                    for (int j = 0; j < NV; j++)
                        acc[j] += G[(size_t)r * ldg + n] * loadn(X + (size_t)r * ldx + d + j * VN);
                for (int i = 0; i < 16; i++) dW[(size_t)(d + i) * N + n] = acc[i / VN][i % VN];
            }
        for (; d < D; d++)
            for (int n = 0; n < N; n++) {
                float s = 0.0f;
                for (int r = 0; r < rows; r++) s += X[(size_t)r * ldx + d] * G[(size_t)r * ldg + n];
                dW[(size_t)d * N + n] = s;
            }
    }
    if (db)
        for (int n = 0; n < N; n++) {
            float s = 0.0f;
            for (int r = 0; r < rows; r++) s += G[(size_t)r * ldg + n];
            db[n] = s;
        }
}

/* Y[r, :] = relu(Y[r, :] + b) (relu = 0: no ReLU) */
static void bias_act(float *Y, int ldy, int rows, int N, const float *b, int relu) {
    for (int r = 0; r < rows; r++) {
        float *y = Y + (size_t)r * ldy;
        for (int n = 0; n < N; n++) {
            float v = y[n] + b[n];
            y[n] = relu && v < 0.0f ? 0.0f : v;
        }
    }
}

/* G[r, :] *= (A[r, :] > 0): the gradient through a ReLU whose output is A */
static void relu_grad(float *G, int ldg, const float *A, int lda, int rows, int N) {
    for (int r = 0; r < rows; r++)
        for (int n = 0; n < N; n++)
            if (!(A[(size_t)r * lda + n] > 0.0f)) G[(size_t)r * ldg + n] = 0.0f;
}

/* One round of a 16 x 16 transpose in registers: rows i and i + b (i & b == 0) swap the elements whose row and
   column differ in bit b. After the rounds b = 8, 4, 2, 1 every row and column index has swapped all its bits.
   ROUND8: the same in 8 lanes, for an 8 x 8 transpose (b = 4, 2, 1). */
#define ARGS(...) __VA_ARGS__
#define ROUND_N(n, r, b, LO, HI)                                                                            \
    for (int i = 0; i < (n); i++)                                                                           \
        if (!(i & (b))) {                                                                                   \
            vn lo = __builtin_shufflevector(r[i], r[i + (b)], ARGS LO);                                     \
            vn hi = __builtin_shufflevector(r[i], r[i + (b)], ARGS HI);                                     \
            r[i] = lo; r[i + (b)] = hi;                                                                     \
        }
#define ROUND(r, b, LO, HI) ROUND_N(16, r, b, LO, HI)
#define ROUND8(r, b, LO, HI) ROUND_N(8, r, b, LO, HI)

/* T[:N, :D] = W[:D, :N]^T; D and N multiples of 16 (the kernel's H and M H) */
static void transpose(const float *W, int D, int N, float *T) {
#if VN == 8          /* 8 x 8 blocks in registers (AVX2), the same rounds as below for three bits */
    for (int d0 = 0; d0 < D; d0 += 8)
        for (int n0 = 0; n0 < N; n0 += 8) {
            vn r[8];
            for (int i = 0; i < 8; i++) r[i] = loadn(W + (size_t)(d0 + i) * N + n0);
            ROUND8(r, 4, (0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15))
            ROUND8(r, 2, (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15))
            ROUND8(r, 1, (0, 8, 2, 10, 4, 12, 6, 14), (1, 9, 3, 11, 5, 13, 7, 15))
            for (int j = 0; j < 8; j++) storen(T + (size_t)(n0 + j) * D + d0, r[j]);
        }
#elif !WIDE_TILES   /* 16 x 16 blocks element by element */
    for (int d0 = 0; d0 < D; d0 += 16)
        for (int n0 = 0; n0 < N; n0 += 16)
            for (int j = 0; j < 16; j++)
                for (int i = 0; i < 16; i++) T[(size_t)(n0 + j) * D + d0 + i] = W[(size_t)(d0 + i) * N + n0 + j];
#else
    for (int d0 = 0; d0 < D; d0 += 16)
        for (int n0 = 0; n0 < N; n0 += 16) {
            v16 r[16];
            for (int i = 0; i < 16; i++) r[i] = load16(W + (size_t)(d0 + i) * N + n0);
            ROUND(r, 8, (0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                  (8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
            ROUND(r, 4, (0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                  (4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
            ROUND(r, 2, (0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                  (2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
            ROUND(r, 1, (0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                  (1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
            for (int j = 0; j < 16; j++) store16(T + (size_t)(n0 + j) * D + d0, r[j]);
        }
#endif
}

static int rows_per_task(int K, int B, int threads) {
    int rt = (B + 3) / 4 * 4;
    while (rt > 4 && K * ((B + rt - 1) / rt) < 4 * threads) rt = (rt / 2 + 3) / 4 * 4;
    return rt;
}

/* the narrow weights of model k transposed (Wf, We, Wv into t->wn), which the forward and the backward use */
static void narrow_job(const trunk_t *t, int k) {
    const int M = t->M, H = t->H, C = t->C, V = t->V;
    float *wn = t->wn + (size_t)k * (M + C + V) * H;
    narrow_t(t->wf + (size_t)k * H * M, H, M, wn);
    if (C) narrow_t(t->we + (size_t)k * H * C, H, C, wn + (size_t)M * H);
    if (V) narrow_t(t->wv + (size_t)k * H * V, H, V, wn + (size_t)(M + C) * H);
}

/* the scratch of the calling thread for the backward's transposes: M H x H floats */
static float *thread_wt(const trunk_t *t) {
#ifdef _OPENMP
    return t->wt + (size_t)omp_get_thread_num() * t->M * t->H * t->H;
#else
    return t->wt;
#endif
}

/* ------------------------------------------------------------------------------------------- forward */

static void forward_rows(const trunk_t *t, int k, int r0, int rows) {
    const int B = t->B, M = t->M, H = t->H, MH = M * H, C = t->C, V = t->V;
    const size_t KBH = (size_t)t->K * B * H, HH = (size_t)H * H;
    const size_t kr = (size_t)k * B + r0;                    /* row index into [K, B, .] arrays */
    for (int b = 0; b < M; b++) {
        const float *z = t->z[b] + kr * H;
        float *a1 = t->a1 + b * KBH + kr * H, *a2 = t->a2 + b * KBH + kr * H, *h = t->h + b * KBH + kr * H;
        for (size_t i = 0; i < (size_t)rows * H; i++) a1[i] = z[i] < 0.0f ? 0.0f : z[i];
        mm_nn(a1, H, t->w2[b] + k * HH, H, a2, H, rows, H);
        bias_act(a2, H, rows, H, t->b2[b] + (size_t)k * H, 1);
        mm_nn(a2, H, t->w3[b] + k * HH, H, h, H, rows, H);
        bias_act(h, H, rows, H, t->b3[b] + (size_t)k * H, 1);
        float *cat = t->cat + kr * MH + (size_t)b * H;
        const float *keep = t->keep ? t->keep + kr * MH + (size_t)b * H : NULL;
        for (int r = 0; r < rows; r++)
            for (int n = 0; n < H; n++)
                cat[(size_t)r * MH + n] = keep ? h[(size_t)r * H + n] * keep[(size_t)r * MH + n] : h[(size_t)r * H + n];
    }
    float *u1 = t->u1 + kr * H, *u2 = t->u2 + kr * H, *u3 = t->u3 + kr * H;
    mm_nn(t->cat + kr * MH, MH, t->wa1 + (size_t)k * MH * H, H, u1, H, rows, MH);
    bias_act(u1, H, rows, H, t->ba1 + (size_t)k * H, 1);
    mm_nn(u1, H, t->wa2 + k * HH, H, u2, H, rows, H);
    bias_act(u2, H, rows, H, t->ba2 + (size_t)k * H, 1);
    mm_nn(u2, H, t->wa3 + k * HH, H, u3, H, rows, H);
    bias_act(u3, H, rows, H, t->ba3 + (size_t)k * H, 1);
    float *w = t->weights + kr * M;
    const float *wn = t->wn + (size_t)k * (M + C + V) * H;     /* Wf^T, We^T, Wv^T */
    mm_dot(u3, H, wn, M, w, M, rows, H);
    bias_act(w, M, rows, M, t->bf + (size_t)k * M, 0);
    if (t->softmax)
        for (int r = 0; r < rows; r++) {
            float *wr = w + (size_t)r * M, mx = wr[0], sum = 0.0f;
            for (int b = 1; b < M; b++) mx = wr[b] > mx ? wr[b] : mx;
            for (int b = 0; b < M; b++) { wr[b] = expf(wr[b] - mx); sum += wr[b]; }
            for (int b = 0; b < M; b++) wr[b] /= sum;
        }
    float *f = t->fused + kr * H;
    for (int r = 0; r < rows; r++)
        for (int n = 0; n < H; n++) {
            float s = 0.0f;
            for (int b = 0; b < M; b++) s += t->h[b * KBH + (kr + r) * H + n] * w[(size_t)r * M + b];
            f[(size_t)r * H + n] = s;
        }
    if (C) {
        mm_dot(f, H, wn + (size_t)M * H, C, t->emo + kr * C, C, rows, H);
        bias_act(t->emo + kr * C, C, rows, C, t->be + (size_t)k * C, 0);
    }
    if (V) {
        mm_dot(f, H, wn + (size_t)(M + C) * H, V, t->val + kr * V, V, rows, H);
        bias_act(t->val + kr * V, V, rows, V, t->bv + (size_t)k * V, 0);
    }
}

void trunk_forward(const trunk_t *t) {
    const int K = t->K;
    int rt = rows_per_task(K, t->B, t->threads), nr = (t->B + rt - 1) / rt;
    #pragma omp parallel num_threads(t->threads)
    {
        #pragma omp for schedule(static)
        for (int k = 0; k < K; k++) narrow_job(t, k);
        #pragma omp for schedule(static)
        for (int task = 0; task < K * nr; task++) {
            int k = task / nr, r0 = task % nr * rt;
            forward_rows(t, k, r0, r0 + rt < t->B ? rt : t->B - r0);
        }
    }
}

/* ------------------------------------------------------------------------------------------- backward */

/* the row-wise gradients of every activation, rows [r0, r0 + rows) of model k */
static void backward_rows(const trunk_t *t, int k, int r0, int rows) {
    const int B = t->B, M = t->M, H = t->H, MH = M * H, C = t->C, V = t->V;
    const size_t KBH = (size_t)t->K * B * H, HH = (size_t)H * H;
    const size_t kr = (size_t)k * B + r0;
    float *gf = t->g_f + kr * H, *gs = t->g_s + kr * M, *wt = thread_wt(t);
    const float *w = t->weights + kr * M;
    const float *wn = t->wn + (size_t)k * (M + C + V) * H;     /* Wf^T, We^T, Wv^T */
    for (int r = 0; r < rows; r++)
        for (int n = 0; n < H; n++) gf[(size_t)r * H + n] = t->g_fused ? t->g_fused[(kr + r) * H + n] : 0.0f;
    if (C && t->g_emo) mm_acc_t(t->g_emo + kr * C, C, wn + (size_t)M * H, C, gf, H, rows, H);
    if (V && t->g_val) mm_acc_t(t->g_val + kr * V, V, wn + (size_t)(M + C) * H, V, gf, H, rows, H);
    for (int r = 0; r < rows; r++) {
        float *g = gs + (size_t)r * M;
        for (int b = 0; b < M; b++) {
            const float *h = t->h + b * KBH + (kr + r) * H;
            vn acc[NV] = {{0}};
            for (int n = 0; n < H; n += 16)
                UNROLL_NV
                for (int j = 0; j < NV; j++)
                    acc[j] += loadn(gf + (size_t)r * H + n + j * VN) * loadn(h + n + j * VN);
            g[b] = hsum16(acc) + (t->g_weights ? t->g_weights[(kr + r) * M + b] : 0.0f);
        }
        if (t->softmax) {
            float dot = 0.0f;
            for (int b = 0; b < M; b++) dot += g[b] * w[(size_t)r * M + b];
            for (int b = 0; b < M; b++) g[b] = w[(size_t)r * M + b] * (g[b] - dot);
        }
    }
    float *gu3 = t->g_u3 + kr * H, *gu2 = t->g_u2 + kr * H, *gu1 = t->g_u1 + kr * H;
    memset(gu3, 0, sizeof(float) * rows * H);
    mm_acc_t(gs, M, wn, M, gu3, H, rows, H);
    relu_grad(gu3, H, t->u3 + kr * H, H, rows, H);
    transpose(t->wa3 + k * HH, H, H, wt);
    mm_nn(gu3, H, wt, H, gu2, H, rows, H);
    relu_grad(gu2, H, t->u2 + kr * H, H, rows, H);
    transpose(t->wa2 + k * HH, H, H, wt);
    mm_nn(gu2, H, wt, H, gu1, H, rows, H);
    relu_grad(gu1, H, t->u1 + kr * H, H, rows, H);
    float *gcat = t->g_cat + kr * MH;
    transpose(t->wa1 + (size_t)k * MH * H, MH, H, wt);
    mm_nn(gu1, H, wt, MH, gcat, MH, rows, H);
    for (int b = 0; b < M; b++) {
        float *gh = t->g_h + b * KBH + kr * H, *ga2 = t->g_a2 + b * KBH + kr * H;
        const float *keep = t->keep ? t->keep + kr * MH + (size_t)b * H : NULL;
        for (int r = 0; r < rows; r++)
            for (int n = 0; n < H; n++) {
                float gc = gcat[(size_t)r * MH + (size_t)b * H + n];
                if (keep) gc *= keep[(size_t)r * MH + n];
                gh[(size_t)r * H + n] = gf[(size_t)r * H + n] * w[(size_t)r * M + b] + gc;
            }
        relu_grad(gh, H, t->h + b * KBH + kr * H, H, rows, H);
        transpose(t->w3[b] + k * HH, H, H, wt);
        mm_nn(gh, H, wt, H, ga2, H, rows, H);
        relu_grad(ga2, H, t->a2 + b * KBH + kr * H, H, rows, H);
        float *gz = t->g_z[b] + kr * H;
        transpose(t->w2[b] + k * HH, H, H, wt);
        mm_nn(ga2, H, wt, H, gz, H, rows, H);
        relu_grad(gz, H, t->a1 + b * KBH + kr * H, H, rows, H);
    }
}

/* a head's gradients when no gradient reached its output */
static void zero_grads(float *dW, float *db, int D, int N) {
    memset(dW, 0, sizeof(float) * (size_t)D * N);
    memset(db, 0, sizeof(float) * (size_t)N);
}

/* the weight and bias gradients of one layer of model k (job: 0 emotion head, 1 valence head, 2 fc_att, 3-5 the
   attention MLP's layers 3, 2, 1, then W3_b and W2_b per branch), summed over all B rows in order */
static void weight_job(const trunk_t *t, int k, int job) {
    const int B = t->B, M = t->M, H = t->H, MH = M * H, C = t->C, V = t->V;
    const size_t KBH = (size_t)t->K * B * H, HH = (size_t)H * H, kb = (size_t)k * B;
    if (job == 0 && C) {
        if (t->g_emo) mm_tn(t->fused + kb * H, H, t->g_emo + kb * C, C, t->g_we + (size_t)k * H * C,
                            t->g_be + (size_t)k * C, B, H, C);
        else zero_grads(t->g_we + (size_t)k * H * C, t->g_be + (size_t)k * C, H, C);
    } else if (job == 1 && V) {
        if (t->g_val) mm_tn(t->fused + kb * H, H, t->g_val + kb * V, V, t->g_wv + (size_t)k * H * V,
                            t->g_bv + (size_t)k * V, B, H, V);
        else zero_grads(t->g_wv + (size_t)k * H * V, t->g_bv + (size_t)k * V, H, V);
    } else if (job == 2) {
        mm_tn(t->u3 + kb * H, H, t->g_s + kb * M, M, t->g_wf + (size_t)k * H * M, t->g_bf + (size_t)k * M, B, H, M);
    } else if (job == 3) {
        mm_tn(t->u2 + kb * H, H, t->g_u3 + kb * H, H, t->g_wa3 + k * HH, t->g_ba3 + (size_t)k * H, B, H, H);
    } else if (job == 4) {
        mm_tn(t->u1 + kb * H, H, t->g_u2 + kb * H, H, t->g_wa2 + k * HH, t->g_ba2 + (size_t)k * H, B, H, H);
    } else if (job == 5) {
        mm_tn(t->cat + kb * MH, MH, t->g_u1 + kb * H, H, t->g_wa1 + (size_t)k * MH * H, t->g_ba1 + (size_t)k * H,
              B, MH, H);
    } else if (job >= 6 && job < 6 + M) {
        int b = job - 6;
        mm_tn(t->a2 + b * KBH + kb * H, H, t->g_h + b * KBH + kb * H, H, t->g_w3[b] + k * HH,
              t->g_b3[b] + (size_t)k * H, B, H, H);
    } else if (job >= 6 + M) {
        int b = job - 6 - M;
        mm_tn(t->a1 + b * KBH + kb * H, H, t->g_a2 + b * KBH + kb * H, H, t->g_w2[b] + k * HH,
              t->g_b2[b] + (size_t)k * H, B, H, H);
    }
}

void trunk_backward(const trunk_t *t) {
    const int K = t->K, M = t->M, J = 6 + 2 * M;
    int rt = rows_per_task(K, t->B, t->threads), nr = (t->B + rt - 1) / rt;
    #pragma omp parallel num_threads(t->threads)
    {
        #pragma omp for schedule(static)
        for (int task = 0; task < K * nr; task++) {
            int k = task / nr, r0 = task % nr * rt;
            backward_rows(t, k, r0, r0 + rt < t->B ? rt : t->B - r0);
        }
        #pragma omp for schedule(dynamic)
        for (int task = 0; task < K * J; task++) weight_job(t, task / J, task % J);
    }
}
