/* py_comm.c - collx._C.Comm: a rank's connections plus the executor entry point.
 *
 * Python (collx/transports) makes and authenticates the sockets, then hands each one to
 * add_tcp or add_shm. plan() validates a packed schedule once; execute() runs it with the
 * GIL released. Everything that can fail comes back through cx_py_raise. */
#include <sched.h>

#include "py_status.h"
#include "cx_engine.h"
#include "../transport/shm/cx_shm.h"
#include "../transport/tcp/cx_tcp.h"

/* The allreduce fast path's cache: calls Python already validated once, by (bytes, dtype,
 * op). Direct-mapped; a miss just means one more trip through the Python path. */
#define CX_FAST_SLOTS 64
typedef struct {
    Py_ssize_t nbytes;
    int dtype, redop, divisor;
    uint32_t fingerprint;
    PyObject *capsule;   /* keeps the plan alive */
    cx_plan *plan;
} cx_fast_entry;

typedef struct {
    PyObject_HEAD
    cx_comm *comm;
    cx_fast_entry fast[CX_FAST_SLOTS];
    double fast_timeout;     /* the communicator's default timeout (fast calls have no timeout=) */
    int busy;                /* an execute is running (GIL released): one at a time per comm.
                              * Set and cleared with the GIL held, so Python threads see it
                              * atomically: the fast path backs off, the slow path waits. */
} CommObject;

static unsigned fast_slot(Py_ssize_t nbytes, int dtype, int redop)
{
    size_t h = (size_t)nbytes * 0x9E3779B97F4A7C15ull ^ (size_t)(dtype * 31 + redop);
    return (unsigned)(h >> 7) % CX_FAST_SLOTS;
}

static void plan_capsule_free(PyObject *cap)
{
    cx_plan_destroy(PyCapsule_GetPointer(cap, "collx.plan"));
}

static int Comm_init(CommObject *self, PyObject *args, PyObject *kw)
{
    int rank, size;
    if (!PyArg_ParseTuple(args, "ii", &rank, &size))
        return -1;
    cx_status st = cx_comm_create(rank, size, &self->comm);
    if (st != CX_OK) {
        cx_py_raise(st);
        return -1;
    }
    return 0;
}

static void Comm_dealloc(CommObject *self)
{
    for (int i = 0; i < CX_FAST_SLOTS; i++)
        Py_CLEAR(self->fast[i].capsule);
    cx_comm_destroy(self->comm);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static cx_comm *live(CommObject *self)
{
    if (!self->comm)
        cx_py_raise_msg(CX_ERR_INVALID, "collx communicator is closed (after shutdown())");
    return self->comm;
}

/* add_tcp(peer, fd): the transport owns fd on success. */
static PyObject *Comm_add_tcp(CommObject *self, PyObject *args)
{
    int peer, fd;
    if (!PyArg_ParseTuple(args, "ii", &peer, &fd) || !live(self))
        return NULL;
    cx_conn *c = NULL;
    cx_status st = cx_tcp_conn_create(fd, self->comm->rank, peer, &c);
    if (st == CX_OK && (st = cx_comm_set_conn(self->comm, peer, c)) != CX_OK)
        c->ops->destroy(c);
    return st == CX_OK ? Py_NewRef(Py_None) : cx_py_raise(st);
}

/* add_shm(peer, alive_fd, name, create, peer_pid, eager_bytes) */
static PyObject *Comm_add_shm(CommObject *self, PyObject *args)
{
    int peer, fd, create, pid;
    const char *name;
    Py_ssize_t eager;
    if (!PyArg_ParseTuple(args, "iisiin", &peer, &fd, &name, &create, &pid, &eager) ||
        !live(self))
        return NULL;
    cx_conn *c = NULL;
    cx_status st = cx_shm_conn_create(fd, self->comm->rank, peer, name, create, pid,
                                      (size_t)eager, &c);
    if (st == CX_OK && (st = cx_comm_set_conn(self->comm, peer, c)) != CX_OK)
        c->ops->destroy(c);
    return st == CX_OK ? Py_NewRef(Py_None) : cx_py_raise(st);
}

/* plan(steps: bytes, deps: bytes, scratch_bytes) -> capsule */
static PyObject *Comm_plan(CommObject *self, PyObject *args)
{
    Py_buffer steps, deps;
    Py_ssize_t scratch;
    if (!live(self) || !PyArg_ParseTuple(args, "y*y*n", &steps, &deps, &scratch))
        return NULL;
    cx_plan *p = NULL;
    cx_status st = cx_plan_create(steps.buf, (size_t)steps.len, deps.buf, (size_t)deps.len,
                                  (size_t)scratch, self->comm->size, self->comm->rank, &p);
    PyBuffer_Release(&steps);
    PyBuffer_Release(&deps);
    if (st != CX_OK)
        return cx_py_raise(st);
    PyObject *cap = PyCapsule_New(p, "collx.plan", plan_capsule_free);
    if (!cap)
        cx_plan_destroy(p);
    return cap;
}

static int get_buffer(PyObject *o, Py_buffer *v, int writable)
{
    if (o == Py_None) {
        v->obj = NULL;
        v->buf = NULL;
        v->len = 0;
        return 0;
    }
    return PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0));
}

/* execute(plan, in, out, dtype, redop, average_divisor, fingerprint, timeout_s) */
static PyObject *Comm_execute(CommObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8)
        return cx_py_raise_msg(CX_ERR_INVALID, "execute takes 8 arguments");
    if (!live(self))
        return NULL;
    cx_plan *p = PyCapsule_GetPointer(args[0], "collx.plan");
    if (!p)
        return NULL;
    cx_call call = {0};
    call.dtype = (int)PyLong_AsLong(args[3]);
    call.redop = (int)PyLong_AsLong(args[4]);
    call.average_divisor = (int)PyLong_AsLong(args[5]);
    call.fingerprint = (uint32_t)PyLong_AsUnsignedLongMask(args[6]);
    call.timeout_s = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer in, out;
    if (get_buffer(args[1], &in, 0) < 0)
        return NULL;
    if (get_buffer(args[2], &out, 1) < 0) {
        if (in.obj)
            PyBuffer_Release(&in);
        return NULL;
    }
    if (in.buf && out.buf && in.buf != out.buf && (char *)in.buf < (char *)out.buf + out.len &&
        (char *)out.buf < (char *)in.buf + in.len) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return cx_py_raise_msg(CX_ERR_INVALID, "collx: out partly overlaps the input; pass the "
                               "same array for an in-place call, or a separate one");
    }
    call.in = in.buf;
    call.in_len = (size_t)in.len;
    call.out = out.buf;
    call.out_len = (size_t)out.len;
    cx_status st;
    while (self->busy) {                         /* another thread's call: wait our turn */
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
    if (p->nsteps <= 2 && !p->reduces && p->nsteps && p->steps[0].kind == CX_STEP_COPY) {
        st = cx_execute(self->comm, p, &call);   /* a local copy: no need to drop the GIL */
    } else {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        st = cx_execute(self->comm, p, &call);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    if (in.obj)
        PyBuffer_Release(&in);
    if (out.obj)
        PyBuffer_Release(&out);
    return st == CX_OK ? Py_NewRef(Py_None) : cx_py_raise(st);
}

/* fast_clear(): forget every remembered call (the algorithm for some size may change) */
static PyObject *Comm_fast_clear(CommObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "fast_clear while a call is running");
        return NULL;
    }
    for (int i = 0; i < CX_FAST_SLOTS; i++) {
        Py_CLEAR(self->fast[i].capsule);
        self->fast[i].plan = NULL;
        self->fast[i].nbytes = -1;
    }
    Py_RETURN_NONE;
}

/* fast_register(nbytes, dtype, redop, plan, fingerprint, divisor): remember a validated call */
static PyObject *Comm_fast_register(CommObject *self, PyObject *args)
{
    Py_ssize_t nbytes;
    int dtype, redop, divisor;
    unsigned long fp;
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "niiOki", &nbytes, &dtype, &redop, &cap, &fp, &divisor))
        return NULL;
    cx_plan *p = PyCapsule_GetPointer(cap, "collx.plan");
    if (!p)
        return NULL;
    cx_fast_entry *e = &self->fast[fast_slot(nbytes, dtype, redop)];
    Py_INCREF(cap);
    Py_XSETREF(e->capsule, cap);
    e->nbytes = nbytes;
    e->dtype = dtype;
    e->redop = redop;
    e->divisor = divisor;
    e->fingerprint = (uint32_t)fp;
    e->plan = p;
    Py_RETURN_NONE;
}

/* numpy's buffer format -> dtype code, or -1 (then the Python path decides). */
static int format_dtype(const char *f, Py_ssize_t itemsize)
{
    if (!f)
        return -1;
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (f[0] == 0 || f[1] != 0)
        return -1;
    switch (f[0]) {
    case 'e': return CX_FLOAT16;
    case 'f': return CX_FLOAT32;
    case 'd': return CX_FLOAT64;
    case 'b': return CX_INT8;
    case 'B': return CX_UINT8;
    case 'i': case 'l': case 'q':
        return itemsize == 4 ? CX_INT32 : itemsize == 8 ? CX_INT64 : -1;
    default: return -1;
    }
}

/* allreduce_fast(x, out, redop) -> out, or None when the call is not one Python already
 * validated (then the Python path runs, with its full checks and messages). Only buffers
 * that are C-contiguous, of one shape and dtype, non-overlapping (or identical) qualify. */
static PyObject *Comm_allreduce_fast(CommObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !self->comm || self->busy)
        Py_RETURN_NONE;
    int redop = (int)PyLong_AsLong(args[2]);
    if (redop == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_buffer in, out;
    if (PyObject_GetBuffer(args[0], &in, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[1], &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&in);
        Py_RETURN_NONE;
    }
    PyObject *ret = Py_None;
    int dtype = format_dtype(in.format, in.itemsize);
    cx_fast_entry *e = &self->fast[fast_slot(in.len, dtype, redop)];
    int ok = dtype >= 0 && e->capsule && e->nbytes == in.len && e->dtype == dtype &&
             e->redop == redop && out.len == in.len && in.ndim == out.ndim &&
             format_dtype(out.format, out.itemsize) == dtype;
    for (int d = 0; ok && d < in.ndim; d++)
        ok = in.shape[d] == out.shape[d];
    if (ok && in.buf != out.buf && (char *)in.buf < (char *)out.buf + out.len &&
        (char *)out.buf < (char *)in.buf + in.len)
        ok = 0;                                /* partial overlap: let Python explain */
    if (ok) {
        cx_call call = {in.buf, (size_t)in.len, out.buf, (size_t)out.len, dtype, redop,
                        e->divisor, e->fingerprint, self->fast_timeout};
        PyObject *cap = e->capsule;             /* the plan must outlive a re-register */
        cx_plan *plan = e->plan;                /* read under the GIL: the slot may change */
        Py_INCREF(cap);
        cx_status st;
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        st = cx_execute(self->comm, plan, &call);
        Py_END_ALLOW_THREADS
        self->busy = 0;
        Py_DECREF(cap);
        if (st != CX_OK)
            ret = NULL, cx_py_raise(st);
        else
            ret = args[1];
    }
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return ret ? Py_NewRef(ret) : NULL;
}

static PyObject *Comm_set_spin(CommObject *self, PyObject *args)
{
    unsigned long spin;
    double yield_us = -1;
    if (!PyArg_ParseTuple(args, "k|d", &spin, &yield_us) || !live(self))
        return NULL;
    self->comm->spin = spin;
    if (yield_us >= 0)
        self->comm->yield_s = yield_us * 1e-6;
    Py_RETURN_NONE;
}

static PyObject *Comm_set_timeout(CommObject *self, PyObject *args)
{
    if (!PyArg_ParseTuple(args, "d", &self->fast_timeout))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Comm_close(CommObject *self, PyObject *noargs)
{
    cx_comm_destroy(self->comm);
    self->comm = NULL;
    Py_RETURN_NONE;
}

static PyObject *Comm_broken(CommObject *self, PyObject *noargs)
{
    return PyBool_FromLong(self->comm ? self->comm->broken : 1);
}

static PyMethodDef Comm_methods[] = {
    {"add_tcp", (PyCFunction)Comm_add_tcp, METH_VARARGS, "add_tcp(peer, fd)"},
    {"add_shm", (PyCFunction)Comm_add_shm, METH_VARARGS,
     "add_shm(peer, alive_fd, name, create, peer_pid, eager_bytes)"},
    {"plan", (PyCFunction)Comm_plan, METH_VARARGS, "plan(steps, deps, scratch_bytes) -> plan"},
    {"execute", (PyCFunction)(void (*)(void))Comm_execute, METH_FASTCALL,
     "execute(plan, in, out, dtype, redop, average_divisor, fingerprint, timeout_s)"},
    {"close", (PyCFunction)Comm_close, METH_NOARGS, "close every connection"},
    {"fast_clear", (PyCFunction)Comm_fast_clear, METH_NOARGS, "fast_clear()"},
    {"fast_register", (PyCFunction)Comm_fast_register, METH_VARARGS,
     "fast_register(nbytes, dtype, redop, plan, fingerprint, divisor)"},
    {"allreduce_fast", (PyCFunction)(void (*)(void))Comm_allreduce_fast, METH_FASTCALL,
     "allreduce_fast(x, out, redop) -> out, or None to take the Python path"},
    {"set_timeout", (PyCFunction)Comm_set_timeout, METH_VARARGS, "default timeout, seconds"},
    {"set_spin", (PyCFunction)Comm_set_spin, METH_VARARGS,
     "set_spin(spin[, yield_us]): idle passes that pause before yielding the core; with "
     "spin 0, microseconds a wait yields before it sleeps (default 50)"},
    {"broken", (PyCFunction)Comm_broken, METH_NOARGS, "True after a transport error"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CommType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "collx._C.Comm",
    .tp_basicsize = sizeof(CommObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Comm(rank, size): connections to the other ranks and the executor",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Comm_init,
    .tp_dealloc = (destructor)Comm_dealloc,
    .tp_methods = Comm_methods,
};

static PyObject *py_shm_unlink(PyObject *m, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    cx_status st = cx_shm_unlink(name);
    return st == CX_OK ? Py_NewRef(Py_None) : cx_py_raise(st);
}

static PyObject *py_shm_allow_cma(PyObject *m, PyObject *noargs)
{
    cx_shm_allow_cma();
    Py_RETURN_NONE;
}

static PyMethodDef comm_functions[] = {
    {"shm_unlink", py_shm_unlink, METH_VARARGS, "remove a pair segment's name"},
    {"shm_allow_cma", py_shm_allow_cma, METH_NOARGS, "let peers read our memory (Yama)"},
    {NULL, NULL, 0, NULL},
};

int cx_py_add_comm(PyObject *m)
{
    if (PyType_Ready(&CommType) < 0)
        return -1;
    Py_INCREF(&CommType);
    if (PyModule_AddObject(m, "Comm", (PyObject *)&CommType) < 0)
        return -1;
    return PyModule_AddFunctions(m, comm_functions);
}
