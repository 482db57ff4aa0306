/* ACT's per-iteration work at inference, in one call (see act_kernel.py).
 *
 * In eager PyTorch a halting step is about twenty small operator calls (pooling of s, three small
 * matrix products, ReLUs, a sigmoid, the ACT rule, y += p·s, counting the halted), each costing
 * more in dispatch than in arithmetic at these sizes. Here it is one C function over the same
 * float32 numbers.
 *
 * Maps are one sample's (rows, c) floats: rows > 0 means channels last (pixel-major, NHWC),
 * rows < 0 means -rows pixels per channel plane (NCHW); a (c,) vector is rows = 1.
 */
#include <math.h>
#include <stdlib.h>

#define LANES 16 /* independent partial sums of a channel plane: vector adds, no serial chain */
#define PARALLEL_MIN 65536 /* floats of maps below which one thread does a call (threads cost more) */

/* A folded halting unit (fold.py FoldedHaltingUnit), weights as (in, out) row-major float32. */
struct iamnn_unit {
    long hidden, s_channels, u_channels, x_channels;
    const float *w1s_t, *w1u_t, *w1x_t, *b1, *w2_t, *b2, *w3;
    float b3;
};

/* sums[k] = mean over the pixels of channel k of one sample's map. */
static void channel_means(long rows, long c, const float *x, float *sums) {
    if (rows < 0) {
        rows = -rows;
        for (long k = 0; k < c; k++) {
            const float *plane = x + k * rows;
            float lane[LANES] = {0.0f};
            long p = 0;
            for (; p + LANES <= rows; p += LANES)
                for (int l = 0; l < LANES; l++) lane[l] += plane[p + l];
            float acc = 0.0f;
            for (; p < rows; p++) acc += plane[p];
            for (int l = 0; l < LANES; l++) acc += lane[l];
            sums[k] = acc / (float)rows;
        }
        return;
    }
    for (long k = 0; k < c; k++) sums[k] = 0.0f;
    for (long p = 0; p < rows; p++) {
        const float *row = x + p * c;
        for (long k = 0; k < c; k++) sums[k] += row[k];
    }
    for (long k = 0; k < c; k++) sums[k] /= (float)rows;
}

/* acc[j] += Σ_k GAP(x)[k] · wt[k, j] */
static int add_gap_product(long rows, long c, const float *x, long h, const float *wt, float *acc) {
    float *g = malloc(sizeof(float) * (size_t)(c > 0 ? c : 1));
    if (!g) return 1;
    channel_means(rows, c, x, g);
    for (long k = 0; k < c; k++) {
        const float *w = wt + k * h;
        for (long j = 0; j < h; j++) acc[j] += g[k] * w[j];
    }
    free(g);
    return 0;
}

/* The stage's context, computed once per sample: c = W_1x · GAP(x0) + b_1. Returns 0 on success. */
int iamnn_context(const struct iamnn_unit *w, long batch, const float *x0, long x_rows, float *context) {
    const long size = labs(x_rows) * w->x_channels;
    int failed = 0;
#pragma omp parallel for reduction(| : failed) if (batch * size > PARALLEL_MIN)
    for (long b = 0; b < batch; b++) {
        float *c = context + b * w->hidden;
        for (long j = 0; j < w->hidden; j++) c[j] = w->b1[j];
        failed |= add_gap_product(x_rows, w->x_channels, x0 + b * size, w->hidden, w->w1x_t, c);
    }
    return failed;
}

/* h = σ(w_3 · ReLU(W_2 ReLU(c + W_1s GAP(s) + W_1u GAP(u)) + b_2) + b_3), the unit's score. */
static int score(const struct iamnn_unit *w, const float *context, const float *s, long s_rows, const float *u,
                 long u_rows, float *h) {
    const long n = w->hidden;
    float *z1 = malloc(sizeof(float) * (size_t)(2 * n));
    if (!z1) return 1;
    float *z2 = z1 + n;
    for (long j = 0; j < n; j++) z1[j] = context[j];
    if (add_gap_product(s_rows, w->s_channels, s, n, w->w1s_t, z1) ||
        add_gap_product(u_rows, w->u_channels, u, n, w->w1u_t, z1)) {
        free(z1);
        return 1;
    }
    for (long j = 0; j < n; j++) z2[j] = w->b2[j];
    for (long i = 0; i < n; i++) {
        const float a = z1[i] > 0.0f ? z1[i] : 0.0f;
        const float *row = w->w2_t + i * n;
        for (long j = 0; j < n; j++) z2[j] += a * row[j];
    }
    float logit = w->b3;
    for (long j = 0; j < n; j++) logit += (z2[j] > 0.0f ? z2[j] : 0.0f) * w->w3[j];
    free(z1);
    *h = 1.0f / (1.0f + expf(-logit));
    return 0;
}

/* One ACT iteration of a batch of active samples. For each sample b: the score h (from the unit
 * when u is given; else h_in[b], computed by the caller, or h_given for every sample when h_in is
 * NULL too), halting.ACT's rule on float32 numbers, and y = p·s (first) or y += p·s over the
 * sample's map:
 *   halt = cum_h + h >= threshold,  p = halt ? 1 − cum_h : h,  cum_h += h
 * cum_h is updated in place; p and halt (0/1 bytes) are written. A sample's map is read twice
 * while it is still in cache (pooling, then y), and samples run in parallel under OpenMP.
 * Returns how many samples halt, or -1 on failure. */
long iamnn_act_iteration(const struct iamnn_unit *w, long batch, const float *context, const float *s, long s_rows,
                         const float *u, long u_rows, const float *h_in, float h_given, float threshold, float *y,
                         int first,
                         float *cum_h, float *p, unsigned char *halt) {
    const long s_size = labs(s_rows) * w->s_channels, u_size = labs(u_rows) * w->u_channels;
    long halted = 0;
    int failed = 0;
#pragma omp parallel for reduction(+ : halted) reduction(| : failed) if (batch * s_size > PARALLEL_MIN)
    for (long b = 0; b < batch; b++) {
        float h = h_in ? h_in[b] : h_given;
        const float *sb = s + b * s_size;
        if (u && score(w, context + b * w->hidden, sb, s_rows, u + b * u_size, u_rows, &h)) {
            failed = 1;
            continue;
        }
        const float total = cum_h[b] + h;
        const int stop = total >= threshold;
        const float weight = stop ? 1.0f - cum_h[b] : h;
        cum_h[b] = total;
        p[b] = weight;
        halt[b] = (unsigned char)stop;
        halted += stop;
        float *yb = y + b * s_size;
        if (first)
            for (long i = 0; i < s_size; i++) yb[i] = weight * sb[i];
        else
            for (long i = 0; i < s_size; i++) yb[i] += weight * sb[i];
    }
    return failed ? -1 : halted;
}
