/* py_reduce.c - direct access to the reduction kernels, for tests and benchmarks. */
#include "py_status.h"
#include "cx_reduce.h"

static int get_buf(PyObject *o, Py_buffer *v, int writable)
{
    return PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0));
}

/* reduce_kernel(op, dtype, variant, dst, a, b): dst = a (op) b with the given kernel
 * variant (-1 = best). Lengths are in bytes of the buffers; all three must agree. Returns
 * False when this CPU/build lacks the variant (nothing is written). */
static PyObject *py_reduce_kernel(PyObject *self, PyObject *args)
{
    int op, dtype, variant;
    PyObject *od, *oa, *ob;
    if (!PyArg_ParseTuple(args, "iiiOOO", &op, &dtype, &variant, &od, &oa, &ob))
        return NULL;
    size_t isz = cx_dtype_size(dtype);
    if (!isz || op < 0 || op >= CX_NREDOPS)
        return cx_py_raise_msg(CX_ERR_INVALID, "reduce_kernel: unknown op or dtype code");
    cx_reduce_fn fn = variant < 0 ? cx_reduce_get(op, dtype) : cx_reduce_get_variant(op, dtype, variant);
    if (!fn)
        Py_RETURN_FALSE;
    Py_buffer d, a, b;
    if (get_buf(od, &d, 1) < 0)
        return NULL;
    if (get_buf(oa, &a, 0) < 0) { PyBuffer_Release(&d); return NULL; }
    if (get_buf(ob, &b, 0) < 0) { PyBuffer_Release(&d); PyBuffer_Release(&a); return NULL; }
    PyObject *ret = NULL;
    if (d.len != a.len || d.len != b.len || d.len % (Py_ssize_t)isz)
        cx_py_raise_msg(CX_ERR_INVALID, "reduce_kernel: buffers differ in size or are not whole elements");
    else {
        Py_BEGIN_ALLOW_THREADS
        fn(d.buf, a.buf, b.buf, (size_t)d.len / isz);
        Py_END_ALLOW_THREADS
        ret = Py_True;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&d);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return ret;
}

/* average_finish(buf, dtype, divisor): buf /= divisor in place. */
static PyObject *py_average_finish(PyObject *self, PyObject *args)
{
    int dtype, divisor;
    PyObject *ob;
    if (!PyArg_ParseTuple(args, "Oii", &ob, &dtype, &divisor))
        return NULL;
    size_t isz = cx_dtype_size(dtype);
    if (!isz || divisor <= 0)
        return cx_py_raise_msg(CX_ERR_INVALID, "average_finish: bad dtype or divisor");
    Py_buffer v;
    if (get_buf(ob, &v, 1) < 0)
        return NULL;
    if (v.len % (Py_ssize_t)isz) {
        PyBuffer_Release(&v);
        return cx_py_raise_msg(CX_ERR_INVALID, "average_finish: buffer is not whole elements");
    }
    Py_BEGIN_ALLOW_THREADS
    cx_average_finish(v.buf, dtype, (size_t)v.len / isz, divisor);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyObject *py_reduce_variant(PyObject *self, PyObject *args)
{
    int dtype;
    if (!PyArg_ParseTuple(args, "i", &dtype))
        return NULL;
    return PyUnicode_FromString(cx_reduce_variant_name(dtype));
}

PyMethodDef cx_py_reduce_methods[] = {
    {"reduce_kernel", py_reduce_kernel, METH_VARARGS,
     "reduce_kernel(op, dtype, variant, dst, a, b) -> bool: dst = a (op) b; variant -1 = best"},
    {"average_finish", py_average_finish, METH_VARARGS, "average_finish(buf, dtype, divisor)"},
    {"reduce_variant", py_reduce_variant, METH_VARARGS, "name of the best kernel variant"},
    {NULL, NULL, 0, NULL},
};
