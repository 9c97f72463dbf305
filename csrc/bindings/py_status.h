/* py_status.h - the one place where a cx_status becomes a Python exception. */
#ifndef CX_PY_STATUS_H
#define CX_PY_STATUS_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "cx.h"

/* Set the collx exception for st (message: cx_last_error()) and return NULL. */
PyObject *cx_py_raise(cx_status st);
/* Same, with a message of the caller's. */
PyObject *cx_py_raise_msg(cx_status st, const char *msg);
int cx_py_status_init(void);

/* Module pieces registered by module.c */
int cx_py_add_reduce(PyObject *m);
int cx_py_add_comm(PyObject *m);
extern PyMethodDef cx_py_reduce_methods[];
extern PyMethodDef cx_py_comm_methods[];
#endif
