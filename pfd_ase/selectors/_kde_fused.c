/* Fused Gaussian-kernel row sums for the pruned engine of pfd_ase.selectors._kde.
 *
 * sum_j exp(left[r] . P[:, j]) over the points j of a cell, without storing the block of
 * exponents: the dot products are accumulated in registers (4 rows x 8 points at a time),
 * exponentiated there and summed. Built as an optional extension module (setup.py) and called
 * through ctypes, which releases the GIL; the kernels need AVX2 and FMA, checked at run time
 * by pfd_cpu_ok(). Without them, or without this module, _kde uses torch or numpy blocks.
 *
 * Rows ("left", K = d + 2 doubles each) and points (packed in panels of 8, K x 8 doubles) are
 * the augmented vectors of _kde._augmented: their dot product is the exponent s |y - x|^2.
 */
#include <Python.h>
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PFD_AVX2 __attribute__((target("avx2,fma")))

/* exp below this is flushed to 0 (e^-708 < 3.3e-308); _kde redoes the sums below _TINY */
#define PFD_EXP_MIN (-708.0)

/* exp(x) for x <= 0: Cody-Waite reduction, Taylor series to degree 13 on |r| <= ln2 / 2
   (truncation < 4e-18), within 2.3e-16 relative of the correctly rounded value. */
static inline PFD_AVX2 __m256d exp_pd(__m256d x) {
    const __m256d lo = _mm256_set1_pd(PFD_EXP_MIN);
    __m256d keep = _mm256_cmp_pd(x, lo, _CMP_GE_OQ);
    x = _mm256_max_pd(x, lo);
    __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
    __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 479001600.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 39916800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 3628800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 362880.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 40320.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 5040.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 720.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 120.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 24.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 6.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    /* 2^n for n in [-1022, 0]: n + 1023 in the exponent bits */
    __m256i b = _mm256_slli_epi64(
        _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(6755399441055744.0 + 1023.0))), 52);
    return _mm256_and_pd(_mm256_mul_pd(p, _mm256_castsi256_pd(b)), keep);
}

static inline PFD_AVX2 double hsum(__m256d v) {
    __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}

/* the 8 terms of one row and one panel, unless all 8 exponents lie below the row's floor */
#define PFD_ROW(S, A, B, F)                                                                  \
    if (_mm256_movemask_pd(                                                                  \
            _mm256_or_pd(_mm256_cmp_pd(A, F, _CMP_GE_OQ), _mm256_cmp_pd(B, F, _CMP_GE_OQ)))) \
        S = _mm256_add_pd(S, _mm256_add_pd(exp_pd(A), exp_pd(B)));

/* Row sums (and column sums) of exp(left[rows[i]] . P[p][:, j]) over the first npanel panels:
   out[rows[i] - row_off] += the row's sum; with cols (not NULL), cols[8 p + j] += the column's
   sum over the m rows. With floor (not NULL, row sums only), a panel whose 8 exponents for a
   row all lie below floor[rows[i]] adds nothing (the caller's pruning bound covers them). */
PFD_AVX2 void pfd_block_sums(const double *left, int64_t K, const int64_t *rows, int64_t m,
                             const double *P, int64_t npanel, const double *floor,
                             double *out, int64_t row_off, double *cols) {
    const int64_t chunk = 48; /* panels kept in L2: 48 x 8 points x 65 x 8 B = 200 KB */
    const __m256d none = _mm256_set1_pd(-INFINITY);
    if (cols) floor = NULL;
    for (int64_t p0 = 0; p0 < npanel; p0 += chunk) {
        int64_t p1 = p0 + chunk < npanel ? p0 + chunk : npanel;
        int64_t i = 0;
        for (; i + 4 <= m; i += 4) {
            const double *l0 = left + rows[i] * K, *l1 = left + rows[i + 1] * K;
            const double *l2 = left + rows[i + 2] * K, *l3 = left + rows[i + 3] * K;
            __m256d f0 = none, f1 = none, f2 = none, f3 = none;
            if (floor) {
                f0 = _mm256_set1_pd(floor[rows[i]]);
                f1 = _mm256_set1_pd(floor[rows[i + 1]]);
                f2 = _mm256_set1_pd(floor[rows[i + 2]]);
                f3 = _mm256_set1_pd(floor[rows[i + 3]]);
            }
            __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
            for (int64_t p = p0; p < p1; p++) {
                const double *pp = P + p * K * 8;
                __m256d a00 = _mm256_setzero_pd(), a01 = a00, a10 = a00, a11 = a00;
                __m256d a20 = a00, a21 = a00, a30 = a00, a31 = a00;
                for (int64_t k = 0; k < K; k++) {
                    __m256d x0 = _mm256_loadu_pd(pp + 8 * k), x1 = _mm256_loadu_pd(pp + 8 * k + 4);
                    __m256d y = _mm256_broadcast_sd(l0 + k);
                    a00 = _mm256_fmadd_pd(y, x0, a00);
                    a01 = _mm256_fmadd_pd(y, x1, a01);
                    y = _mm256_broadcast_sd(l1 + k);
                    a10 = _mm256_fmadd_pd(y, x0, a10);
                    a11 = _mm256_fmadd_pd(y, x1, a11);
                    y = _mm256_broadcast_sd(l2 + k);
                    a20 = _mm256_fmadd_pd(y, x0, a20);
                    a21 = _mm256_fmadd_pd(y, x1, a21);
                    y = _mm256_broadcast_sd(l3 + k);
                    a30 = _mm256_fmadd_pd(y, x0, a30);
                    a31 = _mm256_fmadd_pd(y, x1, a31);
                }
                if (cols) {
                    a00 = exp_pd(a00), a01 = exp_pd(a01), a10 = exp_pd(a10), a11 = exp_pd(a11);
                    a20 = exp_pd(a20), a21 = exp_pd(a21), a30 = exp_pd(a30), a31 = exp_pd(a31);
                    s0 = _mm256_add_pd(s0, _mm256_add_pd(a00, a01));
                    s1 = _mm256_add_pd(s1, _mm256_add_pd(a10, a11));
                    s2 = _mm256_add_pd(s2, _mm256_add_pd(a20, a21));
                    s3 = _mm256_add_pd(s3, _mm256_add_pd(a30, a31));
                    __m256d c0 = _mm256_add_pd(_mm256_add_pd(a00, a10), _mm256_add_pd(a20, a30));
                    __m256d c1 = _mm256_add_pd(_mm256_add_pd(a01, a11), _mm256_add_pd(a21, a31));
                    double *cp = cols + 8 * p;
                    _mm256_storeu_pd(cp, _mm256_add_pd(_mm256_loadu_pd(cp), c0));
                    _mm256_storeu_pd(cp + 4, _mm256_add_pd(_mm256_loadu_pd(cp + 4), c1));
                    continue;
                }
                PFD_ROW(s0, a00, a01, f0)
                PFD_ROW(s1, a10, a11, f1)
                PFD_ROW(s2, a20, a21, f2)
                PFD_ROW(s3, a30, a31, f3)
            }
            out[rows[i] - row_off] += hsum(s0);
            out[rows[i + 1] - row_off] += hsum(s1);
            out[rows[i + 2] - row_off] += hsum(s2);
            out[rows[i + 3] - row_off] += hsum(s3);
        }
        for (; i < m; i++) {
            const double *l0 = left + rows[i] * K;
            __m256d f0 = floor ? _mm256_set1_pd(floor[rows[i]]) : none;
            __m256d s0 = _mm256_setzero_pd();
            for (int64_t p = p0; p < p1; p++) {
                const double *pp = P + p * K * 8;
                __m256d a00 = _mm256_setzero_pd(), a01 = a00;
                for (int64_t k = 0; k < K; k++) {
                    __m256d y = _mm256_broadcast_sd(l0 + k);
                    a00 = _mm256_fmadd_pd(y, _mm256_loadu_pd(pp + 8 * k), a00);
                    a01 = _mm256_fmadd_pd(y, _mm256_loadu_pd(pp + 8 * k + 4), a01);
                }
                if (cols) {
                    a00 = exp_pd(a00), a01 = exp_pd(a01);
                    s0 = _mm256_add_pd(s0, _mm256_add_pd(a00, a01));
                    double *cp = cols + 8 * p;
                    _mm256_storeu_pd(cp, _mm256_add_pd(_mm256_loadu_pd(cp), a00));
                    _mm256_storeu_pd(cp + 4, _mm256_add_pd(_mm256_loadu_pd(cp + 4), a01));
                    continue;
                }
                PFD_ROW(s0, a00, a01, f0)
            }
            out[rows[i] - row_off] += hsum(s0);
        }
    }
}

/* y = exp(x) elementwise (x <= 0), the kernels' exp: for tests */
PFD_AVX2 void pfd_exp(const double *x, double *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, exp_pd(_mm256_loadu_pd(x + i)));
    for (; i < n; i++) {
        double t[4] = {x[i], 0.0, 0.0, 0.0}, o[4];
        _mm256_storeu_pd(o, exp_pd(_mm256_loadu_pd(t)));
        y[i] = o[0];
    }
}

int pfd_cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#else /* not x86-64 with GCC or Clang: no kernels */
int pfd_cpu_ok(void) { return 0; }
#endif

/* Pack points idx[0..size) of x (rows of d doubles) in panels of 8: P[p][k][j] holds
   coordinate k of point 8p + j minus mu[k], then 1, then sn[idx] (s |x - mu|^2). The last
   panel is padded with points whose exponent is -1e300 (their terms are 0). */
void pfd_pack_cell(const double *x, int64_t d, const int64_t *idx, int64_t size,
                   const double *mu, const double *sn, double *P) {
    int64_t K = d + 2, npanel = (size + 7) / 8;
    for (int64_t p = 0; p < npanel; p++) {
        double *pp = P + p * K * 8;
        for (int64_t j = 0; j < 8; j++) {
            int64_t i = 8 * p + j;
            if (i < size) {
                const double *xi = x + idx[i] * d;
                for (int64_t k = 0; k < d; k++) pp[8 * k + j] = xi[k] - mu[k];
                pp[8 * d + j] = 1.0;
                pp[8 * (d + 1) + j] = sn[idx[i]];
            } else {
                for (int64_t k = 0; k < d; k++) pp[8 * k + j] = 0.0;
                pp[8 * d + j] = 1.0;
                pp[8 * (d + 1) + j] = -1e300;
            }
        }
    }
}

/* For points x[0..n) (rows of d doubles) with nearest centres cen[label[i]]: sq[i] =
   |x_i - mu|^2 and dist[i] = |x_i - mu - cen[label[i]]| (cen centred on mu). */
void pfd_centre_dists(const double *x, int64_t d, int64_t n, const double *mu, const double *cen,
                      const int64_t *label, double *sq, double *dist) {
    for (int64_t i = 0; i < n; i++) {
        const double *xi = x + i * d, *c = cen + label[i] * d;
        double a = 0.0, b = 0.0;
        for (int64_t k = 0; k < d; k++) {
            double v = xi[k] - mu[k], w = v - c[k];
            a += v * v;
            b += w * w;
        }
        sq[i] = a;
        dist[i] = sqrt(b);
    }
}

/* an (empty) module, so that the build tools build it and Python can locate it */
static struct PyModuleDef pfd_module = {PyModuleDef_HEAD_INIT, "_kde_fused",
                                        "Fused kernel sums, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__kde_fused(void) { return PyModule_Create(&pfd_module); }
