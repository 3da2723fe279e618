/*
 * necoda_kernels.c -- the hot loops of the lossless and bounded modes, in plain C99.
 *
 * Called from Python through ctypes (necoda_filter/_kernels.py, which checks every argument). The
 * library links neither libpython nor libhdf5 and keeps no state between calls.
 *
 * Exactness: everything that decides the bit-stream is integer arithmetic. Sums and products are done
 * on uint64_t (wrapping, so corrupt input can never trigger undefined behaviour) and read back as
 * int64_t; on valid input no intermediate leaves the int64 range, so results equal exact integer
 * arithmetic, and hence the numpy reference implementations. Rounded predictions are
 * floor((acc + 2^(s-1)) / 2^s), with the floor division written so that it does not depend on how
 * the compiler shifts negative numbers. The only floating point is the Gram matrix of the imaging
 * predictor fit (nk_img_gram): a fixed-order sequential double sum (no reassociation, no FMA
 * contraction: the build passes -ffp-contract=off), reproducible on any IEEE-754 machine; its result
 * only chooses coefficients, which are stored in the payload.
 *
 * Element types are passed as codes: itemsize | 16 for unsigned (1, 2, 4, 8, 17, 18, 20, 24).
 * Values in memory are little-endian native (the wrapper refuses anything else).
 *
 * Return values: 0 on success, negative on a bad argument (-1), failed allocation (-2) or a value out
 * of range in the input (-3).
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;
typedef uint64_t u64;

#define NK_OK 0
#define NK_EARG (-1)
#define NK_ENOMEM (-2)
#define NK_ERANGE (-3)

/* two's complement reinterpretation, defined for every value (no implementation-defined cast) */
static inline i64 s64(u64 u) { return u <= (u64)INT64_MAX ? (i64)u : -(i64)(~u) - 1; }
/* floor(v / 2^s) for 0 <= s < 63, whatever the sign of v */
static inline i64 fshift(i64 v, int s) { return v >= 0 ? (v >> s) : ~((~v) >> s); }
/* floor((acc + 2^(s-1)) / 2^s): the rounded prediction (s >= 1) */
static inline i64 rshift(u64 acc, int s) { return fshift(s64(acc + ((u64)1 << (s - 1))), s); }

static int valid_code(int code) {
    switch (code) {
    case 1: case 2: case 4: case 8: case 17: case 18: case 20: case 24: return 1;
    default: return 0;
    }
}

static int valid_size(int size) { return size == 1 || size == 2 || size == 4 || size == 8; }

/* dst[k] = src[off + k * stride] - sub (as uint64, wrapping), for k < n; src elements of type code */
static void load_u64(u64 *dst, const void *src, i64 off, i64 stride, i64 n, int code, u64 sub) {
    i64 k;
    switch (code) {
#define NK_LOAD(CODE, T)                                                                       \
    case CODE: {                                                                               \
        const T *p = (const T *)src + off;                                                     \
        for (k = 0; k < n; k++) dst[k] = (u64)(i64)p[k * stride] - sub;                        \
        break;                                                                                 \
    }
        NK_LOAD(1, int8_t)
        NK_LOAD(2, int16_t)
        NK_LOAD(4, int32_t)
        NK_LOAD(17, uint8_t)
        NK_LOAD(18, uint16_t)
        NK_LOAD(20, uint32_t)
#undef NK_LOAD
    case 8: {
        const int64_t *p = (const int64_t *)src + off;
        for (k = 0; k < n; k++) dst[k] = (u64)p[k * stride] - sub;
        break;
    }
    case 24: {
        const uint64_t *p = (const uint64_t *)src + off;
        for (k = 0; k < n; k++) dst[k] = p[k * stride] - sub;
        break;
    }
    default: break;
    }
}

/* dst[off + k * stride] = low `size` bytes of (src[k] + add), for k < n */
static void store_u64(void *dst, i64 off, i64 stride, const u64 *src, i64 n, int size, u64 add) {
    i64 k;
    switch (size) {
#define NK_STORE(SIZE, T)                                                                      \
    case SIZE: {                                                                               \
        T *p = (T *)dst + off;                                                                 \
        for (k = 0; k < n; k++) p[k * stride] = (T)(src[k] + add);                             \
        break;                                                                                 \
    }
        NK_STORE(1, uint8_t)
        NK_STORE(2, uint16_t)
        NK_STORE(4, uint32_t)
        NK_STORE(8, uint64_t)
#undef NK_STORE
    default: break;
    }
}

/* ============================================================================================ sums */

/*
 * One pass over x (T x K, type code): sums[k] = sum over t of x[t, k] (modulo 2^64, as uint64 bits) and
 * mm = {min, max} of all values (as the 64-bit pattern of the sign- or zero-extended values).
 */
int nk_stats(const void *x, int code, i64 T, i64 K, u64 *sums, u64 *mm) {
    i64 t, k, n;
    if (!valid_code(code) || T < 0 || K < 1 || T > INT64_MAX / K) return NK_EARG;
    for (k = 0; k < K; k++) sums[k] = 0;
    n = T * K;
    switch (code) {
#define NK_STATS(CODE, TT, WT)                                                                         \
    case CODE: {                                                                                       \
        const TT *p = (const TT *)x;                                                                   \
        TT vmin = n ? p[0] : 0, vmax = n ? p[0] : 0;                                                   \
        for (t = 0; t < n; t++) {                                                                      \
            vmin = p[t] < vmin ? p[t] : vmin;                                                          \
            vmax = p[t] > vmax ? p[t] : vmax;                                                          \
        }                                                                                              \
        if (K == 1) {                                                                                  \
            u64 a = 0;                                                                                 \
            for (t = 0; t < n; t++) a += (u64)(WT)p[t];                                                \
            sums[0] = a;                                                                               \
        } else {                                                                                       \
            for (t = 0; t < T; t++) {                                                                  \
                const TT *row = p + t * K;                                                             \
                for (k = 0; k < K; k++) sums[k] += (u64)(WT)row[k];                                    \
            }                                                                                          \
        }                                                                                              \
        mm[0] = (u64)(WT)vmin;                                                                         \
        mm[1] = (u64)(WT)vmax;                                                                         \
        break;                                                                                         \
    }
        NK_STATS(1, int8_t, i64)
        NK_STATS(2, int16_t, i64)
        NK_STATS(4, int32_t, i64)
        NK_STATS(8, int64_t, i64)
        NK_STATS(17, uint8_t, u64)
        NK_STATS(18, uint16_t, u64)
        NK_STATS(20, uint32_t, u64)
        NK_STATS(24, uint64_t, u64)
#undef NK_STATS
    default: break;
    }
    return NK_OK;
}

/* ============================================================================================ LPC */
/*
 * Blocks: the T rows are cut into nb blocks of L rows (nb * L >= T > (nb - 1) * L); the first block is
 * short by pad = nb * L - T rows. Each block is predicted with zero history.
 */
static int lpc_blocks_ok(i64 T, i64 nb, i64 L) {
    return nb >= 1 && L >= 1 && T >= 0 && nb <= INT64_MAX / L && nb * L >= T && nb * L - T < L;
}

/*
 * Blocks are held channel-major: channel c's n values at blk + c * (p + L) + p, after p zeros of history.
 * The filters are written out for each order p <= 8 so that the compiler unrolls them and keeps the
 * history in registers.
 */
#define NK_FOR_ORDERS(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)

/* e[j] = x[j] - rounded prediction from x[j-1..j-p] (x[-p..-1] readable) */
static void lpc_analysis(const u64 *restrict x, i64 *restrict e, i64 n, const i64 *restrict q, i64 p, int shift) {
    i64 j, i;
    switch (p) {
    case 0:
        for (j = 0; j < n; j++) e[j] = s64(x[j]);
        return;
#define NK_ANA(P)                                                                                      \
    case P: {                                                                                          \
        u64 qq[P];                                                                                     \
        for (i = 0; i < P; i++) qq[i] = (u64)q[i];                                                     \
        for (j = 0; j < n; j++) {                                                                      \
            u64 acc = 0;                                                                               \
            for (i = 0; i < P; i++) acc += qq[i] * x[j - 1 - i];                                       \
            e[j] = s64(x[j] - (u64)rshift(acc, shift));                                                \
        }                                                                                              \
        return;                                                                                        \
    }
        NK_FOR_ORDERS(NK_ANA)
#undef NK_ANA
    default:
        for (j = 0; j < n; j++) {
            u64 acc = 0;
            for (i = 0; i < p; i++) acc += (u64)q[i] * x[j - 1 - i];
            e[j] = s64(x[j] - (u64)rshift(acc, shift));
        }
    }
}

/* in place: x[j] += rounded prediction from x[j-1..j-p] (x[-p..-1] readable) */
static void lpc_synthesis(u64 *restrict x, i64 n, const i64 *restrict q, i64 p, int shift) {
    i64 j, i;
    switch (p) {
    case 0:
        return;
#define NK_SYN(P)                                                                                      \
    case P: {                                                                                          \
        u64 qq[P];                                                                                     \
        for (i = 0; i < P; i++) qq[i] = (u64)q[i];                                                     \
        for (j = 0; j < n; j++) {                                                                      \
            u64 acc = 0;                                                                               \
            for (i = 0; i < P; i++) acc += qq[i] * x[j - 1 - i];                                       \
            x[j] += (u64)rshift(acc, shift);                                                           \
        }                                                                                              \
        return;                                                                                        \
    }
        NK_FOR_ORDERS(NK_SYN)
#undef NK_SYN
    default:
        for (j = 0; j < n; j++) {
            u64 acc = 0;
            for (i = 0; i < p; i++) acc += (u64)q[i] * x[j - 1 - i];
            x[j] += (u64)rshift(acc, shift);
        }
    }
}

/* row t's block start (blocks: see lpc_blocks_ok) */
static i64 block_start(i64 t, i64 L, i64 pad) {
    i64 first = L - pad;
    return t < first ? 0 : first + ((t - first) / L) * L;
}

/*
 * Forward per-channel LPC residual at selected rows (the encoder's fitting sample). x: T x C (type code),
 * centred as xc = x - lo - mu[c]; Q: C x p coefficients with `shift` fractional bits;
 *     e[c, t] = xc[t, c] - floor((sum_i Q[c, i] xc[t-1-i, c] + 2^(shift-1)) / 2^shift),
 * xc taken as 0 before the start of t's block. rows: increasing; out: C x nrows int64, column j for
 * row rows[j]. Runs of consecutive rows are filtered as a whole.
 */
int nk_lpc_rows(const void *x, int code, i64 T, i64 C, u64 lo, const i64 *mu, const i64 *Q, i64 p, int shift,
                i64 nb, i64 L, const i64 *rows, i64 nrows, i64 *out) {
    i64 j, c, pad, a;
    u64 *buf;
    i64 *tmp;
    if (!valid_code(code) || C < 1 || p < 0 || p > 64 || shift < 1 || shift > 30 || !lpc_blocks_ok(T, nb, L) ||
        nrows < 0)
        return NK_EARG;
    for (j = 0; j < nrows; j++)
        if (rows[j] < 0 || rows[j] >= T || (j && rows[j] <= rows[j - 1])) return NK_EARG;
    buf = (u64 *)malloc((size_t)(L + p) * sizeof(u64));
    tmp = (i64 *)malloc((size_t)L * sizeof(i64));
    if (!buf || !tmp) { free(buf); free(tmp); return NK_ENOMEM; }
    pad = nb * L - T;
    for (a = 0; a < nrows;) {
        /* the run rows[a..z) of consecutive rows inside one block */
        i64 t = rows[a], t0 = block_start(t, L, pad), tend = t0 + (t0 == 0 ? L - pad : L), z = a + 1, n, h, i;
        while (z < nrows && rows[z] == rows[z - 1] + 1 && rows[z] < tend) z++;
        n = z - a;
        h = t - t0 < p ? t - t0 : p; /* history rows available inside the block */
        for (c = 0; c < C; c++) {
            for (i = 0; i < p - h; i++) buf[i] = 0;
            load_u64(buf + p - h, x, (t - h) * C + c, C, h + n, code, lo + (u64)mu[c]);
            lpc_analysis(buf + p, tmp, n, Q + c * p, p, shift);
            for (i = 0; i < n; i++) out[c * nrows + a + i] = tmp[i];
        }
        a = z;
    }
    free(buf);
    free(tmp);
    return NK_OK;
}

/*
 * Forward LPC + inter-channel prediction (encoder), block by block, with the residuals e above and
 *     f[c, t] = e[c, t] - floor((sum_k W[c, k] e[c-1-k, t] + 2^(shift-1)) / 2^shift)   (k < nx, k < c).
 * sums (optional, 2C): sums[2c] = sum_t |e[c, t]|, sums[2c+1] = sum_t |f[c, t]| (modulo 2^64, like numpy's
 * int64 sums). out (optional): C x T channel-major, f stored as its low osize bytes (2, 4 or 8); rng[0..1]
 * = the range of f (0 included).
 */
int nk_lpc_encode(const void *x, int code, i64 T, i64 C, u64 lo, const i64 *mu, const i64 *Q, i64 p,
                  const i64 *W, i64 nx, int shift, i64 nb, i64 L, i64 *sums, void *out, int osize, i64 *rng) {
    u64 *blk, *asum;
    i64 *e, *f;
    i64 b, c, j, k, pad, S = L + p, vmin = 0, vmax = 0;
    if (!valid_code(code) || C < 1 || p < 0 || p > 64 || nx < 0 || shift < 1 || shift > 30 ||
        !lpc_blocks_ok(T, nb, L) || C > INT64_MAX / S / 8 || (out && !(osize == 2 || osize == 4 || osize == 8)))
        return NK_EARG;
    blk = (u64 *)calloc((size_t)S, sizeof(u64));
    e = (i64 *)malloc((size_t)(C * L) * sizeof(i64));
    f = (i64 *)malloc((size_t)L * sizeof(i64));
    asum = (u64 *)calloc((size_t)(2 * C), sizeof(u64));
    if (!blk || !e || !f || !asum) { free(blk); free(e); free(f); free(asum); return NK_ENOMEM; }
    pad = nb * L - T;
    for (b = 0; b < nb; b++) {
        i64 t0 = b == 0 ? 0 : b * L - pad, n = b == 0 ? L - pad : L;
        for (c = 0; c < C; c++) {
            load_u64(blk + p, x, t0 * C + c, C, n, code, lo + (u64)mu[c]);
            lpc_analysis(blk + p, e + c * L, n, Q + c * p, p, shift);
        }
        for (c = 0; c < C; c++) {
            const i64 *restrict ec = e + c * L, *wc = W + c * nx;
            const i64 *fc = f;
            i64 kmax = nx < c ? nx : c;
            u64 s0 = 0, s1 = 0;
            for (k = 0; k < kmax && !wc[k]; k++) {
            }
            if (k == kmax) {
                fc = ec;
            } else if (kmax == 3) {
                const u64 w0 = (u64)wc[0], w1 = (u64)wc[1], w2 = (u64)wc[2];
                const i64 *restrict e0 = ec - L, *restrict e1 = ec - 2 * L, *restrict e2 = ec - 3 * L;
                for (j = 0; j < n; j++)
                    f[j] = s64((u64)ec[j] - (u64)rshift(w0 * (u64)e0[j] + w1 * (u64)e1[j] + w2 * (u64)e2[j], shift));
            } else {
                for (j = 0; j < n; j++) {
                    u64 acc = 0;
                    for (k = 0; k < kmax; k++) acc += (u64)wc[k] * (u64)ec[j - (k + 1) * L];
                    f[j] = s64((u64)ec[j] - (u64)rshift(acc, shift));
                }
            }
            if (sums) {
                for (j = 0; j < n; j++) {
                    s0 += ec[j] < 0 ? (u64)0 - (u64)ec[j] : (u64)ec[j];
                    s1 += fc[j] < 0 ? (u64)0 - (u64)fc[j] : (u64)fc[j];
                }
                asum[2 * c] += s0;
                asum[2 * c + 1] += s1;
            }
            if (out) {
                for (j = 0; j < n; j++) {
                    vmin = fc[j] < vmin ? fc[j] : vmin;
                    vmax = fc[j] > vmax ? fc[j] : vmax;
                }
                store_u64(out, c * T + t0, 1, (const u64 *)(const void *)fc, n, osize, 0);
            }
        }
    }
    if (sums)
        for (c = 0; c < 2 * C; c++) sums[c] = s64(asum[c]);
    if (rng) { rng[0] = vmin; rng[1] = vmax; }
    free(blk); free(e); free(f); free(asum);
    return NK_OK;
}

/*
 * Inverse of the two steps above (decoder). r: C x T channel-major residuals (type code rcode);
 * B: C x nx inter-channel coefficients (B[c, j] multiplies channel c-1-j); out: T x C elements of
 * `osize` bytes, receiving the low bytes of x + mu[c] + lo.
 */
int nk_lpc_decode(const void *r, int rcode, i64 T, i64 C, const i64 *mu, u64 lo, const i64 *Q, i64 p,
                  const i64 *B, i64 nx, int shift, i64 nb, i64 L, void *out, int osize) {
    u64 *blk, *tmp;
    i64 b, c, j, k, pad, S = L + p;
    if (!valid_code(rcode) || !valid_size(osize) || C < 1 || p < 0 || p > 64 || nx < 0 || shift < 1 ||
        shift > 30 || !lpc_blocks_ok(T, nb, L) || C > INT64_MAX / (L + p) / 8)
        return NK_EARG;
    blk = (u64 *)calloc((size_t)(S * C), sizeof(u64));
    tmp = (u64 *)malloc((size_t)(L > C ? L : C) * sizeof(u64));
    if (!blk || !tmp) { free(blk); free(tmp); return NK_ENOMEM; }
    pad = nb * L - T;
    for (b = 0; b < nb; b++) {
        i64 t0 = b == 0 ? 0 : b * L - pad, n = b == 0 ? L - pad : L;
        for (c = 0; c < C; c++) load_u64(blk + c * S + p, r, c * T + t0, 1, n, rcode, 0);
        /* inter-channel: channel c from the reconstructed residuals of channels c-1..c-nx */
        for (c = 1; c < C; c++) {
            const i64 *bc = B + c * nx;
            i64 kmax = nx < c ? nx : c;
            u64 *restrict dc = blk + c * S + p;
            for (k = 0; k < kmax && !bc[k]; k++) {
            }
            if (k == kmax) continue; /* channel without inter-channel prediction */
            if (kmax == 3) {
                const u64 b0 = (u64)bc[0], b1 = (u64)bc[1], b2 = (u64)bc[2];
                const u64 *restrict s0 = dc - S, *restrict s1 = dc - 2 * S, *restrict s2 = dc - 3 * S;
                for (j = 0; j < n; j++) dc[j] += (u64)rshift(b0 * s0[j] + b1 * s1[j] + b2 * s2[j], shift);
            } else {
                for (j = 0; j < n; j++) {
                    u64 acc = 0;
                    for (k = 0; k < kmax; k++) acc += (u64)bc[k] * dc[j - (k + 1) * S];
                    dc[j] += (u64)rshift(acc, shift);
                }
            }
        }
        /* the recursive LPC synthesis filter, per channel */
        for (c = 0; c < C; c++) lpc_synthesis(blk + c * S + p, n, Q + c * p, p, shift);
        /* interleave into out */
        for (c = 0; c < C; c++) tmp[c] = (u64)mu[c] + lo;
        switch (osize) {
#define NK_INTERLEAVE(SIZE, OT)                                                                        \
        case SIZE: {                                                                                   \
            for (c = 0; c < C; c++) {                                                                  \
                OT *o = (OT *)out + t0 * C + c;                                                        \
                const u64 *xc = blk + c * S + p, add = tmp[c];                                         \
                for (j = 0; j < n; j++) o[j * C] = (OT)(xc[j] + add);                                  \
            }                                                                                          \
            break;                                                                                     \
        }
            NK_INTERLEAVE(1, uint8_t)
            NK_INTERLEAVE(2, uint16_t)
            NK_INTERLEAVE(4, uint32_t)
            NK_INTERLEAVE(8, uint64_t)
#undef NK_INTERLEAVE
        default: break;
        }
    }
    free(blk);
    free(tmp);
    return NK_OK;
}

/* ============================================================================================ imaging */
/*
 * Predictor of frame t from the previous decoded frames (d = x - lo - m, m the per-pixel mean):
 *     pred = floor((c0 S[t-1] + c1 S[t-2] + c2 d[t-1] + 2^(shift-1)) / 2^shift)
 * S = 3 x 3 box sum with zero padding; frames before 0 are zero.
 */

/* S = 3x3 box sum of d (H x W) with zero padding; h is H x W scratch. */
static void box3(const u64 *d, u64 *S, u64 *h, i64 H, i64 W) {
    i64 i, j;
    for (i = 0; i < H; i++) {
        const u64 *di = d + i * W;
        u64 *hi = h + i * W;
        if (W == 1) { hi[0] = di[0]; continue; }
        hi[0] = di[0] + di[1];
        for (j = 1; j < W - 1; j++) hi[j] = di[j - 1] + di[j] + di[j + 1];
        hi[W - 1] = di[W - 2] + di[W - 1];
    }
    for (i = 0; i < H; i++) {
        u64 *si = S + i * W;
        const u64 *hc = h + i * W;
        if (i > 0 && i < H - 1) {
            const u64 *hu = hc - W, *hd = hc + W;
            for (j = 0; j < W; j++) si[j] = hu[j] + hc[j] + hd[j];
        } else {
            for (j = 0; j < W; j++) {
                u64 v = hc[j];
                if (i > 0) v += hc[j - W];
                if (i < H - 1) v += hc[j + W];
                si[j] = v;
            }
        }
    }
}

typedef struct {
    i64 HW;
    u64 *d, *dprev, *S1, *S2, *h, *x;
    u64 *mem;
} img_state;

static int img_init(img_state *st, i64 H, i64 W) {
    i64 HW;
    if (H < 1 || W < 1 || H > INT64_MAX / W) return NK_EARG;
    HW = H * W;
    if ((u64)HW > (u64)SIZE_MAX / (6 * sizeof(u64))) return NK_ENOMEM;
    st->HW = HW;
    st->mem = (u64 *)calloc((size_t)(6 * HW), sizeof(u64));
    if (!st->mem) return NK_ENOMEM;
    st->d = st->mem;
    st->dprev = st->mem + HW;
    st->S1 = st->mem + 2 * HW;
    st->S2 = st->mem + 3 * HW;
    st->h = st->mem + 4 * HW;
    st->x = st->mem + 5 * HW;
    return NK_OK;
}

/*
 * Gram matrix of the predictor fit over frames ts[0..nt-1] (each >= 2):
 * features a = (box(d[t-1]), box(d[t-2]), d[t-1]), target y = d[t]; G[3x3] = sum a a^T, g[3] = sum a y.
 */
int nk_img_gram(const void *x, int code, i64 T, i64 H, i64 W, u64 lo, const i64 *m, const i64 *ts, i64 nt,
                double *G, double *g) {
    img_state st;
    u64 *B2;
    i64 k, q, HW;
    double acc[9] = {0}, accy[3] = {0};
    int rc;
    if (!valid_code(code) || T < 0 || nt < 0) return NK_EARG;
    for (k = 0; k < nt; k++)
        if (ts[k] < 2 || ts[k] >= T) return NK_EARG;
    if ((rc = img_init(&st, H, W)) != NK_OK) return rc;
    HW = st.HW;
    B2 = st.h; /* reuse: box of frame t-2 (box3 needs its own scratch, so use x as scratch) */
    for (k = 0; k < nt; k++) {
        i64 t = ts[k];
        /* d[t-2] -> S2 = box, d[t-1] -> dprev and S1 = box, d[t] -> d */
        load_u64(st.d, x, (t - 2) * HW, 1, HW, code, lo);
        for (q = 0; q < HW; q++) st.d[q] -= (u64)m[q];
        box3(st.d, B2, st.x, H, W);
        load_u64(st.dprev, x, (t - 1) * HW, 1, HW, code, lo);
        for (q = 0; q < HW; q++) st.dprev[q] -= (u64)m[q];
        box3(st.dprev, st.S1, st.x, H, W);
        load_u64(st.d, x, t * HW, 1, HW, code, lo);
        for (q = 0; q < HW; q++) st.d[q] -= (u64)m[q];
        for (q = 0; q < HW; q++) {
            double a0 = (double)s64(st.S1[q]), a1 = (double)s64(B2[q]), a2 = (double)s64(st.dprev[q]);
            double y = (double)s64(st.d[q]);
            acc[0] += a0 * a0; acc[1] += a0 * a1; acc[2] += a0 * a2;
            acc[4] += a1 * a1; acc[5] += a1 * a2; acc[8] += a2 * a2;
            accy[0] += a0 * y; accy[1] += a1 * y; accy[2] += a2 * y;
        }
    }
    acc[3] = acc[1]; acc[6] = acc[2]; acc[7] = acc[5];
    for (k = 0; k < 9; k++) G[k] = acc[k];
    for (k = 0; k < 3; k++) g[k] = accy[k];
    free(st.mem);
    return NK_OK;
}

/*
 * Residual layout: pixels are grouped by class (cls[q] in [0, ncls)); class k, with n_k pixels in raster
 * order, owns a T x n_k row-major block starting at element T * (n_0 + ... + n_{k-1}). class_layout gives
 * order (the pixels sorted by class, stable) and cnt[k] = n_k.
 */
static int class_layout(const i64 *cls, i64 HW, i64 ncls, int32_t *order, i64 *cnt) {
    i64 *cur, q, k, acc = 0;
    cur = (i64 *)malloc((size_t)ncls * sizeof(i64));
    if (!cur) return NK_ENOMEM;
    for (k = 0; k < ncls; k++) cnt[k] = 0;
    for (q = 0; q < HW; q++) {
        if (cls[q] < 0 || cls[q] >= ncls) { free(cur); return NK_EARG; }
        cnt[cls[q]]++;
    }
    for (k = 0; k < ncls; k++) {
        cur[k] = acc;
        acc += cnt[k];
    }
    for (q = 0; q < HW; q++) order[cur[cls[q]]++] = (int32_t)q;
    free(cur);
    return NK_OK;
}

/* element type conversions without implementation-defined casts */
static inline int32_t s32(uint32_t u) { return u <= (uint32_t)INT32_MAX ? (int32_t)u : -(int32_t)(~u) - 1; }

/*
 * The imaging predictor in a work type: WT/WU = int32_t/uint32_t when the encoder proved (params "w" == 4)
 * that no intermediate leaves int32, else int64_t/uint64_t. Arithmetic wraps in WU; on valid input it
 * never wraps, so both work types give the exact integer results.
 */
#define NK_IMG_CORE(SUF, WT, WU, TOS)                                                                  \
static void box3_##SUF(const WU *d, WU *S, WU *h, i64 H, i64 W) {                                     \
    i64 i, j;                                                                                          \
    for (i = 0; i < H; i++) {                                                                          \
        const WU *di = d + i * W;                                                                      \
        WU *hi = h + i * W;                                                                            \
        if (W == 1) { hi[0] = di[0]; continue; }                                                       \
        hi[0] = di[0] + di[1];                                                                         \
        for (j = 1; j < W - 1; j++) hi[j] = di[j - 1] + di[j] + di[j + 1];                             \
        hi[W - 1] = di[W - 2] + di[W - 1];                                                             \
    }                                                                                                  \
    for (i = 0; i < H; i++) {                                                                          \
        WU *si = S + i * W;                                                                            \
        const WU *hc = h + i * W;                                                                      \
        if (H == 1) { for (j = 0; j < W; j++) si[j] = hc[j]; }                                         \
        else if (i == 0) { for (j = 0; j < W; j++) si[j] = hc[j] + hc[j + W]; }                       \
        else if (i == H - 1) { for (j = 0; j < W; j++) si[j] = hc[j - W] + hc[j]; }                    \
        else { for (j = 0; j < W; j++) si[j] = hc[j - W] + hc[j] + hc[j + W]; }                        \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
static inline WT rsh_##SUF(WU acc, int s) {                                                            \
    WT v = TOS(acc + ((WU)1 << (s - 1)));                                                              \
    return v >= 0 ? (v >> s) : ~((~v) >> s);                                                           \
}                                                                                                      \
                                                                                                       \
static int img_residual_##SUF(const void *x, int code, i64 T, i64 H, i64 W, u64 lo, const i64 *m,      \
                              i64 c0, i64 c1, i64 c2, int shift, const i64 *cls, i64 ncls, void *out,  \
                              int osize, i64 *rng) {                                                   \
    i64 HW = H * W, t, q;                                                                              \
    WU *mem, *d, *dprev, *S1, *S2, *h, *mm, *tmp;                                                      \
    u64 *xin;                                                                                          \
    int32_t *order;                                                                                    \
    i64 *cnt;                                                                                          \
    WT vmin, vmax;                                                                                     \
    const WU u0 = (WU)c0, u1 = (WU)c1, u2 = (WU)c2;                                                    \
    int rc;                                                                                            \
    mem = (WU *)calloc((size_t)(7 * HW), sizeof(WU));                                                  \
    xin = (u64 *)malloc((size_t)HW * sizeof(u64));                                                     \
    order = (int32_t *)malloc((size_t)HW * sizeof(int32_t));                                           \
    cnt = (i64 *)malloc((size_t)ncls * sizeof(i64));                                                   \
    if (!mem || !xin || !order || !cnt) { rc = NK_ENOMEM; goto done; }                                 \
    if ((rc = class_layout(cls, HW, ncls, order, cnt)) != NK_OK) goto done;                            \
    d = mem; dprev = mem + HW; S1 = mem + 2 * HW; S2 = mem + 3 * HW; h = mem + 4 * HW;                 \
    mm = mem + 5 * HW; tmp = mem + 6 * HW;                                                             \
    for (q = 0; q < HW; q++) mm[q] = (WU)m[q];                                                         \
    vmin = 0; vmax = 0; /* the range reported always contains 0 (as every candidate type's does) */   \
    for (t = 0; t < T; t++) {                                                                          \
        load_u64(xin, x, t * HW, 1, HW, code, lo);                                                     \
        for (q = 0; q < HW; q++) {                                                                     \
            WU dq = (WU)xin[q] - mm[q];                                                                \
            WU acc = u2 * dprev[q] + u0 * S1[q] + u1 * S2[q];                                          \
            WT r = TOS(dq - (WU)rsh_##SUF(acc, shift));                                                \
            d[q] = dq;                                                                                 \
            tmp[q] = (WU)r;                                                                            \
            vmin = r < vmin ? r : vmin;                                                                \
            vmax = r > vmax ? r : vmax;                                                                \
        }                                                                                              \
        {                                                                                              \
            i64 k, a = 0, base = 0;                                                                    \
            for (k = 0; k < ncls; k++) {                                                               \
                const int32_t *ok = order + a;                                                         \
                i64 n = cnt[k], i, o0 = base + t * n;                                                  \
                switch (osize) {                                                                       \
                case 2: { uint16_t *o = (uint16_t *)out + o0;                                          \
                    for (i = 0; i < n; i++) { o[i] = (uint16_t)tmp[ok[i]]; } break; }                      \
                case 4: { uint32_t *o = (uint32_t *)out + o0;                                          \
                    for (i = 0; i < n; i++) { o[i] = (uint32_t)tmp[ok[i]]; } break; }                      \
                default: { uint64_t *o = (uint64_t *)out + o0;                                         \
                    for (i = 0; i < n; i++) { o[i] = (uint64_t)(i64)TOS(tmp[ok[i]]); } break; }            \
                }                                                                                      \
                a += n;                                                                                \
                base += T * n;                                                                         \
            }                                                                                          \
        }                                                                                              \
        box3_##SUF(d, S2, h, H, W); /* S2 becomes box(d[t]); rotate so that S1 = box(d[t]) */          \
        { WU *sw = S2; S2 = S1; S1 = sw; sw = dprev; dprev = d; d = sw; }                              \
    }                                                                                                  \
    rng[0] = T > 0 ? (i64)vmin : 0;                                                                    \
    rng[1] = T > 0 ? (i64)vmax : 0;                                                                    \
    rc = NK_OK;                                                                                        \
done:                                                                                                  \
    free(mem); free(xin); free(order); free(cnt);                                                      \
    return rc;                                                                                         \
}                                                                                                      \
                                                                                                       \
static int img_decode_##SUF(const void *const *parts, int rsize, i64 ncls, const i64 *cls, i64 T,      \
                            i64 H, i64 W, const i64 *m, u64 lo, i64 c0, i64 c1, i64 c2, int shift,     \
                            void *out, int osize) {                                                    \
    i64 HW = H * W, t, q;                                                                              \
    WU *mem, *d, *dprev, *S1, *S2, *h, *r;                                                             \
    u64 *mo;                                                                                           \
    int32_t *order;                                                                                    \
    i64 *cnt;                                                                                          \
    const WU u0 = (WU)c0, u1 = (WU)c1, u2 = (WU)c2;                                                    \
    int rc;                                                                                            \
    mem = (WU *)calloc((size_t)(6 * HW), sizeof(WU));                                                  \
    mo = (u64 *)malloc((size_t)HW * sizeof(u64));                                                      \
    order = (int32_t *)malloc((size_t)HW * sizeof(int32_t));                                           \
    cnt = (i64 *)malloc((size_t)ncls * sizeof(i64));                                                   \
    if (!mem || !mo || !order || !cnt) { rc = NK_ENOMEM; goto done; }                                  \
    if ((rc = class_layout(cls, HW, ncls, order, cnt)) != NK_OK) goto done;                            \
    d = mem; dprev = mem + HW; S1 = mem + 2 * HW; S2 = mem + 3 * HW; h = mem + 4 * HW; r = mem + 5 * HW; \
    for (q = 0; q < HW; q++) mo[q] = (u64)m[q] + lo;                                                   \
    for (t = 0; t < T; t++) {                                                                          \
        {                                                                                              \
            i64 k, a = 0;                                                                              \
            for (k = 0; k < ncls; k++) {                                                               \
                const int32_t *ok = order + a;                                                         \
                i64 n = cnt[k], i;                                                                     \
                switch (rsize) {                                                                       \
                case 2: { const int16_t *src = (const int16_t *)parts[k] + t * n;                      \
                    for (i = 0; i < n; i++) { r[ok[i]] = (WU)(i64)src[i]; } break; }                       \
                case 4: { const int32_t *src = (const int32_t *)parts[k] + t * n;                      \
                    for (i = 0; i < n; i++) { r[ok[i]] = (WU)(i64)src[i]; } break; }                       \
                default: { const int64_t *src = (const int64_t *)parts[k] + t * n;                     \
                    for (i = 0; i < n; i++) { r[ok[i]] = (WU)src[i]; } break; }                            \
                }                                                                                      \
                a += n;                                                                                \
            }                                                                                          \
        }                                                                                              \
        switch (osize) {                                                                               \
        NK_IMG_DEC_STORE(SUF, WU, TOS, 1, uint8_t)                                                     \
        NK_IMG_DEC_STORE(SUF, WU, TOS, 2, uint16_t)                                                    \
        NK_IMG_DEC_STORE(SUF, WU, TOS, 4, uint32_t)                                                    \
        NK_IMG_DEC_STORE(SUF, WU, TOS, 8, uint64_t)                                                    \
        default: break;                                                                                \
        }                                                                                              \
        if (t + 1 < T) {                                                                               \
            box3_##SUF(d, S2, h, H, W);                                                                \
            { WU *sw = S2; S2 = S1; S1 = sw; sw = dprev; dprev = d; d = sw; }                          \
        }                                                                                              \
    }                                                                                                  \
    rc = NK_OK;                                                                                        \
done:                                                                                                  \
    free(mem); free(mo); free(order); free(cnt);                                                       \
    return rc;                                                                                         \
}

/* d = r + prediction; out = low bytes of d + m + lo */
#define NK_IMG_DEC_STORE(SUF, WU, TOS, SIZE, OT)                                                       \
    case SIZE: {                                                                                       \
        OT *o = (OT *)out + t * HW;                                                                    \
        for (q = 0; q < HW; q++) {                                                                     \
            WU acc = u2 * dprev[q] + u0 * S1[q] + u1 * S2[q];                                          \
            WU dq = r[q] + (WU)rsh_##SUF(acc, shift);                                                  \
            d[q] = dq;                                                                                 \
            o[q] = (OT)((u64)(i64)TOS(dq) + mo[q]);                                                    \
        }                                                                                              \
        break;                                                                                         \
    }

#define NK_S32(u) s32((uint32_t)(u))
#define NK_S64(u) s64((u64)(u))
NK_IMG_CORE(w32, int32_t, uint32_t, NK_S32)
NK_IMG_CORE(w64, int64_t, uint64_t, NK_S64)

/*
 * Imaging residuals (encoder), grouped by pixel class (class_layout), each stored as its low `osize`
 * bytes (2, 4 or 8); rng[0..1] receive the exact range of all residuals. wide = 0: 32-bit work type.
 */
int nk_img_residual(const void *x, int code, i64 T, i64 H, i64 W, u64 lo, const i64 *m, i64 c0, i64 c1,
                    i64 c2, int shift, int wide, const i64 *cls, i64 ncls, void *out, int osize, i64 *rng) {
    if (!valid_code(code) || !(osize == 2 || osize == 4 || osize == 8) || T < 0 || ncls < 1 || shift < 1 ||
        shift > 30 || H < 1 || W < 1 || H > INT32_MAX / W)
        return NK_EARG;
    if (wide) return img_residual_w64(x, code, T, H, W, lo, m, c0, c1, c2, shift, cls, ncls, out, osize, rng);
    return img_residual_w32(x, code, T, H, W, lo, m, c0, c1, c2, shift, cls, ncls, out, osize, rng);
}

/*
 * Inverse (decoder). parts[k]: class k's T x n_k residuals, signed integers of rsize bytes; out: T x H x W
 * elements of osize bytes receiving the low bytes of d + m + lo.
 */
int nk_img_decode(const void *const *parts, int rsize, i64 ncls, const i64 *cls, i64 T, i64 H, i64 W,
                  const i64 *m, u64 lo, i64 c0, i64 c1, i64 c2, int shift, int wide, void *out, int osize) {
    if (!(rsize == 2 || rsize == 4 || rsize == 8) || !valid_size(osize) || T < 0 || ncls < 1 || shift < 1 ||
        shift > 30 || H < 1 || W < 1 || H > INT32_MAX / W)
        return NK_EARG;
    if (wide) return img_decode_w64(parts, rsize, ncls, cls, T, H, W, m, lo, c0, c1, c2, shift, out, osize);
    return img_decode_w32(parts, rsize, ncls, cls, T, H, W, m, lo, c0, c1, c2, shift, out, osize);
}

/* ============================================================================================ bounded */

/* q = floor((x - lo + E) / w) for x - lo + E in [0, 2^62), stored in osize bytes. */
int nk_quant_uniform(const void *x, int code, i64 n, u64 lo, i64 E, i64 w, void *out, int osize) {
    enum { BLK = 4096 };
    u64 buf[BLK];
    i64 s, k;
    u64 magic;
    int l = 0, sh;
    double inv;
    if (!valid_code(code) || !valid_size(osize) || n < 0 || E < 0 || w < 1 || w != 2 * E + 1) return NK_EARG;
    /* v < 2^31: floor(v / w) = (v * magic) >> (31 + l) with l = ceil(log2 w), magic = floor(2^(31+l) / w) + 1
       (Granlund & Montgomery 1994, thm 4.2: 2^(31+l) < magic * w <= 2^(31+l) + 2^l); magic <= 2^32, so the
       product stays below 2^63. Larger v: a double estimate, corrected to the exact quotient. */
    while (l < 62 && ((u64)1 << l) < (u64)w) l++;
    sh = 31 + l;
    magic = l <= 32 ? ((u64)1 << sh) / (u64)w + 1 : 0;
    inv = 1.0 / (double)w;
    for (s = 0; s < n; s += BLK) {
        i64 nn = n - s < BLK ? n - s : BLK;
        load_u64(buf, x, s, 1, nn, code, lo - (u64)E);
        for (k = 0; k < nn; k++) {
            u64 v = buf[k], qv;
            if (v < ((u64)1 << 31) && magic) {
                qv = (v * magic) >> sh;
            } else if (v < ((u64)1 << 52)) {
                /* exact after the correction (the estimate is off by at most one) */
                qv = (u64)((double)v * inv);
                if (qv * (u64)w > v) qv--;
                else if ((qv + 1) * (u64)w <= v) qv++;
            } else {
                qv = v / (u64)w;
            }
            buf[k] = qv;
        }
        store_u64(out, s, 1, buf, nn, osize, 0);
    }
    return NK_OK;
}

/* q = lut[x - lo] (x - lo in [0, nlut)), stored in osize bytes; *emax = max |centers[q] - x|. */
int nk_quant_lut(const void *x, int code, i64 n, u64 lo, const int32_t *lut, i64 nlut, const i64 *centers,
                 i64 ncent, void *out, int osize, i64 *emax) {
    enum { BLK = 4096 };
    u64 buf[BLK];
    i64 s, k;
    u64 worst = 0;
    if (!valid_code(code) || !valid_size(osize) || n < 0 || nlut < 1 || ncent < 1) return NK_EARG;
    for (s = 0; s < n; s += BLK) {
        i64 nn = n - s < BLK ? n - s : BLK;
        load_u64(buf, x, s, 1, nn, code, lo);
        for (k = 0; k < nn; k++) {
            u64 v = buf[k], err;
            int32_t b;
            i64 dv;
            if (v >= (u64)nlut) return NK_ERANGE;
            b = lut[v];
            if (b < 0 || b >= ncent) return NK_ERANGE;
            dv = s64((u64)centers[b] - lo - v);
            err = dv < 0 ? (u64)0 - (u64)dv : (u64)dv;
            if (err > worst) worst = err;
            buf[k] = (u64)(i64)b;
        }
        store_u64(out, s, 1, buf, nn, osize, 0);
    }
    *emax = s64(worst);
    return NK_OK;
}

/* out = low bytes of min(q * w, span) + lo (q: type code). */
int nk_dequant_uniform(const void *q, int code, i64 n, i64 w, i64 span, u64 lo, void *out, int osize) {
    enum { BLK = 4096 };
    u64 buf[BLK];
    i64 s, k;
    if (!valid_code(code) || !valid_size(osize) || n < 0 || w < 1 || span < 0) return NK_EARG;
    for (s = 0; s < n; s += BLK) {
        i64 nn = n - s < BLK ? n - s : BLK;
        load_u64(buf, q, s, 1, nn, code, 0);
        for (k = 0; k < nn; k++) {
            i64 v = s64(buf[k] * (u64)w);
            buf[k] = (u64)(v < span ? v : span);
        }
        store_u64(out, s, 1, buf, nn, osize, lo);
    }
    return NK_OK;
}

/* out = low bytes of centers[q]; NK_ERANGE if some q is outside [0, ncent). */
int nk_dequant_lut(const void *q, int code, i64 n, const i64 *centers, i64 ncent, void *out, int osize) {
    enum { BLK = 4096 };
    u64 buf[BLK];
    i64 s, k;
    if (!valid_code(code) || !valid_size(osize) || n < 0 || ncent < 0) return NK_EARG;
    for (s = 0; s < n; s += BLK) {
        i64 nn = n - s < BLK ? n - s : BLK;
        load_u64(buf, q, s, 1, nn, code, 0);
        for (k = 0; k < nn; k++) {
            if (buf[k] >= (u64)ncent) return NK_ERANGE;
            buf[k] = (u64)centers[buf[k]];
        }
        store_u64(out, s, 1, buf, nn, osize, 0);
    }
    return NK_OK;
}

/*
 * Per-column moments for the noise model (x: T x K, type code): sums[k] = sum_t x[t, k] and
 * dsq[k] = sum_{t>0} (x[t, k] - x[t-1, k])^2, both modulo 2^64 (the caller checks they cannot wrap).
 */
int nk_moments(const void *x, int code, i64 T, i64 K, u64 *sums, u64 *dsq) {
    u64 *prev, *cur, *tmp;
    i64 t, k;
    if (!valid_code(code) || T < 0 || K < 1 || T > INT64_MAX / K) return NK_EARG;
    prev = (u64 *)malloc((size_t)K * sizeof(u64));
    cur = (u64 *)malloc((size_t)K * sizeof(u64));
    if (!prev || !cur) { free(prev); free(cur); return NK_ENOMEM; }
    for (k = 0; k < K; k++) sums[k] = dsq[k] = 0;
    for (t = 0; t < T; t++) {
        load_u64(cur, x, t * K, 1, K, code, 0);
        for (k = 0; k < K; k++) sums[k] += cur[k];
        if (t > 0) {
            for (k = 0; k < K; k++) {
                u64 d = cur[k] - prev[k];
                dsq[k] += d * d;
            }
        }
        tmp = prev; prev = cur; cur = tmp;
    }
    free(prev);
    free(cur);
    return NK_OK;
}

/* ABI version, checked by the wrapper */
/* ====================================================================================== closed loop */
/*
 * Closed-loop (SZ-style) error-bounded coding: each sample is predicted from already RECONSTRUCTED
 * samples, the residual d = x - p is quantized with step w = 2E + 1 (q = sign(d) floor((|d| + E) / w), so
 * |d - q w| <= E), and the reconstruction p + q w is clipped to [0, R] (values are offset by lo; the
 * original lies in [0, R], so clipping can only reduce the error). Encoder and decoder run the same
 * function (dec = 0: read x, write q; dec = 1: read q, write out), so their predictions are identical.
 * Integer arithmetic only; the caller guarantees R < 2^32 and E <= R, so every intermediate stays far
 * inside int64. The decoder rejects |q| > qmax = (R + E) / w (no valid encoder emits one) with NK_ERANGE.
 */
static inline i64 cl_clamp(i64 v, i64 R) { return v < 0 ? 0 : v > R ? R : v; }

static inline i64 cl_quant(i64 d, i64 E, i64 w) { return d >= 0 ? (d + E) / w : -((-d + E) / w); }

static inline i64 cl_getq(const void *q, int qsize, i64 k) {
    switch (qsize) {
    case 2: return ((const int16_t *)q)[k];
    case 4: return ((const int32_t *)q)[k];
    default: return ((const int64_t *)q)[k];
    }
}

static inline void cl_putq(void *q, int qsize, i64 k, i64 v) {
    switch (qsize) {
    case 2: ((int16_t *)q)[k] = (int16_t)v; break;
    case 4: ((int32_t *)q)[k] = (int32_t)v; break;
    default: ((int64_t *)q)[k] = v; break;
    }
}

/* One closed-loop step shared by every predictor: encode quantizes x - p into q[k], decode reads q[k]
 * back (refusing indices beyond qmax); both return the clamped reconstruction in *rv. Returns -1 when
 * the sample or index is out of range. */
static inline int cl_step(int dec, u64 x, i64 p, i64 E, i64 w, i64 R, i64 qmax, void *q, int qsize, i64 k,
                          i64 *rv) {
    i64 qq;
    if (!dec) {
        i64 xv = s64(x);
        if (xv < 0 || xv > R) return -1;
        qq = cl_quant(xv - p, E, w);
        cl_putq(q, qsize, k, qq);
    } else {
        qq = cl_getq(q, qsize, k);
        if (qq < -qmax || qq > qmax) return -1;
    }
    *rv = cl_clamp(p + qq * w, R);
    return 0;
}

/* Lorenzo predictor over the axes in mask (4 = t, 2 = h, 1 = w) restricted to the available ones;
   cur / prv: current / previous reconstructed frame (offset values), k = i W + j. */
static inline i64 cl_lor(int mask, const i64 *cur, const i64 *prv, i64 k, i64 W, i64 f0) {
    switch (mask) {
    case 1: return cur[k - 1];
    case 2: return cur[k - W];
    case 3: return cur[k - W] + cur[k - 1] - cur[k - W - 1];
    case 4: return prv[k];
    case 5: return prv[k] + cur[k - 1] - prv[k - 1];
    case 6: return prv[k] + cur[k - W] - prv[k - W];
    case 7: return prv[k] + cur[k - W] + cur[k - 1] - prv[k - W] - prv[k - 1] - cur[k - W - 1] + prv[k - W - 1];
    default: return f0;
    }
}

/*
 * Imaging / generic layout (T, H, W), C order. Prediction
 *   p = clamp(floor((c[0] L{t} + c[1] L{h,w} + c[2] L{t,h,w} + c[3] L{w} + 2^(s-1)) / 2^s), 0, R)
 * where L{S} is the Lorenzo predictor over the axes S that have a previous sample (axes at their first
 * index are dropped; with none left, the previous sample in raster order, or R / 2 for the very first).
 * The c[] are integers with |c| <= 2^16, s in [1, 16].
 */
int nk_cl_lorenzo(const void *x, int code, i64 T, i64 H, i64 W, u64 lo, i64 R, i64 E, const i64 *c, int s,
                  void *q, int qsize, int dec, void *out, int osize) {
    i64 HW, w, qmax, t, i, j, n;
    i64 *buf;
    u64 *frame;
    int ci;
    if (!valid_size(qsize) || qsize == 1 || T < 0 || H < 1 || W < 1 || R < 0 || R >= ((i64)1 << 32) || E < 0
        || E > R + 1 || s < 1 || s > 16)
        return NK_EARG;
    if (dec ? !valid_size(osize) : !valid_code(code)) return NK_EARG;
    for (ci = 0; ci < 4; ci++)
        if (c[ci] < -((i64)1 << 16) || c[ci] > ((i64)1 << 16)) return NK_EARG;
    if (T == 0) return NK_OK;
    if (H > ((i64)1 << 40) / W) return NK_EARG;
    HW = H * W;
    w = 2 * E + 1;
    qmax = (R + E) / w;
    buf = (i64 *)malloc(sizeof(i64) * 2 * (size_t)HW);
    frame = (u64 *)malloc(sizeof(u64) * (size_t)HW);
    if (!buf || !frame) {
        free(buf);
        free(frame);
        return NK_ENOMEM;
    }
    n = 0;
    for (t = 0; t < T; t++) {
        i64 *cur = buf + (t & 1) * HW, *prv = buf + ((t & 1) ^ 1) * HW;
        int ht = t > 0;
        if (!dec) load_u64(frame, x, t * HW, 1, HW, code, lo);
        for (i = 0; i < H; i++) {
            int hh = i > 0;
            for (j = 0; j < W; j++, n++) {
                i64 k = i * W + j, f0, acc, p, rv;
                int hw = j > 0;
                f0 = hw ? cur[k - 1] : hh ? cur[k - W] : ht ? prv[k] : R / 2;
                acc = 0;
                if (c[0]) acc += c[0] * cl_lor(ht ? 4 : 0, cur, prv, k, W, f0);
                if (c[1]) acc += c[1] * cl_lor((hh ? 2 : 0) | (hw ? 1 : 0), cur, prv, k, W, f0);
                if (c[2]) acc += c[2] * cl_lor((ht ? 4 : 0) | (hh ? 2 : 0) | (hw ? 1 : 0), cur, prv, k, W, f0);
                if (c[3]) acc += c[3] * cl_lor(hw ? 1 : 0, cur, prv, k, W, f0);
                p = cl_clamp(rshift((u64)acc, s), R);
                if (cl_step(dec, frame[k], p, E, w, R, qmax, q, qsize, n, &rv)) goto range;
                cur[k] = rv;
            }
        }
        if (dec) {
            for (i = 0; i < HW; i++) frame[i] = (u64)buf[(t & 1) * HW + i];
            store_u64(out, t * HW, 1, frame, HW, osize, lo);
        }
    }
    free(buf);
    free(frame);
    return NK_OK;
range:
    free(buf);
    free(frame);
    return NK_ERANGE;
}

/*
 * Time series layout (T, C), C order: per-channel linear prediction from the channel's reconstructed
 * history, centred on mu[c] (history before t = 0 is mu[c]), plus an inter-channel term from the
 * quantized residual (reconstruction minus prediction) of the preceding channel at the same t:
 *   p = clamp(mu[c] + floor((sum_i Q[c, i] (r[t-1-i, c] - mu[c]) + B[c] (r[t, c-1] - p[t, c-1])
 *             + 2^(s-1)) / 2^s), 0, R)
 * with |Q|, |B| < 2^16, p <= 32, s in [1, 16], mu in [0, R].
 */
int nk_cl_lpc(const void *x, int code, i64 T, i64 C, u64 lo, i64 R, i64 E, const i64 *mu, const i64 *Q, i64 p,
              const i64 *B, int s, void *q, int qsize, int dec, void *out, int osize) {
    i64 w, qmax, t, ch, i, n;
    i64 *rec, *prow;
    u64 *row;
    if (!valid_size(qsize) || qsize == 1 || T < 0 || C < 1 || C > ((i64)1 << 24) || R < 0
        || R >= ((i64)1 << 32) || E < 0 || E > R + 1 || s < 1 || s > 16 || p < 0 || p > 32)
        return NK_EARG;
    if (dec ? !valid_size(osize) : !valid_code(code)) return NK_EARG;
    for (ch = 0; ch < C; ch++) {
        if (mu[ch] < 0 || mu[ch] > R || B[ch] <= -((i64)1 << 16) || B[ch] >= ((i64)1 << 16)) return NK_EARG;
        for (i = 0; i < p; i++)
            if (Q[ch * p + i] <= -((i64)1 << 16) || Q[ch * p + i] >= ((i64)1 << 16)) return NK_EARG;
    }
    if (T == 0) return NK_OK;
    w = 2 * E + 1;
    qmax = (R + E) / w;
    /* all reconstructed rows, after p rows of history (= mu) */
    if (T > ((i64)1 << 40) / C) return NK_EARG;
    rec = (i64 *)malloc(sizeof(i64) * (size_t)C * (size_t)(T + p));
    prow = (i64 *)malloc(sizeof(i64) * (size_t)C);
    row = (u64 *)malloc(sizeof(u64) * (size_t)C);
    if (!rec || !prow || !row) {
        free(rec);
        free(prow);
        free(row);
        return NK_ENOMEM;
    }
    for (i = 0; i < p; i++)
        for (ch = 0; ch < C; ch++) rec[i * C + ch] = mu[ch];
    n = 0;
    for (t = 0; t < T; t++) {
        i64 *cur = rec + (t + p) * C;
        if (!dec) load_u64(row, x, t * C, 1, C, code, lo);
        for (ch = 0; ch < C; ch++, n++) {
            i64 acc = 0, pr, rv;
            const i64 *qc = Q + ch * p;
            const i64 *h = cur - C + ch;
            for (i = 0; i < p; i++) acc += qc[i] * (h[-i * C] - mu[ch]);
            if (ch > 0 && B[ch]) acc += B[ch] * (cur[ch - 1] - prow[ch - 1]);
            pr = cl_clamp(mu[ch] + rshift((u64)acc, s), R);
            prow[ch] = pr;
            if (cl_step(dec, row[ch], pr, E, w, R, qmax, q, qsize, n, &rv)) goto range;
            cur[ch] = rv;
        }
        if (dec) {
            for (ch = 0; ch < C; ch++) row[ch] = (u64)cur[ch];
            store_u64(out, t * C, 1, row, C, osize, lo);
        }
    }
    free(rec);
    free(prow);
    free(row);
    return NK_OK;
range:
    free(rec);
    free(prow);
    free(row);
    return NK_ERANGE;
}

int nk_version(void) { return 9; }

/* The learned mode's float passes are memory-bound loops the compiler vectorises; on x86-64 Linux with GCC
   they are also built for AVX2 and the loader picks the clone the CPU runs (ifunc). Both clones do the same
   IEEE float32 operations in the same order (no FMA: -ffp-contract=off), so the results are the same bits;
   AVX2 only widens the vectors (64x512x512 finishing pass: 24 -> 14 ms on one core). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NK_SIMD __attribute__((target_clones("avx2", "default")))
#else
#define NK_SIMD
#endif

/* ---------------------------------------------------------------------------------------------------
 * Learned mode: the decoder's tail for one tile. The ONNX decoder (tables "decoder_output": "packed")
 * ends with a 1x1 conv whose 32 channels are (2 frames x 4 rows x 4 columns) per low-resolution voxel:
 * p has shape (t2, 32, h4, w4) and channel c = tsub*16 + i*4 + j holds frame 2*t + tsub, row 4*h + i,
 * column 4*w + j of a tile whose first voxel sits at (t0, y0, x0) of the chunk. This function adds the
 * baseline image (row stride bs, chunk coordinates), inverts the variance-stabilising transform
 * y = a*max(v, 0)^2 + b (a = gain/4, b = offset - 3/8 gain, computed by the caller in float32) and stores
 * y rounded half-to-even and clipped to the integer type (code as above), or as float32 (code 36) /
 * float64 (code 40), for the voxels of the tile inside the window [wt, wt+T) x [wy, wy+H) x [wx, wx+W)
 * of the chunk (which crops the padding and lets a reader decode a box of a chunk straight into its
 * own array): voxel (f, y, x) goes to out[(f-wt)*ost + (y-wy)*osy + (x-wx)] (strides in elements).
 * Float32 arithmetic in the same order as the numpy reference (learned.py), no FP contraction.
 * blk: the layout of p. 1: planar (t2, 32, h4, w4); 4, 8 or 16: ONNX Runtime's blocked NCHWc layout
 * (t2, 32/blk, h4, w4, blk), channel c at [c / blk][h][w][c % blk] (models/trunk.py: the decoder's tail
 * graph then ends without its reorder to planar; same values, only their places in memory differ).
 * ------------------------------------------------------------------------------------------------- */
/* one output row of n voxels from the interleaved row v[0..n) (packed values + baseline, in place) */
#define NK_LF_ROW(NAME, T, STORE)                                                                        \
    static void NAME(float *restrict v, i64 n, float a, float b, float lo, float hi, T *restrict orow) {   \
        for (i64 k = 0; k < n; k++) {                                                                    \
            float u = v[k];                                                                              \
            u = u > 0.f ? u : 0.f; /* max(v, 0); NaN -> 0 */                                             \
            u = u * u;                                                                                   \
            u = u * a;                                                                                   \
            u = u + b;                                                                                   \
            STORE;                                                                                       \
        }                                                                                                \
        (void)lo; (void)hi;                                                                              \
    }
/* integers: clip, then round half to even with the 1.5 * 2^23 trick (exact for |v| < 2^22 under the
   default round-to-nearest-even mode, which nothing here changes; no libm, and the build forbids
   reassociation and contraction); the rounded value fits the type exactly */
#define NK_LF_INT(T) { u = u >= lo ? u : lo; u = u <= hi ? u : hi; u = (u + 12582912.f) - 12582912.f;         \
                       orow[k] = (T)(int32_t)u; }
NK_LF_ROW(lf_row_i8, int8_t, NK_LF_INT(int8_t))
NK_LF_ROW(lf_row_u8, uint8_t, NK_LF_INT(uint8_t))
NK_LF_ROW(lf_row_i16, int16_t, NK_LF_INT(int16_t))
NK_LF_ROW(lf_row_u16, uint16_t, NK_LF_INT(uint16_t))
NK_LF_ROW(lf_row_f32, float, orow[k] = u)
NK_LF_ROW(lf_row_f64, double, orow[k] = (double)u)

NK_SIMD static int lf_one(const float *p, i64 t2, i64 h4, i64 w4, i64 t0, i64 y0, i64 x0, const float *bq, i64 bs,
                  i64 wt, i64 wy, i64 wx, i64 T, i64 H, i64 W, float a, float b, int code, void *out, i64 ost,
                  i64 osy, i64 blk) {
    if (blk != 1 && blk != 4 && blk != 8 && blk != 16) return NK_EARG;
    if (!p || !bq || !out || t2 < 1 || h4 < 1 || w4 < 1 || t0 < 0 || y0 < 0 || x0 < 0 || wt < 0 || wy < 0 ||
        wx < 0 || T < 1 || H < 1 || W < 1 || bs < wx + W || (H > 1 && osy < W) || (T > 1 && ost < (H - 1) * osy + W))
        return NK_EARG;
    float lo = 0.f, hi = 0.f;
    i64 size = 0;
    switch (code) {
    case 1: lo = -128.f; hi = 127.f; size = 1; break;
    case 17: lo = 0.f; hi = 255.f; size = 1; break;
    case 2: lo = -32768.f; hi = 32767.f; size = 2; break;
    case 18: lo = 0.f; hi = 65535.f; size = 2; break;
    case 36: size = 4; break;
    case 40: size = 8; break;
    default: return NK_EARG; /* wider integers take the numpy path (float32 cannot hold their range) */
    }
    /* the tile's columns inside the window: x in [xa, xb) */
    const i64 xa = x0 > wx ? x0 : wx;
    const i64 xb = x0 + 4 * w4 < wx + W ? x0 + 4 * w4 : wx + W;
    if (xb <= xa) return NK_OK;
    const i64 n = xb - xa, k0 = xa - x0; /* k0: first column of the tile row that is kept */
    float *v = (float *)malloc((size_t)n * sizeof(float));
    if (!v) return NK_ENOMEM;
    const i64 hw4 = h4 * w4;
    /* value (w, j) of a row's 4 column planes sits at pl[w * ws + j * js] (a group of 4 channels never
       straddles two blocks: 4 divides blk) */
    const i64 ws = blk == 1 ? 1 : blk, js = blk == 1 ? hw4 : 1;
    for (i64 t = 0; t < t2; t++) {
        for (i64 ts = 0; ts < 2; ts++) {
            const i64 f = t0 + 2 * t + ts;
            if (f < wt || f >= wt + T) continue;
            for (i64 h = 0; h < h4; h++) {
                for (i64 i = 0; i < 4; i++) {
                    const i64 y = y0 + 4 * h + i;
                    if (y < wy || y >= wy + H) continue;
                    const i64 c = ts * 16 + i * 4; /* first of the row's 4 channels */
                    const float *pl = p + ((t * (32 / blk) + c / blk) * hw4 + h * w4) * blk + c % blk;
                    const float *brow = bq + y * bs + xa;
                    /* interleave the 4 column planes (k = 4*w + j), then add the baseline */
                    if (k0 == 0 && n == 4 * w4 && blk == 1) { /* whole planar row: a 4 x w4 transpose */
                        const float *q0 = pl, *q1 = pl + hw4, *q2 = pl + 2 * hw4, *q3 = pl + 3 * hw4;
                        for (i64 w = 0; w < w4; w++) {
                            v[4 * w] = q0[w];
                            v[4 * w + 1] = q1[w];
                            v[4 * w + 2] = q2[w];
                            v[4 * w + 3] = q3[w];
                        }
                    } else if (k0 == 0 && n == 4 * w4) { /* whole blocked row: 4 adjacent values per w */
                        for (i64 w = 0; w < w4; w++)
                            for (i64 j = 0; j < 4; j++) v[4 * w + j] = pl[w * ws + j];
                    } else {
                        for (i64 k = 0; k < n; k++) {
                            const i64 kk = k0 + k;
                            v[k] = pl[(kk >> 2) * ws + (kk & 3) * js];
                        }
                    }
                    for (i64 k = 0; k < n; k++) v[k] = v[k] + brow[k];
                    char *orow = (char *)out + ((f - wt) * ost + (y - wy) * osy + (xa - wx)) * size;
                    switch (code) {
                    case 1: lf_row_i8(v, n, a, b, lo, hi, (int8_t *)orow); break;
                    case 17: lf_row_u8(v, n, a, b, lo, hi, (uint8_t *)orow); break;
                    case 2: lf_row_i16(v, n, a, b, lo, hi, (int16_t *)orow); break;
                    case 18: lf_row_u16(v, n, a, b, lo, hi, (uint16_t *)orow); break;
                    case 36: lf_row_f32(v, n, a, b, lo, hi, (float *)orow); break;
                    default: lf_row_f64(v, n, a, b, lo, hi, (double *)orow); break;
                    }
                }
            }
        }
    }
    free(v);
    return NK_OK;
}

#define NK_LF_MAX_THREADS 64

/* Run jobs[0..n) (each `size` bytes, handed to `run`): job 0 in the calling thread, the others in threads of
   their own; a job whose thread cannot be started runs in the caller too. Jobs write disjoint outputs, so
   the result is the same bytes whatever n is. */
static void run_jobs(void *(*run)(void *), void *jobs, size_t size, i64 n) {
    pthread_t tid[NK_LF_MAX_THREADS];
    int started[NK_LF_MAX_THREADS];
    char *j = (char *)jobs;
    for (i64 k = 1; k < n; k++) started[k] = pthread_create(&tid[k], NULL, run, j + k * size) == 0;
    run(j);
    for (i64 k = 1; k < n; k++) {
        if (started[k]) pthread_join(tid[k], NULL);
        else run(j + k * size);
    }
}

/* nk_learned_finish split over threads: frame pairs [lo, hi) of p per thread (each thread writes its own
   frames, so the output is the same bytes whatever the thread count); nthreads <= 1 runs in the caller */
typedef struct {
    const float *p, *bq;
    i64 t2, h4, w4, t0, y0, x0, bs, wt, wy, wx, T, H, W, ost, osy, blk;
    float a, b;
    int code, rc;
    void *out;
} lf_job;

static void *lf_run(void *arg) {
    lf_job *j = (lf_job *)arg;
    j->rc = lf_one(j->p, j->t2, j->h4, j->w4, j->t0, j->y0, j->x0, j->bq, j->bs, j->wt, j->wy, j->wx, j->T, j->H,
                   j->W, j->a, j->b, j->code, j->out, j->ost, j->osy, j->blk);
    return NULL;
}


int nk_learned_finish(const float *p, i64 t2, i64 h4, i64 w4, i64 t0, i64 y0, i64 x0, const float *bq, i64 bs,
                      i64 wt, i64 wy, i64 wx, i64 T, i64 H, i64 W, float a, float b, int code, void *out, i64 ost,
                      i64 osy, i64 blk, int nthreads) {
    i64 n = nthreads < 1 ? 1 : nthreads;
    if (n > NK_LF_MAX_THREADS) n = NK_LF_MAX_THREADS;
    if (n > t2) n = t2;
    if (n <= 1 || !p || h4 < 1 || w4 < 1)
        return lf_one(p, t2, h4, w4, t0, y0, x0, bq, bs, wt, wy, wx, T, H, W, a, b, code, out, ost, osy, blk);
    lf_job jobs[NK_LF_MAX_THREADS];
    for (i64 k = 0; k < n; k++) {
        const i64 lo = t2 * k / n, hi = t2 * (k + 1) / n;
        lf_job j = {p + lo * 32 * h4 * w4, bq, hi - lo, h4, w4, t0 + 2 * lo, y0, x0, bs, wt, wy, wx, T, H, W, ost,
                    osy, blk, a, b, code, NK_OK, out};
        jobs[k] = j;
    }
    run_jobs(lf_run, jobs, sizeof jobs[0], n);
    int rc = NK_OK;
    for (i64 k = 0; k < n && rc == NK_OK; k++) rc = jobs[k].rc;
    return rc;
}

/* ---------------------------------------------------------------------------------------------------
 * Learned mode: the elementwise trunk of a split decoder's main graph (models/trunk.py), fused into one
 * pass. The ONNX graph computes, per tile i, frame pair f, channel c and low-resolution pixel k,
 *     v = ((u + ctx) + s0) + ctx * s1,   out = v >= 0 ? v : alpha * v   (LeakyRelu)
 * as five separate float32 operators (Add, Add, Mul, Add, LeakyRelu), each a full pass over memory; here
 * they are one pass with the same operations in the same order, each rounded to float32 (no contraction:
 * the build passes -ffp-contract=off), so the result is the same bits. u and ctx are (n, t2, C, hw),
 * s = (n, 2C, hw) holds s0 (channels 0..C-1) then s1; the result overwrites u.
 * The operation is elementwise and s is indexed by channel and pixel only, so ONNX Runtime's blocked
 * NCHWc layout (channel blocks of B: (C/B, hw, B) per frame pair) is the same pass with C/B channels of
 * hw*B values, when u, ctx and s are all blocked.
 * ------------------------------------------------------------------------------------------------- */
NK_SIMD static void lt_span(float *restrict u, const float *restrict ctx, const float *restrict s, i64 C, i64 hw,
                            i64 f0, i64 f1, float alpha) {
    for (i64 f = f0; f < f1; f++) {
        for (i64 c = 0; c < C; c++) {
            float *restrict uu = u + (f * C + c) * hw;
            const float *restrict cc = ctx + (f * C + c) * hw;
            const float *restrict s0 = s + c * hw, *restrict s1 = s + (C + c) * hw;
            for (i64 k = 0; k < hw; k++) {
                float v = uu[k] + cc[k];
                v = v + s0[k];
                const float m = cc[k] * s1[k];
                v = v + m;
                uu[k] = v >= 0.f ? v : alpha * v;
            }
        }
    }
}

typedef struct {
    float *u;
    const float *ctx, *s;
    i64 C, hw, f0, f1;
    float alpha;
} lt_job;

static void *lt_run(void *arg) {
    lt_job *j = (lt_job *)arg;
    lt_span(j->u, j->ctx, j->s, j->C, j->hw, j->f0, j->f1, j->alpha);
    return NULL;
}

int nk_learned_trunk(float *u, const float *ctx, const float *s, i64 n, i64 t2, i64 C, i64 hw, float alpha,
                     int nthreads) {
    if (!u || !ctx || !s || n < 1 || t2 < 1 || C < 1 || hw < 1) return NK_EARG;
    for (i64 i = 0; i < n; i++) {
        float *ui = u + i * t2 * C * hw;
        const float *ci = ctx + i * t2 * C * hw, *si = s + i * 2 * C * hw;
        i64 nt = nthreads < 1 ? 1 : nthreads;
        if (nt > NK_LF_MAX_THREADS) nt = NK_LF_MAX_THREADS;
        if (nt > t2) nt = t2;
        lt_job jobs[NK_LF_MAX_THREADS];
        for (i64 k = 0; k < nt; k++) {
            lt_job j = {ui, ci, si, C, hw, t2 * k / nt, t2 * (k + 1) / nt, alpha};
            jobs[k] = j;
        }
        run_jobs(lt_run, jobs, sizeof jobs[0], nt);
    }
    return NK_OK;
}

/* ---------------------------------------------------------------------------------------------------
 * The same trunk where ONNX Runtime's block B does not divide C (AVX-512's 16 against 24 channels): the
 * head's convolution gives u for r frame pairs at once, (n, t8, r*C/B, hw, B) (channel fp*C + c of frame
 * pair fp), while the tail reads each frame pair's C channels padded to Cp = ceil(C/B)*B, (n, t2, Cp/B,
 * hw, B) with t2 = t8*r, and its padding lanes zero (what ONNX Runtime's ReorderInput writes). So the
 * pass also moves the values: it reads u and s (n, 2C/B, hw, B) in the head's blocks, ctx in the tail's
 * (its padding lanes unread), and writes `out` in the tail's, the same operations in the same order as
 * above, so the same bits. Within a block of `out`, lanes run in at most a few stretches that are
 * contiguous in u and s at once (a stretch ends where a source block does): each is a short contiguous
 * loop over pixels the compiler vectorises.
 * ------------------------------------------------------------------------------------------------- */
#define NK_LTR_MAX_BLOCK 64

/* one stretch of `len` lanes at one pixel: the trunk's float32 operations in the ONNX graph's order */
#define NK_LTR_LANES(len)                                                                                \
    for (i64 l = 0; l < (len); l++) {                                                                    \
        const float cv = c0[l];                                                                          \
        float v = u0[l] + cv;                                                                            \
        v = v + z0[l];                                                                                   \
        const float m = cv * z1[l];                                                                      \
        v = v + m;                                                                                       \
        o0[l] = v >= 0.f ? v : alpha * v;                                                                \
    }

NK_SIMD static void ltr_span(const float *restrict u, const float *restrict ctx, const float *restrict s,
                             float *restrict out, i64 r, i64 C, i64 hw, i64 B, i64 f0, i64 f1, float alpha) {
    const i64 ub = r * C / B, nb = (C + B - 1) / B;
    for (i64 F = f0; F < f1; F++) {
        const i64 g = F / r, fp = F % r;
        for (i64 ob = 0; ob < nb; ob++) {
            const i64 live = C - ob * B < B ? C - ob * B : B;
            /* the lanes 0..live-1 of this block in stretches contiguous in u's block and in s1's (s0's lane
               is c % B = l itself): at most three, as a source block ends at most once in each */
            i64 sl0[NK_LTR_MAX_BLOCK], slen[NK_LTR_MAX_BLOCK], suo[NK_LTR_MAX_BLOCK], s1o[NK_LTR_MAX_BLOCK], ns = 0;
            for (i64 l0 = 0; l0 < live;) {
                const i64 j = fp * C + ob * B + l0, c1 = C + ob * B + l0;
                i64 l1 = live;
                if (l1 - l0 > B - j % B) l1 = l0 + B - j % B;
                if (l1 - l0 > B - c1 % B) l1 = l0 + B - c1 % B;
                sl0[ns] = l0;
                slen[ns] = l1 - l0;
                suo[ns] = (g * ub + j / B) * hw * B + j % B;
                s1o[ns] = (c1 / B) * hw * B + c1 % B;
                ns++;
                l0 = l1;
            }
            const float *restrict cc = ctx + (F * nb + ob) * hw * B;
            const float *restrict sb = s + ob * hw * B;
            float *restrict oo = out + (F * nb + ob) * hw * B;
            for (i64 q = 0; q < ns; q++) {  /* a stretch over all pixels: a loop of whole vectors for 8, 16 */
                const float *restrict uq = u + suo[q], *restrict cq = cc + sl0[q];
                const float *restrict zq = sb + sl0[q], *restrict z1q = s + s1o[q];
                float *restrict oq = oo + sl0[q];
                const i64 len = slen[q];
#define NK_LTR_PIXELS(len)                                                                               \
    for (i64 k = 0; k < hw; k++) {                                                                       \
        const i64 kb = k * B;                                                                            \
        const float *restrict u0 = uq + kb, *restrict c0 = cq + kb, *restrict z0 = zq + kb;              \
        const float *restrict z1 = z1q + kb;                                                             \
        float *restrict o0 = oq + kb;                                                                    \
        NK_LTR_LANES(len)                                                                                \
    }
                if (len == 8) {
                    NK_LTR_PIXELS(8)
                } else if (len == 16) {
                    NK_LTR_PIXELS(16)
                } else {
                    NK_LTR_PIXELS(len)
                }
#undef NK_LTR_PIXELS
            }
            if (live < B)
                for (i64 k = 0; k < hw; k++)
                    for (i64 l = live; l < B; l++) oo[k * B + l] = 0.f;
        }
    }
}

typedef struct {
    const float *u, *ctx, *s;
    float *out;
    i64 r, C, hw, B, f0, f1;
    float alpha;
} ltr_job;

static void *ltr_run(void *arg) {
    ltr_job *j = (ltr_job *)arg;
    ltr_span(j->u, j->ctx, j->s, j->out, j->r, j->C, j->hw, j->B, j->f0, j->f1, j->alpha);
    return NULL;
}

int nk_learned_trunk_reblock(const float *u, const float *ctx, const float *s, float *out, i64 n, i64 t8, i64 r,
                             i64 C, i64 hw, i64 B, float alpha, int nthreads) {
    if (!u || !ctx || !s || !out || n < 1 || t8 < 1 || r < 1 || C < 1 || hw < 1 || B < 1 || B > NK_LTR_MAX_BLOCK
        || (r * C) % B || (2 * C) % B)
        return NK_EARG;
    const i64 t2 = t8 * r, nb = (C + B - 1) / B;
    for (i64 i = 0; i < n; i++) {
        i64 nt = nthreads < 1 ? 1 : nthreads;
        if (nt > NK_LF_MAX_THREADS) nt = NK_LF_MAX_THREADS;
        if (nt > t2) nt = t2;
        ltr_job jobs[NK_LF_MAX_THREADS];
        for (i64 k = 0; k < nt; k++) {
            ltr_job j = {u + i * t8 * r * C * hw, ctx + i * t2 * nb * B * hw, s + i * 2 * C * hw,
                         out + i * t2 * nb * B * hw, r, C, hw, B, t2 * k / nt, t2 * (k + 1) / nt, alpha};
            jobs[k] = j;
        }
        run_jobs(ltr_run, jobs, sizeof jobs[0], nt);
    }
    return NK_OK;
}

/* ---------------------------------------------------------------------------------------------------
 * Learned mode: the variance-stabilising transform of the encoder input in one pass,
 *     v = 2 * sqrt(max(((float)x - offset) * inv_gain + 0.375, 0))
 * with each operation rounded to float32 in the order of the numpy reference (models/prep.py:vst: the
 * conversion, -=, *=, +=, maximum, sqrt, *= 2; IEEE sqrt is correctly rounded), so the same bits. NaN
 * stays NaN (like np.maximum). x: n contiguous values of element code (as above; 36/40: float32/64).
 * ------------------------------------------------------------------------------------------------- */
#define NK_VST_LOOP(T)                                                                                   \
    {                                                                                                    \
        const T *restrict xx = (const T *)x;                                                             \
        for (i64 k = 0; k < n; k++) {                                                                    \
            float v = (float)xx[k];                                                                      \
            v = v - offset;                                                                              \
            v = v * inv_gain;                                                                            \
            v = v + 0.375f;                                                                              \
            v = v < 0.f ? 0.f : v;                                                                       \
            v = __builtin_sqrtf(v);                                                                      \
            out[k] = v * 2.f;                                                                            \
        }                                                                                                \
    }

NK_SIMD static int vst_span(const void *x, int code, i64 n, float offset, float inv_gain, float *restrict out) {
    switch (code) {
    case 1: NK_VST_LOOP(int8_t) break;
    case 17: NK_VST_LOOP(uint8_t) break;
    case 2: NK_VST_LOOP(int16_t) break;
    case 18: NK_VST_LOOP(uint16_t) break;
    case 4: NK_VST_LOOP(int32_t) break;
    case 20: NK_VST_LOOP(uint32_t) break;
    case 36: NK_VST_LOOP(float) break;
    case 40: NK_VST_LOOP(double) break;
    default: return NK_EARG;
    }
    return NK_OK;
}

int nk_vst(const void *x, int code, i64 n, float offset, float inv_gain, float *out) {
    if (!x || !out || n < 0) return NK_EARG;
    return vst_span(x, code, n, offset, inv_gain, out);
}

/* ========================================================================================= errors */
/* Error statistics of b against a (1- or 2-byte integers of one type, n samples): out[0] = sum (b - a),
   out[1] = sum (b - a)^2, out[2] = max |b - a|, out[3] = min a, out[4] = max a, the signed ones as int64
   bit patterns. Exact: |b - a| < 2^16, so the squares sum below 2^63 for n < 2^31 (checked). Blocks of
   2^15 samples keep 32-bit partial sums, which the compiler vectorises. */
NK_SIMD int nk_error_stats(const void *a, const void *b, int code, i64 n, u64 *out) {
    i64 s1 = 0, i, j;
    u64 s2 = 0;
    i64 emax = 0;
    if (!(code == 1 || code == 2 || code == 17 || code == 18) || n < 1 || n >= ((i64)1 << 31)) return NK_EARG;
    switch (code) {
#define NK_ERRSTATS(CODE, TT)                                                                          \
    case CODE: {                                                                                       \
        const TT *pa = (const TT *)a, *pb = (const TT *)b;                                             \
        TT lo = pa[0], hi = pa[0];                                                                     \
        for (i = 0; i < n; i += 32768) {                                                               \
            i64 m = n - i < 32768 ? n - i : 32768;                                                     \
            int32_t bs1 = 0, bmax = 0;                                                                 \
            uint64_t bs2 = 0;                                                                          \
            for (j = 0; j < m; j++) {                                                                  \
                int32_t e = (int32_t)pb[i + j] - (int32_t)pa[i + j];                                   \
                int32_t ae = e < 0 ? -e : e;                                                           \
                bs1 += e;                                                                              \
                bs2 += (uint64_t)((uint32_t)ae * (uint32_t)ae);                                        \
                bmax = ae > bmax ? ae : bmax;                                                          \
                lo = pa[i + j] < lo ? pa[i + j] : lo;                                                  \
                hi = pa[i + j] > hi ? pa[i + j] : hi;                                                  \
            }                                                                                          \
            s1 += bs1;                                                                                 \
            s2 += bs2;                                                                                 \
            emax = bmax > emax ? bmax : emax;                                                          \
        }                                                                                              \
        out[3] = (u64)(i64)lo;                                                                         \
        out[4] = (u64)(i64)hi;                                                                         \
        break;                                                                                         \
    }
        NK_ERRSTATS(1, int8_t)
        NK_ERRSTATS(2, int16_t)
        NK_ERRSTATS(17, uint8_t)
        NK_ERRSTATS(18, uint16_t)
#undef NK_ERRSTATS
    }
    out[0] = (u64)s1;
    out[1] = s2;
    out[2] = (u64)emax;
    return NK_OK;
}
