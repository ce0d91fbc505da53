/* One block of LB samples through the whole time loop, samples in lanes (fnn_rec_lanes.h includes
 * this once per dtype with FT, FV, LB, FN, VSIG, VTANH defined). Forward: reference.rnn/lstm/gru;
 * backward: the time loops of reference.*_backward, writing the pre-activation gradients da (and
 * the GRU's d_hid) as (N*T, G) rows for the weight-gradient GEMMs of recurrent.pxi.
 * kind: 0 RNN, 1 LSTM, 2 GRU. Samples n0 .. n0+nl-1 (nl <= LB); lanes past nl hold zeros. */

/* dst[e][l] = src[(n0 + l) * len + e0 + e] for e < ne, l < nl: a run of ne elements of each
 * sample's row (its whole sequence of one array is one row of len = T * width) into lanes.
 * Long runs (a chunk of steps at once) keep the copy loop tight. */
static inline void FN(fnn_lin)(FV *dst, const FT *src, long n0, long nl, long len, long e0, long ne) {
    FT *d = (FT *)dst;
    for (long l = 0; l < nl; ++l) {
        const FT *s = src + (n0 + l) * len + e0;
        for (long e = 0; e < ne; ++e) d[e * LB + l] = s[e];
    }
}

/* the other way: lanes -> rows */
static inline void FN(fnn_lout)(FT *dst, const FV *src, long n0, long nl, long len, long e0, long ne) {
    const FT *s = (const FT *)src;
    for (long l = 0; l < nl; ++l) {
        FT *d = dst + (n0 + l) * len + e0;
        for (long e = 0; e < ne; ++e) d[e] = s[e * LB + l];
    }
}

static inline FV FN(fnn_lsplat)(FT v) { return (FV){0} + v; }

/* steps per chunk: the chunk's lanes buffers (at most 2F + 4H + 3G vectors a step) in ~96 KB */
static long FN(fnn_lanes_chunk)(long T, long F, long H) {
    long per = (2 * F + 16 * H) * (long)sizeof(FV);
    long tc = 98304 / (per > 0 ? per : 1);
    if (tc < 1) tc = 1;
    return tc < T ? tc : T;
}

/* work buffer of one block, in vectors: kind < 0 (-1 - kind) the forward's (2H + TC*(F + 7H)),
 * else the backward's (2H + G*(H+F+2) + 2H + TC*(4H + 3G + 2F), G <= 4H) */
static long FN(fnn_lanes_bufsize)(int kind, long T, long F, long H) {
    long tc = FN(fnn_lanes_chunk)(T, F, H);
    if (kind < 0) return 2 * H + tc * (F + 7 * H) + 16;
    return 12 * H + 4 * F + (tc + 1) * (2 * F + 16 * H) + 4 * H * (H + F + 2) + 16;
}

/* bytes of the fused backward's per-block weight-gradient accumulators */
static long FN(fnn_lanes_accbytes)(int kind, long F, long H) {
    long G = H * (kind == 0 ? 1 : kind == 1 ? 4 : 3);
    return G * (H + F + 2) * (long)sizeof(FV);
}

/* sum of the LB lanes of n vectors, added into out[0..n) */
static inline void FN(fnn_lreduce)(FT *out, const FV *v, long n) {
    for (long q = 0; q < n; ++q) {
        const FT *e = (const FT *)(v + q);
        FT s = 0;
        for (long l = 0; l < LB; ++l) s += e[l];
        out[q] += s;
    }
}

static void FN(fnn_lanes_fwd)(int kind, long n0, long nl, long T, long F, long H, const FT *x,
                              const FT *wih, const FT *whh, const FT *bias, FT *h, FT *c,
                              FT *gates, FT *hn, void *vbuf) {
    /* bias: RNN/LSTM b_ih + b_hh per gate row; GRU r, z (both), n from x (b_in), n from h (b_hn) */
    long G = H * (kind == 0 ? 1 : kind == 1 ? 4 : 3);
    long TC = FN(fnn_lanes_chunk)(T, F, H);
    FV *hs = (FV *)vbuf;            /* H: h at the end of the previous chunk */
    FV *cv = hs + H;                /* H: c_t (LSTM) */
    FV *xc = cv + H;                /* TC*F: the chunk's inputs */
    FV *gc = xc + TC * F;           /* TC*G: gates after activation */
    FV *cc = gc + TC * G;           /* TC*H: c */
    FV *hc = cc + TC * H;           /* TC*H: h */
    FV *nc = hc + TC * H;           /* TC*H: GRU W_hn h + b_hn */
    FV zero = FN(fnn_lsplat)(0);
    for (FV *q = hs; q < nc + TC * H; ++q) *q = zero;
    for (long t0 = 0; t0 < T; t0 += TC) {
        long tc = T - t0 < TC ? T - t0 : TC;
        FN(fnn_lin)(xc, x, n0, nl, T * F, t0 * F, tc * F);
        for (long tt = 0; tt < tc; ++tt) {
            const FV *xt = xc + tt * F;
            FV *hq = hc + tt * H, *st = gc + tt * G;
            const FV *hp = tt ? hq - H : hs;
            if (kind == 1) {
                FV *co = cc + tt * H;
                for (long j = 0; j < H; ++j) {
                    const FT *u0 = wih + j * F, *u1 = wih + (H + j) * F;
                    const FT *u2 = wih + (2 * H + j) * F, *u3 = wih + (3 * H + j) * F;
                    const FT *w0 = whh + j * H, *w1 = whh + (H + j) * H;
                    const FT *w2 = whh + (2 * H + j) * H, *w3 = whh + (3 * H + j) * H;
                    FV ai = FN(fnn_lsplat)(bias[j]), af = FN(fnn_lsplat)(bias[H + j]);
                    FV ag = FN(fnn_lsplat)(bias[2 * H + j]), ao = FN(fnn_lsplat)(bias[3 * H + j]);
                    for (long f = 0; f < F; ++f) {
                        FV v = xt[f];
                        ai += u0[f] * v; af += u1[f] * v; ag += u2[f] * v; ao += u3[f] * v;
                    }
                    for (long k = 0; k < H; ++k) {
                        FV v = hp[k];
                        ai += w0[k] * v; af += w1[k] * v; ag += w2[k] * v; ao += w3[k] * v;
                    }
                    FV iv = VSIG(ai), fv = VSIG(af), gv = VTANH(ag), ov = VSIG(ao);
                    FV cn = fv * cv[j] + iv * gv;
                    cv[j] = cn;
                    co[j] = cn;
                    hq[j] = ov * VTANH(cn);
                    st[j] = iv; st[H + j] = fv; st[2 * H + j] = gv; st[3 * H + j] = ov;
                }
            } else if (kind == 2) {
                FV *no = nc + tt * H;
                for (long j = 0; j < H; ++j) {
                    const FT *u0 = wih + j * F, *u1 = wih + (H + j) * F, *u2 = wih + (2 * H + j) * F;
                    const FT *w0 = whh + j * H, *w1 = whh + (H + j) * H, *w2 = whh + (2 * H + j) * H;
                    FV ar = FN(fnn_lsplat)(bias[j]), az = FN(fnn_lsplat)(bias[H + j]);
                    FV ax = FN(fnn_lsplat)(bias[2 * H + j]), ah = FN(fnn_lsplat)(bias[3 * H + j]);
                    for (long f = 0; f < F; ++f) {
                        FV v = xt[f];
                        ar += u0[f] * v; az += u1[f] * v; ax += u2[f] * v;
                    }
                    for (long k = 0; k < H; ++k) {
                        FV v = hp[k];
                        ar += w0[k] * v; az += w1[k] * v; ah += w2[k] * v;
                    }
                    FV rv = VSIG(ar), zv = VSIG(az);
                    FV nv = VTANH(ax + rv * ah);
                    hq[j] = (1 - zv) * nv + zv * hp[j];
                    st[j] = rv; st[H + j] = zv; st[2 * H + j] = nv; no[j] = ah;
                }
            } else {
                for (long j = 0; j < H; ++j) {
                    const FT *u0 = wih + j * F, *w0 = whh + j * H;
                    FV a0 = FN(fnn_lsplat)(bias[j]), a1 = zero;
                    for (long f = 0; f < F; ++f) a0 += u0[f] * xt[f];
                    long k = 0;
                    for (; k + 2 <= H; k += 2) { a0 += w0[k] * hp[k]; a1 += w0[k + 1] * hp[k + 1]; }
                    if (k < H) a0 += w0[k] * hp[k];
                    hq[j] = VTANH(a0 + a1);
                }
            }
        }
        FN(fnn_lout)(h, hc, n0, nl, T * H, t0 * H, tc * H);
        if (kind == 1) {
            FN(fnn_lout)(gates, gc, n0, nl, T * G, t0 * G, tc * G);
            FN(fnn_lout)(c, cc, n0, nl, T * H, t0 * H, tc * H);
        } else if (kind == 2) {
            FN(fnn_lout)(gates, gc, n0, nl, T * G, t0 * G, tc * G);
            FN(fnn_lout)(hn, nc, n0, nl, T * H, t0 * H, tc * H);
        }
        for (long j = 0; j < H; ++j) hs[j] = hc[(tc - 1) * H + j];
    }
}

/* rows [t0 - 1, t0 + tc) of an (N, T, H) array into lanes, the step before 0 as zeros */
static inline void FN(fnn_lin_prev)(FV *dst, const FT *src, long n0, long nl, long T, long H,
                                    long t0, long tc) {
    if (t0 > 0) {
        FN(fnn_lin)(dst, src, n0, nl, T * H, (t0 - 1) * H, (tc + 1) * H);
    } else {
        FV zero = FN(fnn_lsplat)(0);
        for (long j = 0; j < H; ++j) dst[j] = zero;
        FN(fnn_lin)(dst + H, src, n0, nl, T * H, 0, tc * H);
    }
}

static void FN(fnn_lanes_bwd)(int kind, long n0, long nl, long T, long F, long H, const FT *dh,
                              const FT *x, const FT *h, const FT *c, const FT *gates, const FT *hn,
                              const FT *whht, const FT *wiht, FT *da, FT *dhid, FT *dx,
                              FT *part, void *vbuf) {
    /* whht: W_hh transposed (H, G). part == NULL: write da and the GRU's d_hid as (N*T, G)
     * rows for the GEMMs of recurrent.pxi. part != NULL (fused): accumulate this block's
     * [dW_hh (G, H) | dW_ih (G, F) | db_ih (G) | db_hh (G)] into part, and dx (N, T, F)
     * when dx != NULL, from wiht = W_ih transposed (F, G). */
    long G = H * (kind == 0 ? 1 : kind == 1 ? 4 : 3);
    long TC = FN(fnn_lanes_chunk)(T, F, H);
    int fused = part != NULL;
    FV *carry = (FV *)vbuf;         /* H: dL/dh_t from step t+1 (W_hh^T da; GRU: + dh z) */
    FV *dcs = carry + H;            /* H: LSTM dc carried; GRU dh_t z */
    FV *aw = dcs + H;               /* G*H, G*F, G, G: gradient accumulators (fused) */
    FV *ai = aw + G * H, *ab = ai + G * F, *ab2 = ab + G;
    FV *dhc = ab2 + G;              /* TC*H: dh */
    FV *gc = dhc + TC * H;          /* TC*G: gates (LSTM, GRU) */
    FV *cc = gc + TC * G;           /* (TC+1)*H: LSTM c from step t0-1 */
    FV *hc = cc + (TC + 1) * H;     /* (TC+1)*H: h from step t0-1 */
    FV *nc = hc + (TC + 1) * H;     /* TC*H: GRU hn */
    FV *xc = nc + TC * H;           /* TC*F: x (fused) */
    FV *dxc = xc + TC * F;          /* TC*F: dx (fused) */
    FV *dac = dxc + TC * F;         /* TC*G: da */
    FV *dhd = dac + TC * G;         /* TC*G: GRU d_hid */
    FV zero = FN(fnn_lsplat)(0);
    for (FV *q = carry; q < dhd + TC * G; ++q) *q = zero;
    for (long t1 = T; t1 > 0; ) {
        long t0 = t1 - TC > 0 ? t1 - TC : 0, tc = t1 - t0;
        FN(fnn_lin)(dhc, dh, n0, nl, T * H, t0 * H, tc * H);
        FN(fnn_lin_prev)(hc, h, n0, nl, T, H, t0, tc);
        if (kind == 1) {
            FN(fnn_lin)(gc, gates, n0, nl, T * G, t0 * G, tc * G);
            FN(fnn_lin_prev)(cc, c, n0, nl, T, H, t0, tc);
        } else if (kind == 2) {
            FN(fnn_lin)(gc, gates, n0, nl, T * G, t0 * G, tc * G);
            FN(fnn_lin)(nc, hn, n0, nl, T * H, t0 * H, tc * H);
        }
        if (fused) FN(fnn_lin)(xc, x, n0, nl, T * F, t0 * F, tc * F);
        for (long tt = tc - 1; tt >= 0; --tt) {
            long t = t0 + tt;
            const FV *dhv = dhc + tt * H, *gv = gc + tt * G, *hp = hc + tt * H;
            FV *dav = dac + tt * G, *dhv2 = dhd + tt * G;
            if (kind == 1) {
                const FV *cv = cc + (tt + 1) * H, *cp = cc + tt * H;
                for (long j = 0; j < H; ++j) {
                    FV d = dhv[j] + carry[j];
                    FV iv = gv[j], fv = gv[H + j], g = gv[2 * H + j], ov = gv[3 * H + j];
                    FV tcv = VTANH(cv[j]);
                    FV dc = dcs[j] + d * ov * (1 - tcv * tcv);
                    dav[j] = dc * g * iv * (1 - iv);
                    dav[H + j] = dc * cp[j] * fv * (1 - fv);
                    dav[2 * H + j] = dc * iv * (1 - g * g);
                    dav[3 * H + j] = d * tcv * ov * (1 - ov);
                    dcs[j] = dc * fv;
                }
            } else if (kind == 2) {
                const FV *nv_ = nc + tt * H;
                for (long j = 0; j < H; ++j) {
                    FV d = dhv[j] + carry[j];
                    FV rv = gv[j], zv = gv[H + j], nv = gv[2 * H + j];
                    FV dnew = d * (1 - zv) * (1 - nv * nv);
                    FV dr = dnew * nv_[j] * rv * (1 - rv);
                    FV dz = d * (hp[j] - nv) * zv * (1 - zv);
                    dav[j] = dr; dav[H + j] = dz; dav[2 * H + j] = dnew;
                    dhv2[j] = dr; dhv2[H + j] = dz; dhv2[2 * H + j] = dnew * rv;
                    dcs[j] = d * zv;
                }
            } else {
                const FV *hv = hp + H;
                for (long j = 0; j < H; ++j) dav[j] = (dhv[j] + carry[j]) * (1 - hv[j] * hv[j]);
            }
            const FV *src = kind == 2 ? dhv2 : dav;     /* what meets W_hh */
            if (fused) {
                const FV *xv = xc + tt * F;
                for (long g = 0; g < G; ++g) {
                    FV a = src[g], b = dav[g];
                    FV *w = aw + g * H, *u = ai + g * F;
                    if (t > 0) for (long k = 0; k < H; ++k) w[k] += a * hp[k];
                    for (long f = 0; f < F; ++f) u[f] += b * xv[f];
                    ab[g] += b;
                    ab2[g] += a;
                }
                if (dx != NULL) {
                    FV *dxv = dxc + tt * F;
                    for (long f = 0; f < F; ++f) {
                        const FT *w = wiht + f * G;
                        FV a0 = zero, a1 = zero;
                        long g = 0;
                        for (; g + 2 <= G; g += 2) { a0 += w[g] * dav[g]; a1 += w[g + 1] * dav[g + 1]; }
                        if (g < G) a0 += w[g] * dav[g];
                        dxv[f] = a0 + a1;
                    }
                }
            }
            if (t == 0) break;
            /* carry = W_hh^T (da, or the GRU's d_hid): two partial sums per unit halve the chain */
            for (long k = 0; k < H; ++k) {
                const FT *w = whht + k * G;
                FV a0 = kind == 2 ? dcs[k] : zero, a1 = zero;
                long g = 0;
                for (; g + 2 <= G; g += 2) { a0 += w[g] * src[g]; a1 += w[g + 1] * src[g + 1]; }
                if (g < G) a0 += w[g] * src[g];
                carry[k] = a0 + a1;
            }
        }
        if (!fused) {
            FN(fnn_lout)(da, dac, n0, nl, T * G, t0 * G, tc * G);
            if (kind == 2) FN(fnn_lout)(dhid, dhd, n0, nl, T * G, t0 * G, tc * G);
        } else if (dx != NULL) {
            FN(fnn_lout)(dx, dxc, n0, nl, T * F, t0 * F, tc * F);
        }
        t1 = t0;
    }
    if (fused) FN(fnn_lreduce)(part, aw, G * (H + F + 2));
}
