/* ACT's per-iteration work for one sample at inference, in one call (see act_kernel.py).
 *
 * In eager PyTorch a halting step at batch 1 is about fifteen tiny operator calls (pooling of s and
 * u, three small matrix products, ReLUs, a sigmoid, the ACT rule, y += p·s), each costing more in
 * dispatch than in arithmetic. Here it is one C function over the same float32 numbers.
 *
 * Maps are one sample's (rows, c) floats: rows > 0 means channels last (pixel-major, NHWC),
 * rows < 0 means -rows pixels per channel plane (NCHW); a (c,) vector is rows = 1.
 */
#include <math.h>
#include <stdlib.h>

#define LANES 16 /* independent partial sums of a channel plane: vector adds, no serial chain */

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

/* The stage's context, computed once: c = W_1x · GAP(x0) + b_1. Returns 0 on success. */
int iamnn_context(const struct iamnn_unit *w, const float *x0, long x_rows, float *context) {
    for (long j = 0; j < w->hidden; j++) context[j] = w->b1[j];
    return add_gap_product(x_rows, w->x_channels, x0, w->hidden, w->w1x_t, context);
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

/* One ACT iteration of one sample: the score h (from the unit, or h_given when u is NULL),
 * halting.ACT's rule on float32 numbers, and y = p·s (first) or y += p·s over n floats.
 *   halt = cum_h + h >= threshold,  p = halt ? 1 − cum_h : h,  cum_h += h
 * state: [cum_h (in/out), p (out)]. Returns 1 if the sample halts, 0 if not, -1 on failure. */
int iamnn_act_iteration(const struct iamnn_unit *w, const float *context, const float *s, long s_rows,
                        const float *u, long u_rows, float h_given, float threshold, float *y, long n, int first,
                        float *state) {
    float h = h_given;
    if (u && score(w, context, s, s_rows, u, u_rows, &h)) return -1;
    const float cum_h = state[0];
    const float total = cum_h + h;
    const int halt = total >= threshold;
    const float p = halt ? 1.0f - cum_h : h;
    state[0] = total;
    state[1] = p;
    if (first)
        for (long i = 0; i < n; i++) y[i] = p * s[i];
    else
        for (long i = 0; i < n; i++) y[i] += p * s[i];
    return halt;
}
