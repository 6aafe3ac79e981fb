/* fastdiff._cpu_ops: fused fp32 CPU ops for the torch backend (fastdiff/ops/cpu_fused.py).
 *
 * Plain C against the CPython API: no libtorch headers or linkage, so it builds in about a
 * second with any C compiler. Each function takes raw pointers (tensor.data_ptr()), sizes and
 * element strides from its Python wrapper, which checks dtypes, devices and shapes first; the
 * functions here check the index values they dereference (positions, slots) and raise
 * ValueError, before writing anything, instead of touching memory out of bounds. The GIL is
 * released while they run.
 *
 * Rounding: the code is built with -ffp-contract=off, so a*c - b*s rounds each product as
 * torch's elementwise ops do (no FMA contraction); RoPE's rotation is then bitwise the torch
 * path's. The RMS reductions sum in a different order than torch's kernels (16 partial sums),
 * so a norm may differ from F.rms_norm in its last bit.
 *
 * target_clones builds each hot loop for AVX-512, AVX2 and baseline x86-64 and picks one at
 * load time (GCC / clang ifuncs); other compilers and targets get the portable build.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define FD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FD_CLONES
#endif

#define LANES 16

/* sum of v[i]^2 over n values: LANES partial sums (vectorizable without reassociation flags),
 * then the lanes in a fixed order */
static inline float sum_squares(const float *v, Py_ssize_t n) {
    float acc[LANES] = {0};
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += v[i + j] * v[i + j];
    float tot = 0.0f;
    for (int j = 0; j < LANES; j++) tot += acc[j];
    for (; i < n; i++) tot += v[i] * v[i];
    return tot;
}

/* s = x + delta (delta NULL: s is x, not written), n = (s * rsqrt(mean(s^2) + eps)) * w, row
 * by row; rows of d contiguous floats. */
FD_CLONES
static void add_rms_norm_rows(const float *x, const float *delta, const float *w, float *s,
                              float *n, Py_ssize_t rows, Py_ssize_t d, float eps) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *sr = delta ? s + r * d : (float *)xr;
        float *nr = n + r * d;
        if (delta) {
            const float *dr = delta + r * d;
            for (Py_ssize_t i = 0; i < d; i++) sr[i] = xr[i] + dr[i];
        }
        float inv = 1.0f / sqrtf(sum_squares(sr, d) / (float)d + eps);
        for (Py_ssize_t i = 0; i < d; i++) nr[i] = (sr[i] * inv) * w[i];
    }
}

static PyObject *py_add_rms_norm(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, delta, w, s, n;
    Py_ssize_t rows, d;
    float eps;
    if (!PyArg_ParseTuple(args, "KKKKKnnf", &x, &delta, &w, &s, &n, &rows, &d, &eps))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    add_rms_norm_rows((const float *)x, (const float *)delta, (const float *)w, (float *)s,
                      (float *)n, rows, d, eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

typedef struct {
    const float *qkv; /* [B, S, (H + 2 Hkv) D] contiguous */
    Py_ssize_t B, S, H, Hkv, D;
    const int64_t *pos; Py_ssize_t pos_sb, pos_ss;   /* [B, S] */
    const int32_t *slot; Py_ssize_t slot_sb, slot_ss; /* [B, S] */
    const float *cos, *sin; Py_ssize_t n_pos;         /* [n_pos, D / 2] contiguous */
    float *k; Py_ssize_t k_sb, k_sh, k_st;            /* [B, Hkv, T, D], last dim contiguous */
    float *v; Py_ssize_t v_sb, v_sh, v_st;
    Py_ssize_t T;
    float *q;                                         /* out [B, S, H, D] contiguous */
    const float *q_norm, *k_norm;                     /* [D] or NULL (both or neither: the
                                                         wrapper checks) */
    float eps;
} RopeArgs;

/* One pass over the fed tokens: (QK-norm and) RoPE of each q / k head, q to `q`, k and v to
 * their KV slots. Returns 0, or 1 for a position outside the cos/sin table, 2 for a slot >= T. */
FD_CLONES
static int rope_kv_run(const RopeArgs *a) {
    const Py_ssize_t D = a->D, half = D / 2, width = (a->H + 2 * a->Hkv) * D;
    float tmp[1024];
    /* every index first: a bad one raises before anything is written */
    for (Py_ssize_t b = 0; b < a->B; b++)
        for (Py_ssize_t t = 0; t < a->S; t++) {
            int64_t p = a->pos[b * a->pos_sb + t * a->pos_ss];
            if (p < 0 || p >= a->n_pos) return 1;
            if (a->slot[b * a->slot_sb + t * a->slot_ss] >= a->T) return 2;
        }
    for (Py_ssize_t b = 0; b < a->B; b++) {
        for (Py_ssize_t t = 0; t < a->S; t++) {
            const float *row = a->qkv + (b * a->S + t) * width;
            int64_t p = a->pos[b * a->pos_sb + t * a->pos_ss];
            Py_ssize_t sl = a->slot[b * a->slot_sb + t * a->slot_ss];
            if (sl < 0) sl = a->T - 1; /* the store's never-read trash slot */
            const float *c = a->cos + p * half, *sn = a->sin + p * half;
            for (Py_ssize_t h = 0; h < a->H + a->Hkv; h++) {
                const float *src = row + h * D;
                if (a->q_norm) {
                    const float *w = h < a->H ? a->q_norm : a->k_norm;
                    float inv = 1.0f / sqrtf(sum_squares(src, D) / (float)D + a->eps);
                    for (Py_ssize_t i = 0; i < D; i++) tmp[i] = (src[i] * inv) * w[i];
                    src = tmp;
                }
                float *dst = h < a->H ? a->q + ((b * a->S + t) * a->H + h) * D
                                      : a->k + b * a->k_sb + (h - a->H) * a->k_sh + sl * a->k_st;
                for (Py_ssize_t i = 0; i < half; i++) {
                    float x1 = src[i], x2 = src[i + half];
                    dst[i] = x1 * c[i] - x2 * sn[i];
                    dst[i + half] = x2 * c[i] + x1 * sn[i];
                }
            }
            const float *vsrc = row + (a->H + a->Hkv) * D;
            for (Py_ssize_t h = 0; h < a->Hkv; h++) {
                float *dst = a->v + b * a->v_sb + h * a->v_sh + sl * a->v_st;
                for (Py_ssize_t i = 0; i < D; i++) dst[i] = vsrc[h * D + i];
            }
        }
    }
    return 0;
}

static PyObject *py_rope_kv(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long qkv, pos, slot, cos, sin, k, v, q, qn, kn;
    RopeArgs a;
    if (!PyArg_ParseTuple(args, "KnnnnnKnnKnnKKnKnnnKnnnnKKKf", &qkv, &a.B, &a.S, &a.H, &a.Hkv,
                          &a.D, &pos, &a.pos_sb, &a.pos_ss, &slot, &a.slot_sb, &a.slot_ss, &cos,
                          &sin, &a.n_pos, &k, &a.k_sb, &a.k_sh, &a.k_st, &v, &a.v_sb, &a.v_sh,
                          &a.v_st, &a.T, &q, &qn, &kn, &a.eps))
        return NULL;
    if (a.D % 2 || a.D > 1024 || a.D <= 0) {
        PyErr_Format(PyExc_ValueError, "rope_kv: head_dim %zd must be even and <= 1024", a.D);
        return NULL;
    }
    a.qkv = (const float *)qkv; a.pos = (const int64_t *)pos; a.slot = (const int32_t *)slot;
    a.cos = (const float *)cos; a.sin = (const float *)sin; a.k = (float *)k; a.v = (float *)v;
    a.q = (float *)q; a.q_norm = (const float *)qn; a.k_norm = (const float *)kn;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = rope_kv_run(&a);
    Py_END_ALLOW_THREADS
    if (err == 1) {
        PyErr_Format(PyExc_ValueError, "rope_kv: a position is outside the RoPE table "
                     "[0, %zd) (the model's max_sequence_length)", a.n_pos);
        return NULL;
    }
    if (err == 2) {
        PyErr_Format(PyExc_ValueError, "rope_kv: a KV slot is >= the store's length %zd", a.T);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"add_rms_norm", py_add_rms_norm, METH_VARARGS,
     "add_rms_norm(x, delta|0, w, s, n, rows, d, eps): fp32 pointers; see fused_cpu.c"},
    {"rope_kv", py_rope_kv, METH_VARARGS,
     "rope_kv(...): fp32 (QK-norm,) RoPE and KV-slot write in one pass; see fused_cpu.c"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_ops",
                                    "fastdiff's fused fp32 CPU ops (see csrc/cpu/fused_cpu.c)",
                                    -1, methods};

PyMODINIT_FUNC PyInit__cpu_ops(void) { return PyModule_Create(&module); }
