# GELU (exact and tanh), SiLU, ELU, Softplus and their backwards, one vectorizable pass each: reference.gelu, gelu_tanh, silu, elu, softplus and *_backward.
# erf is the reference's (fdlibm's rational approximations, coefficients in reference.ERF_*), evaluated
# branch-free: every piece, then selects, so the compiler vectorizes the loop. float32 goes through double.

cdef double _ERX = 8.45062911510467529297e-01
cdef double _S12 = 0.7071067811865476, _ISQ2PI = 0.3989422804014327
cdef double _GK = 0.7978845608028654, _GC = 0.044715


cdef inline double _erf(double x) noexcept nogil:
    cdef double a = x if x >= 0 else -x
    cdef double z = a * a
    cdef double small = a + a * ((1.28379167095512558561e-01 + z * (-3.25042107247001499370e-01 + z * (
        -2.84817495755985104766e-02 + z * (-5.77027029648944159157e-03 + z * -2.37630166566501626084e-05))))
        / (1.0 + z * (3.97917223959155352819e-01 + z * (6.50222499887672944485e-02 + z * (
            5.08130628187576562776e-03 + z * (1.32494738004321644526e-04 + z * -3.96022827877536812320e-06))))))
    cdef double s = a - 1.0
    cdef double mid = _ERX + ((-2.36211856075265944077e-03 + s * (4.14856118683748331666e-01 + s * (
        -3.72207876035701323847e-01 + s * (3.18346619901161753674e-01 + s * (-1.10894694282396677476e-01 + s * (
            3.54783043256182359371e-02 + s * -2.16637559486879084300e-03))))))
        / (1.0 + s * (1.06420880400844228286e-01 + s * (5.40397917702171048937e-01 + s * (
            7.18286544141962662868e-02 + s * (1.26171219808761642112e-01 + s * (1.36370839120290507362e-02
                                                                              + s * 1.19844998467991074170e-02)))))))
    cdef double r = 1.0 / (z if z > 1.0 else 1.0)       # only used where |x| >= 1.25
    cdef double near = ((-9.86494403484714822705e-03 + r * (-6.93858572707181764372e-01 + r * (
        -1.05586262253232909814e+01 + r * (-6.23753324503260060396e+01 + r * (-1.62396669462573470355e+02 + r * (
            -1.84605092906711035994e+02 + r * (-8.12874355063065934246e+01 + r * -9.81432934416914548592e+00)))))))
        / (1.0 + r * (1.96512716674392571292e+01 + r * (1.37657754143519042600e+02 + r * (
            4.34565877475229228821e+02 + r * (6.45387271733267880336e+02 + r * (4.29008140027567833386e+02 + r * (
                1.08635005541779435134e+02 + r * (6.57024977031928170135e+00 + r * -6.04244152148580987438e-02)))))))))
    cdef double far = ((-9.86494292470009928597e-03 + r * (-7.99283237680523006574e-01 + r * (
        -1.77579549177547519889e+01 + r * (-1.60636384855821916062e+02 + r * (-6.37566443368389627722e+02 + r * (
            -1.02509513161107724954e+03 + r * -4.83519191608651397019e+02))))))
        / (1.0 + r * (3.03380607434824582924e+01 + r * (3.25792512996573918826e+02 + r * (
            1.53672958608443695994e+03 + r * (3.19985821950859553908e+03 + r * (2.55305040643316442583e+03 + r * (
                4.74528541206955367215e+02 + r * -2.24409524465858183362e+01))))))))
    cdef double ratio = near if a < 1.0 / 0.35 else far
    cdef double tail = 1.0 - fnn_exp(-z - 0.5625 + ratio) / (a if a > 1.0 else 1.0)
    cdef double y = 1.0 if a >= 6.0 else tail          # NaN falls through every test to tail
    y = mid if a < 1.25 else y
    y = small if a < 0.84375 else y
    return -y if x < 0 else y


cdef void _gelu_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v
    for i in range(n):
        v = x[i]
        y[i] = <floating> (0.5 * v * (1.0 + _erf(v * _S12)))


cdef void _gelu_tanh_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    # 0.5 (1 + tanh(u)) = sigmoid(2u): one exp, in the array's precision
    cdef Py_ssize_t i
    cdef floating v, k2 = 2 * _GK, c = _GC
    for i in range(n):
        v = x[i]
        y[i] = v * (1 / (1 + _exp(-k2 * (v + c * v * v * v))))


cdef void _gelu_b(const floating *dy, const floating *x, const floating *y, floating *dx,
                  Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v
    for i in range(n):
        v = x[i]
        dx[i] = <floating> (dy[i] * (0.5 * (1.0 + _erf(v * _S12)) + v * fnn_exp(-0.5 * v * v) * _ISQ2PI))


cdef void _gelu_tanh_b(const floating *dy, const floating *x, const floating *y, floating *dx,
                       Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v, s, k2 = 2 * _GK, c = _GC, c3 = 3 * _GC
    for i in range(n):
        v = x[i]
        s = 1 / (1 + _exp(-k2 * (v + c * v * v * v)))
        dx[i] = dy[i] * (s + v * s * (1 - s) * k2 * (1 + c3 * v * v))


def gelu(x):
    """x / 2 (1 + erf(x / sqrt 2)) (reference.gelu)."""
    return _unary(x, _gelu_k[float], _gelu_k[double])


def gelu_backward(dy, x, y):
    """dy (Phi(x) + x phi(x)) (reference.gelu_backward)."""
    return _backward(dy, x, y, _gelu_b[float], _gelu_b[double])


def gelu_tanh(x):
    """x / 2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (reference.gelu_tanh)."""
    return _unary(x, _gelu_tanh_k[float], _gelu_tanh_k[double])


def gelu_tanh_backward(dy, x, y):
    """reference.gelu_tanh_backward."""
    return _backward(dy, x, y, _gelu_tanh_b[float], _gelu_tanh_b[double])


# ------------------------------------------------------ SiLU, ELU, Softplus

cdef inline double _sig_d(double v) noexcept nogil:
    cdef double e = fnn_exp(-v if v >= 0 else v)       # exp(-|v|) never overflows
    cdef double r = 1.0 / (1.0 + e)
    return r if v >= 0 else e * r


cdef inline double _expm1_d(double v) noexcept nogil:
    """exp(v) - 1 without the cancellation near 0: Taylor to v**12 where |v| < 1/4."""
    cdef double p = 1.0 / 479001600.0
    cdef double f = 479001600.0
    cdef int k
    for k in range(12, 1, -1):
        f = f / k
        p = p * v + 1.0 / f
    cdef double small = p * v
    cdef double a = v if v >= 0 else -v
    return small if a < 0.25 else fnn_exp(v) - 1.0


cdef inline floating _sig(floating v) noexcept nogil:
    cdef floating e = _exp(-v if v >= 0 else v)       # in the array's precision
    cdef floating r = 1 / (1 + e)
    return r if v >= 0 else e * r


cdef void _silu_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = x[i] * _sig(x[i])


cdef void _silu_b(const floating *dy, const floating *x, const floating *y, floating *dx,
                  Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v, s
    for i in range(n):
        v = x[i]
        s = _sig(v)
        dx[i] = dy[i] * (s * (1 + v * (1 - s)))


def silu(x):
    """x * sigmoid(x) (reference.silu)."""
    return _unary(x, _silu_k[float], _silu_k[double])


def silu_backward(dy, x, y):
    """dy s (1 + x (1 - s)), s = sigmoid(x) (reference.silu_backward)."""
    return _backward(dy, x, y, _silu_b[float], _silu_b[double])


cdef void _elu_k(const floating *x, floating *y, Py_ssize_t n, double alpha) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v, neg
    for i in range(n):
        v = x[i]
        neg = alpha * _expm1_d(v if v < 0 else 0.0)
        y[i] = <floating> (v if v > 0 else neg)


cdef void _elu_b(const floating *dy, const floating *x, floating *dx, Py_ssize_t n,
                 double alpha) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v, g, neg
    for i in range(n):
        v = x[i]
        g = dy[i]
        neg = g * alpha * fnn_exp(v if v < 0 else 0.0)
        dx[i] = <floating> (g if v > 0 else neg)


cdef void _softplus_k(const floating *x, floating *y, Py_ssize_t n, double beta,
                      double threshold) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v, z, soft
    for i in range(n):
        v = x[i]
        z = v * beta
        if floating is float:                           # float32 arithmetic for float32
            soft = ((z if z > 0 else 0.0) + fnn_log1p01f(fnn_expf(<float> (-z if z >= 0 else z)))) / beta
        else:
            soft = ((z if z > 0 else 0.0) + fnn_log1p01(fnn_exp(-z if z >= 0 else z))) / beta
        y[i] = <floating> (v if z > threshold else soft)


cdef void _softplus_b(const floating *dy, const floating *x, floating *dx, Py_ssize_t n,
                      double beta, double threshold) noexcept nogil:
    cdef Py_ssize_t i
    cdef double z, g, soft
    for i in range(n):
        z = x[i] * beta
        g = dy[i]
        soft = g * _sig_d(z)
        dx[i] = <floating> (g if z > threshold else soft)


def elu(x, alpha=1.0):
    """x where x > 0 else alpha (exp(x) - 1) (reference.elu)."""
    cdef double a = alpha
    cdef cnp.ndarray X = x
    cdef cnp.ndarray Y = _empty_like(X)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(X)
    if _is_f32(X):
        _elu_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y), n, a)
    else:
        _elu_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y), n, a)
    return Y


def elu_backward(dy, x, y, alpha=1.0):
    """dy where x > 0 else dy alpha exp(x) (reference.elu_backward)."""
    cdef double a = alpha
    cdef cnp.ndarray DY = dy, X = x
    cdef cnp.ndarray DX = _empty_like(DY)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(DY)
    if _is_f32(DY):
        _elu_b(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(X),
               <float *> cnp.PyArray_DATA(DX), n, a)
    else:
        _elu_b(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(X),
               <double *> cnp.PyArray_DATA(DX), n, a)
    return DX


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, x where beta x > threshold (reference.softplus)."""
    cdef double b = beta, t = threshold
    cdef cnp.ndarray X = x
    cdef cnp.ndarray Y = _empty_like(X)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(X)
    if _is_f32(X):
        _softplus_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y), n, b, t)
    else:
        _softplus_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y), n, b, t)
    return Y


def softplus_backward(dy, x, y, beta=1.0, threshold=20.0):
    """dy sigmoid(beta x), dy where beta x > threshold (reference.softplus_backward)."""
    cdef double b = beta, t = threshold
    cdef cnp.ndarray DY = dy, X = x
    cdef cnp.ndarray DX = _empty_like(DY)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(DY)
    if _is_f32(DY):
        _softplus_b(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(X),
                    <float *> cnp.PyArray_DATA(DX), n, b, t)
    else:
        _softplus_b(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(X),
                    <double *> cnp.PyArray_DATA(DX), n, b, t)
    return DX
