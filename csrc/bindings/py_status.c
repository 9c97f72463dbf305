/* py_status.c - converts cx_status codes to collx exceptions (collx.errors) once. */
#include "py_status.h"

static PyObject *exc_base, *exc_transport, *exc_timeout, *exc_mismatch, *exc_invalid;

int cx_py_status_init(void)
{
    PyObject *mod = PyImport_ImportModule("collx.errors");
    if (!mod)
        return -1;
    exc_base = PyObject_GetAttrString(mod, "CollxError");
    exc_transport = PyObject_GetAttrString(mod, "TransportError");
    exc_timeout = PyObject_GetAttrString(mod, "CollxTimeout");
    exc_mismatch = PyObject_GetAttrString(mod, "MismatchError");
    exc_invalid = PyObject_GetAttrString(mod, "InvalidUsage");
    Py_DECREF(mod);
    return (exc_base && exc_transport && exc_timeout && exc_mismatch && exc_invalid) ? 0 : -1;
}

static PyObject *exc_for(cx_status st)
{
    switch (st) {
    case CX_ERR_INVALID: return exc_invalid;
    case CX_ERR_TRANSPORT: return exc_transport;
    case CX_ERR_TIMEOUT: return exc_timeout;
    case CX_ERR_MISMATCH: return exc_mismatch;
    default: return exc_base;
    }
}

PyObject *cx_py_raise_msg(cx_status st, const char *msg)
{
    PyObject *exc = exc_for(st);
    PyObject *args = Py_BuildValue("(s)", msg);
    if (args) {
        PyObject *inst = PyObject_Call(exc, args, NULL);
        Py_DECREF(args);
        if (inst) {
            PyObject *peer = PyLong_FromLong(cx_last_error_peer());
            PyObject *code = PyLong_FromLong((long)st);
            if (peer) PyObject_SetAttrString(inst, "peer", peer);
            if (code) PyObject_SetAttrString(inst, "status", code);
            Py_XDECREF(peer);
            Py_XDECREF(code);
            PyErr_SetObject(exc, inst);
            Py_DECREF(inst);
        }
    }
    return NULL;
}

PyObject *cx_py_raise(cx_status st)
{
    const char *msg = cx_last_error();
    return cx_py_raise_msg(st, (msg && msg[0]) ? msg : "collx: internal error (no message)");
}
