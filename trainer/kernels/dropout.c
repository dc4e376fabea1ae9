/* Dropout from random bits in one pass, K models at once (see trainer/native.py, dropout_apply).

       out[k, e] = x[k, e] * keep(k, e) * scale[k]       (x NULL: 1; scale NULL: 1)

   keep(k, e) is the decision models/base.py's BatchedModel.keep_mask makes from model k's random words: with
   b = bits[k] random bits an element, an element is kept when its b-bit draw u >= thr[k]; for b < 8 element e
   draws field j = e / nbytes (bits j*b .. j*b + b - 1) of byte i = e % nbytes (nbytes = ceil(numel / (8 / b))),
   for b = 8 byte e, for b = 16 the signed int16 e (its threshold shifted by -2^15). In PyTorch that mask takes
   four passes over [K, n, D] (shift, and, convert, multiply); here one. Parallel tasks: (model, 4096-element
   chunk); each element is written once, so the result does not depend on the thread count. */
#include <stddef.h>
#include <stdint.h>

#define CHUNK 4096

void dropout_apply(const float *x, long long x_model_stride, const unsigned char *raw, long long raw_model_bytes,
                   const int *bits, const int *thr, const float *scale, float *out, int K, long long numel,
                   int threads) {
    long long nchunk = (numel + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long long task = 0; task < K * nchunk; task++) {
        int k = (int)(task / nchunk);
        long long e0 = task % nchunk * CHUNK, e1 = e0 + CHUNK < numel ? e0 + CHUNK : numel;
        const unsigned char *rk = raw + (size_t)k * (size_t)raw_model_bytes;
        const float *xk = x ? x + (size_t)k * (size_t)x_model_stride : NULL;
        float *ok = out + (size_t)k * (size_t)numel;
        const int b = bits[k], t = thr[k];
        const float s = scale ? scale[k] : 1.0f;
        if (b < 8) {      /* the chunk in runs of one field j over consecutive bytes i (a vector loop each) */
            const long long nbytes = (numel + 8 / b - 1) / (8 / b);
            const int fmask = (1 << b) - 1;
            for (long long j = e0 / nbytes; j * nbytes < e1; j++) {
                long long a = j * nbytes > e0 ? j * nbytes : e0, z = (j + 1) * nbytes < e1 ? (j + 1) * nbytes : e1;
                const unsigned char *rj = rk - j * nbytes;      /* rj[e] = byte e - j * nbytes */
                const int shift = (int)j * b;
                for (long long e = a; e < z; e++) {
                    float keep = ((rj[e] >> shift) & fmask) >= t ? 1.0f : 0.0f;
                    ok[e] = (xk ? xk[e] * keep : keep) * s;
                }
            }
        } else if (b == 8) {
            for (long long e = e0; e < e1; e++) {
                float keep = rk[e] >= t ? 1.0f : 0.0f;
                ok[e] = (xk ? xk[e] * keep : keep) * s;
            }
        } else {
            const int16_t *r16 = (const int16_t *)rk;
            for (long long e = e0; e < e1; e++) {
                float keep = r16[e] >= t ? 1.0f : 0.0f;
                ok[e] = (xk ? xk[e] * keep : keep) * s;
            }
        }
    }
}
