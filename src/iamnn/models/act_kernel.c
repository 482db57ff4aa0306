/* ACT's per-iteration work at inference in one call; in training, the residual update with the
 * poolings the halting unit reads, and the weighted sum of states with its backward, each in one pass
 * (see act_kernel.py).
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
#define GROUP 8 /* samples scored together: the halting unit's weights are read once per group */
#define PARALLEL_MIN 65536 /* floats of maps below which one thread does a call (threads cost more) */

/* A folded halting unit (fold.py FoldedHaltingUnit), weights as (in, out) row-major float32. */
struct iamnn_unit {
    long hidden, s_channels, u_channels, x_channels;
    const float *w1s_t, *w1u_t, *w1x_t, *b1, *w2_t, *b2, *w3, *b3;
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
    /* channels last: 8 channels at a time, over 4 pixels at a time into independent sums, so that
     * the sums stay in vector registers (a runtime-sized sums[] would go through memory per pixel) */
    long k0 = 0;
    for (; k0 + 8 <= c; k0 += 8) {
        float a[4][8] = {{0.0f}};
        long p = 0;
        for (; p + 4 <= rows; p += 4)
            for (int q = 0; q < 4; q++)
                for (int l = 0; l < 8; l++) a[q][l] += x[(p + q) * c + k0 + l];
        for (; p < rows; p++)
            for (int l = 0; l < 8; l++) a[0][l] += x[p * c + k0 + l];
        for (int l = 0; l < 8; l++) sums[k0 + l] = (a[0][l] + a[1][l]) + (a[2][l] + a[3][l]);
    }
    for (long k = k0; k < c; k++) {
        float acc = 0.0f;
        for (long p = 0; p < rows; p++) acc += x[p * c + k];
        sums[k] = acc;
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

/* acc[b, j] += Σ_k x[b, k] · wt[k, j] for the g samples of a group: each row of wt is read once
 * for the whole group (per sample, the wide stages' weights would stream from L2 once a sample). */
static void group_product(long g, long c, const float *x, long h, const float *wt, float *acc) {
    for (long k = 0; k < c; k++) {
        const float *w = wt + k * h;
        for (long b = 0; b < g; b++) {
            const float xk = x[b * c + k];
            float *a = acc + b * h;
            for (long j = 0; j < h; j++) a[j] += xk * w[j];
        }
    }
}

/* h[b] = σ(w_3 · ReLU(W_2 ReLU(c_b + W_1s GAP(s_b) + W_1u GAP(u_b)) + b_2) + b_3), the unit's
 * scores for a group of g samples (maps of s_size and u_size floats each). */
static int score_group(const struct iamnn_unit *w, long g, const float *context, const float *s, long s_rows,
                       long s_size, const float *u, long u_rows, long u_size, float *h) {
    const long n = w->hidden, cs = w->s_channels, cu = w->u_channels;
    float *buf = malloc(sizeof(float) * (size_t)(g * (cs + cu + 2 * n)));
    if (!buf) return 1;
    float *gs = buf, *gu = gs + g * cs, *z1 = gu + g * cu, *z2 = z1 + g * n;
    for (long b = 0; b < g; b++) {
        channel_means(s_rows, cs, s + b * s_size, gs + b * cs);
        channel_means(u_rows, cu, u + b * u_size, gu + b * cu);
        for (long j = 0; j < n; j++) z1[b * n + j] = context[b * n + j];
        for (long j = 0; j < n; j++) z2[b * n + j] = w->b2[j];
    }
    group_product(g, cs, gs, n, w->w1s_t, z1);
    group_product(g, cu, gu, n, w->w1u_t, z1);
    for (long i = 0; i < g * n; i++) z1[i] = z1[i] > 0.0f ? z1[i] : 0.0f;
    group_product(g, n, z1, n, w->w2_t, z2);
    for (long b = 0; b < g; b++) {
        float logit = w->b3[0];
        for (long j = 0; j < n; j++) logit += (z2[b * n + j] > 0.0f ? z2[b * n + j] : 0.0f) * w->w3[j];
        h[b] = 1.0f / (1.0f + expf(-logit));
    }
    free(buf);
    return 0;
}

/* One ACT iteration of a batch of active samples. For each sample b: the score h (from the unit,
 * or h_given when u is NULL), halting.ACT's rule on float32 numbers, and, unless y is NULL,
 * y = p·s (first) or y += p·s over the sample's map:
 *   halt = cum_h + h >= threshold,  p = halt ? 1 − cum_h : h,  cum_h += h
 * cum_h is updated in place; p and halt (0/1 bytes) are written. A sample's map is read twice
 * while it is still in cache (pooling, then y), and samples run in parallel under OpenMP.
 * (A batch passes y = NULL and forms the sum with iamnn_weighted_sum where samples halt.)
 * Returns how many samples halt, or -1 on failure. */
long iamnn_act_iteration(const struct iamnn_unit *w, long batch, const float *context, const float *s, long s_rows,
                         const float *u, long u_rows, float h_given, float threshold, float *y, int first,
                         float *cum_h, float *p, unsigned char *halt) {
    const long s_size = labs(s_rows) * w->s_channels, u_size = labs(u_rows) * w->u_channels;
    const long groups = (batch + GROUP - 1) / GROUP;
    long halted = 0;
    int failed = 0;
#pragma omp parallel for reduction(+ : halted) reduction(| : failed) if (batch * s_size > PARALLEL_MIN)
    for (long group = 0; group < groups; group++) {
        const long first_b = group * GROUP, g = batch - first_b < GROUP ? batch - first_b : GROUP;
        float h[GROUP];
        if (u) {
            if (score_group(w, g, context + first_b * w->hidden, s + first_b * s_size, s_rows, s_size,
                            u + first_b * u_size, u_rows, u_size, h)) {
                failed = 1;
                continue;
            }
        } else {
            for (long b = 0; b < g; b++) h[b] = h_given;
        }
        for (long b = first_b; b < first_b + g; b++) {
            const float total = cum_h[b] + h[b - first_b];
            const int stop = total >= threshold;
            const float weight = stop ? 1.0f - cum_h[b] : h[b - first_b];
            cum_h[b] = total;
            p[b] = weight;
            halt[b] = (unsigned char)stop;
            halted += stop;
            if (!y) continue;
            const float *sb = s + b * s_size;
            float *yb = y + b * s_size;
            if (first)
                for (long i = 0; i < s_size; i++) yb[i] = weight * sb[i];
            else
                for (long i = 0; i < s_size; i++) yb[i] += weight * sb[i];
        }
    }
    return failed ? -1 : halted;
}

/* y = base + Σ_j p_j·s_j over n maps of `size` floats a sample (base NULL: none; p is n x batch),
 * added in the order iamnn_act_iteration's y += p·s adds them, so the sum is the same float32
 * number. A batch keeps each iteration's (p, s) and forms the sum here only where samples halt:
 * one pass over the states and y, where accumulating every iteration reads and writes y each time.
 * Blocks of BLOCK floats stay in L1 between the n maps' passes; y may be base (in place). */
#define BLOCK 1024
void iamnn_weighted_sum(long batch, long size, long n, const float *const *maps, const float *p, const float *base,
                        float *y) {
#pragma omp parallel for if (batch * size * n > PARALLEL_MIN)
    for (long b = 0; b < batch; b++) {
        const long at = b * size;
        for (long i0 = 0; i0 < size; i0 += BLOCK) {
            const long end = i0 + BLOCK < size ? i0 + BLOCK : size;
            float *yb = y + at;
            const float *m = maps[0] + at, w = p[b];
            if (base) {
                const float *bb = base + at;
                for (long i = i0; i < end; i++) yb[i] = bb[i] + w * m[i];
            } else {
                for (long i = i0; i < end; i++) yb[i] = w * m[i];
            }
            for (long j = 1; j < n; j++) {
                const float *mj = maps[j] + at, wj = p[j * batch + b];
                for (long i = i0; i < end; i++) yb[i] += wj * mj[i];
            }
        }
    }
}

/* Its backward (training): with g the gradient reaching y, for each map j and sample b
 *   grad_s_j = p_j·g,   grad_p_j = Σ g·s_j
 * in one pass: a block of g stays in L1 while each map's block is read and its gradient written.
 * PyTorch's addcmul backward writes the product g·s as a map, sums it, and multiplies g by p in
 * another pass, once per iteration. */
void iamnn_weighted_sum_backward(long batch, long size, long n, const float *g, const float *const *maps,
                                 const float *p, float *const *grad_maps, float *grad_p) {
#pragma omp parallel for if (batch * size * n > PARALLEL_MIN)
    for (long b = 0; b < batch; b++) {
        const long at = b * size;
        for (long j = 0; j < n; j++) grad_p[j * batch + b] = 0.0f;
        for (long i0 = 0; i0 < size; i0 += BLOCK) {
            const long end = i0 + BLOCK < size ? i0 + BLOCK : size;
            const float *gb = g + at;
            for (long j = 0; j < n; j++) {
                const float *sj = maps[j] + at, w = p[j * batch + b];
                float *out = grad_maps[j] + at;
                float lane[LANES] = {0.0f};
                long i = i0;
                for (; i + LANES <= end; i += LANES)
                    for (int l = 0; l < LANES; l++) {
                        lane[l] += gb[i + l] * sj[i + l];
                        out[i + l] = w * gb[i + l];
                    }
                float acc = 0.0f;
                for (; i < end; i++) {
                    acc += gb[i] * sj[i];
                    out[i] = w * gb[i];
                }
                for (int l = 0; l < LANES; l++) acc += lane[l];
                grad_p[j * batch + b] += acc;
            }
        }
    }
}

/* Training, channels-last maps of `pixels` x c floats a sample: s = ReLU(s_prev + u) (s_prev NULL:
 * the zero state) and the spatial means of s and u, in one pass over the maps. PyTorch writes the
 * sum, then the ReLU, then reads each map again for its mean. */
static void pooled_update_sample(long pixels, long c, const float *restrict s_prev, const float *restrict u,
                                 float *restrict s, float *restrict s_mean, float *restrict u_mean) {
    for (long k = 0; k < c; k++) s_mean[k] = u_mean[k] = 0.0f;
    for (long q = 0; q < pixels; q++) {
        const float *restrict uq = u + q * c;
        const float *restrict pq = s_prev ? s_prev + q * c : NULL; /* NULL: s_0 = 0 adds nothing */
        float *restrict sq = s + q * c;
        for (long k = 0; k < c; k++) {
            float v = pq ? uq[k] + pq[k] : uq[k];
            v = v > 0.0f ? v : 0.0f;
            sq[k] = v;
            s_mean[k] += v;
            u_mean[k] += uq[k];
        }
    }
    const float inv = 1.0f / (float)pixels;
    for (long k = 0; k < c; k++) {
        s_mean[k] *= inv;
        u_mean[k] *= inv;
    }
}

void iamnn_pooled_update(long batch, long pixels, long c, const float *s_prev, const float *u, float *s,
                         float *s_mean, float *u_mean) {
#pragma omp parallel for if (batch * pixels * c > PARALLEL_MIN)
    for (long b = 0; b < batch; b++) {
        const long at = b * pixels * c;
        pooled_update_sample(pixels, c, s_prev ? s_prev + at : NULL, u + at, s + at, s_mean + b * c, u_mean + b * c);
    }
}

/* Its backward, one pass: with g the gradient reaching s and g_sm, g_um those of the means,
 *   grad_s_prev = (g + g_sm / pixels) · [s > 0],   grad_u = grad_s_prev + g_um / pixels
 * (grad_s_prev NULL: not wanted). PyTorch adds each mean's broadcast gradient to a map, then
 * applies the ReLU's mask: three passes more. */
static void pooled_update_backward_sample(long pixels, long c, const float *restrict g, const float *restrict s,
                                          const float *restrict ds, const float *restrict du,
                                          float *restrict grad_u, float *restrict grad_prev) {
    for (long q = 0; q < pixels; q++) {
        const float *restrict gq = g + q * c, *restrict sq = s + q * c;
        float *restrict uq = grad_u + q * c;
        if (grad_prev) {
            float *restrict pq = grad_prev + q * c;
            for (long k = 0; k < c; k++) {
                const float sum = gq[k] + ds[k]; /* loaded whatever the mask: a select, which vectorises */
                const float v = sq[k] > 0.0f ? sum : 0.0f;
                pq[k] = v;
                uq[k] = v + du[k];
            }
        } else {
            for (long k = 0; k < c; k++) {
                const float sum = gq[k] + ds[k];
                uq[k] = (sq[k] > 0.0f ? sum : 0.0f) + du[k];
            }
        }
    }
}

int iamnn_pooled_update_backward(long batch, long pixels, long c, const float *g, const float *s,
                                 const float *g_s_mean, const float *g_u_mean, float *grad_u, float *grad_prev) {
    int failed = 0;
#pragma omp parallel for reduction(| : failed) if (batch * pixels * c > PARALLEL_MIN)
    for (long b = 0; b < batch; b++) {
        float *scaled = malloc(sizeof(float) * (size_t)(2 * c));
        if (!scaled) {
            failed = 1;
            continue;
        }
        for (long k = 0; k < c; k++) {
            scaled[k] = g_s_mean[b * c + k] / (float)pixels;
            scaled[c + k] = g_u_mean[b * c + k] / (float)pixels;
        }
        const long at = b * pixels * c;
        pooled_update_backward_sample(pixels, c, g + at, s + at, scaled, scaled + c, grad_u + at,
                                      grad_prev ? grad_prev + at : NULL);
        free(scaled);
    }
    return failed;
}
