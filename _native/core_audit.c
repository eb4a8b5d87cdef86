/* pytest-noinherit native core: the audit-event filter (noinherit_audit.h).
 *
 * CPython raises an audit event (PEP 578) for every import, open, compile,
 * exec, getattr of a frame's internals...: about ten for a trivial test.
 * A hook added with sys.addaudithook is a Python call for each of them,
 * 3-6 k instructions, to throw away all but the few spawn events the
 * plugin acts on.  A C hook (PySys_AddAuditHook) sees the event name as a
 * C string before any Python object is touched, so the events nobody wants
 * cost a byte compare here, and only the wanted ones call into Python.
 *
 * The only C file of the core that uses the Python C API; it is compiled
 * into the cffi module, which already links against the interpreter.
 */
#include <pyconfig.h>

/* The limited API of the oldest supported Python (3.9), like the rest of the
 * abi3 module, except where it cannot apply (debug and free-threaded builds
 * are no abi3 builds; cffi's _cffi_include.h makes the same choice). */
#if !defined(Py_DEBUG) && !defined(Py_TRACE_REFS) && !defined(Py_REF_DEBUG) \
    && !defined(Py_GIL_DISABLED) && !defined(Py_LIMITED_API)
#define Py_LIMITED_API 0x03090000
#endif
#include <Python.h>

#include <errno.h>
#include <string.h>

#include "noinherit_audit.h"

#define NIC_AUDIT_MAX_EVENTS 8
#define NIC_AUDIT_NAME_SIZE 64

#if defined(Py_LIMITED_API) && !defined(PYPY_VERSION)
/* PySys_AddAuditHook (PEP 578, CPython 3.8+) is not in the limited API, so
 * the limited headers do not declare it; the prototype is the one of
 * Include/cpython/sysmodule.h.  Every CPython from 3.8 exports the symbol
 * from the interpreter (libpython or the executable), where the dynamic
 * loader resolves this module's undefined symbols on Linux and macOS, so
 * one abi3 build works with all of them.  (Not on Windows, where an abi3
 * module links against python3.dll: build_core.py leaves this file out
 * there and the plugin keeps its Python hook.) */
typedef int (*nic_audit_hook_fn)(const char *event, PyObject *args, void *data);
extern int PySys_AddAuditHook(nic_audit_hook_fn hook, void *data);
#endif

/* All the state, touched only with the GIL held: by the hook, which CPython
 * calls with the thread state attached, and by nic_audit_add_hook, which
 * takes the GIL (cffi releases it around every call into the core). */
static int nic_audit_added;                 /* the C hook is in CPython's list */
static PyObject *nic_audit_callable;        /* strong reference, or NULL */
static PyInterpreterState *nic_audit_interp; /* whose events are wanted */
static int nic_audit_count;
static char nic_audit_names[NIC_AUDIT_MAX_EVENTS][NIC_AUDIT_NAME_SIZE];
/* First bytes of the wanted names, as a 256-bit set: most events fail here. */
static unsigned char nic_audit_first[256 / 8];

/* Raised just before CPython frees its C hooks in Py_FinalizeEx
 * (Python/sysmodule.c, _PySys_ClearAuditHooks). */
static const char nic_audit_clear_event[] = "cpython._PySys_ClearAuditHooks";

static int nic_audit_wanted(const char *event)
{
    unsigned char first = (unsigned char)event[0];
    if (!(nic_audit_first[first >> 3] & (1u << (first & 7))))
        return 0;
    for (int i = 0; i < nic_audit_count; i++)
        if (strcmp(event, nic_audit_names[i]) == 0)
            return 1;
    return 0;
}

static int nic_audit_hook(const char *event, PyObject *args, void *data)
{
    (void)data;
    if (!nic_audit_wanted(event)) {
        if (event[0] == 'c' && strcmp(event, nic_audit_clear_event) == 0) {
            /* The hook is gone after this event: an interpreter initialised
             * again in this process (embedding) must be able to add it again.
             * Objects are still alive here, so the reference can go. */
            nic_audit_added = 0;
            Py_CLEAR(nic_audit_callable);
        }
        return 0;
    }
    /* C hooks serve every interpreter of the process, a sys.addaudithook
     * hook only its own; the callable belongs to one. */
    if (nic_audit_callable == NULL || PyInterpreterState_Get() != nic_audit_interp)
        return 0;
    PyObject *name = PyUnicode_FromString(event);
    if (name == NULL)
        return -1;
    /* Hold the callable across the call: it may replace itself. */
    PyObject *callable = nic_audit_callable;
    Py_INCREF(callable);
    PyObject *result = PyObject_CallFunctionObjArgs(callable, name, args, NULL);
    Py_DECREF(callable);
    Py_DECREF(name);
    if (result == NULL)
        return -1; /* the exception aborts the audited operation (PEP 578) */
    Py_DECREF(result);
    return 0;
}

/* The callable <module>.<attribute>, a new reference; NULL with a Python
 * error set when there is none. */
static PyObject *nic_audit_lookup(const char *module, const char *attribute)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL)
        return NULL;
    PyObject *callable = PyObject_GetAttrString(mod, attribute);
    Py_DECREF(mod);
    if (callable != NULL && !PyCallable_Check(callable)) {
        Py_DECREF(callable);
        PyErr_SetString(PyExc_TypeError, "not callable");
        return NULL;
    }
    return callable;
}

static int nic_audit_install(const char *module, const char *attribute,
                             const char *const *events, int nevents)
{
    PyObject *callable = nic_audit_lookup(module, attribute);
    if (callable == NULL) {
        PyErr_Clear();
        errno = ENOENT;
        return -1;
    }
    if (!nic_audit_added) {
        /* Existing hooks see "sys.addaudithook" first and may refuse. */
        if (PySys_AddAuditHook(nic_audit_hook, NULL) < 0) {
            Py_DECREF(callable);
            PyErr_Clear();
            errno = EPERM;
            return -1;
        }
        /* A RuntimeError refusal is a 0 too, with nothing added: then, as
         * after sys.addaudithook, no event arrives (PEP 578 wants it so). */
    }
    PyObject *old = nic_audit_callable;
    nic_audit_callable = callable;
    Py_XDECREF(old);
    nic_audit_interp = PyInterpreterState_Get();
    memset(nic_audit_first, 0, sizeof nic_audit_first);
    for (int i = 0; i < nevents; i++) {
        unsigned char first = (unsigned char)events[i][0];
        strcpy(nic_audit_names[i], events[i]);
        nic_audit_first[first >> 3] |= (unsigned char)(1u << (first & 7));
    }
    nic_audit_count = nevents;
    nic_audit_added = 1;
    return 0;
}

int nic_audit_add_hook(const char *module, const char *attribute,
                       const char *const *events, int nevents)
{
#if defined(PYPY_VERSION)
    (void)module;
    (void)attribute;
    (void)events;
    (void)nevents;
    errno = ENOSYS;
    return -1;
#else
    if (module == NULL || attribute == NULL || events == NULL || nevents < 0
        || nevents > NIC_AUDIT_MAX_EVENTS) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < nevents; i++) {
        size_t len = events[i] == NULL ? 0 : strlen(events[i]);
        if (len == 0 || len >= NIC_AUDIT_NAME_SIZE) {
            errno = EINVAL;
            return -1;
        }
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    int result = nic_audit_install(module, attribute, events, nevents);
    PyGILState_Release(gil);
    return result;
#endif
}

int nic_audit_release(void)
{
#if defined(PYPY_VERSION)
    errno = ENOSYS;
    return -1;
#else
    PyGILState_STATE gil = PyGILState_Ensure();
    nic_audit_count = 0;
    memset(nic_audit_first, 0, sizeof nic_audit_first);
    Py_CLEAR(nic_audit_callable);
    PyGILState_Release(gil);
    return 0;
#endif
}
