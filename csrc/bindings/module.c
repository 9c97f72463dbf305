/* module.c - collx._C: constants (defined once, in C) and the method tables. */
#include "py_status.h"
#include "cx_reduce.h"

static int add_constants(PyObject *m)
{
    struct { const char *name; long value; } c[] = {
        {"FLOAT16", CX_FLOAT16}, {"FLOAT32", CX_FLOAT32}, {"FLOAT64", CX_FLOAT64},
        {"BFLOAT16", CX_BFLOAT16}, {"INT8", CX_INT8}, {"UINT8", CX_UINT8},
        {"INT32", CX_INT32}, {"INT64", CX_INT64}, {"NDTYPES", CX_NDTYPES},
        {"SUM", CX_SUM}, {"PROD", CX_PROD}, {"MIN", CX_MIN}, {"MAX", CX_MAX},
        {"AVERAGE", CX_AVERAGE}, {"NREDOPS", CX_NREDOPS},
        {"STEP_SEND", CX_STEP_SEND}, {"STEP_RECV", CX_STEP_RECV},
        {"STEP_RECV_REDUCE", CX_STEP_RECV_REDUCE}, {"STEP_COPY", CX_STEP_COPY},
        {"BUF_IN", CX_BUF_IN}, {"BUF_OUT", CX_BUF_OUT}, {"BUF_SCRATCH", CX_BUF_SCRATCH},
        {"STEP_SIZE", (long)sizeof(cx_step)},
        {"OK", CX_OK}, {"ERR_INVALID", CX_ERR_INVALID}, {"ERR_TRANSPORT", CX_ERR_TRANSPORT},
        {"ERR_TIMEOUT", CX_ERR_TIMEOUT}, {"ERR_MISMATCH", CX_ERR_MISMATCH},
        {"VARIANT_SCALAR", CX_VARIANT_SCALAR}, {"VARIANT_AVX2", CX_VARIANT_AVX2},
        {"VARIANT_AVX512", CX_VARIANT_AVX512},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        if (PyModule_AddIntConstant(m, c[i].name, c[i].value) < 0)
            return -1;
    PyObject *names = PyTuple_New(CX_NDTYPES);
    if (!names)
        return -1;
    for (int d = 0; d < CX_NDTYPES; d++)
        PyTuple_SET_ITEM(names, d, PyUnicode_FromString(cx_dtype_name(d)));
    return PyModule_AddObject(m, "DTYPE_NAMES", names);
}

static struct PyModuleDef cx_module = {
    PyModuleDef_HEAD_INIT, "collx._C", "collx's C core: kernels, transports, executor.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void)
{
    if (cx_py_status_init() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&cx_module);
    if (!m)
        return NULL;
    if (add_constants(m) < 0 || PyModule_AddFunctions(m, cx_py_reduce_methods) < 0 ||
        cx_py_add_comm(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
