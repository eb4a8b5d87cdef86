/* pytest-noinherit native core: the audit-event filter (core_audit.c).
 * POSIX builds only, so a separate header like noinherit_windows.h: on
 * Windows the plugin keeps its Python audit hook, because an abi3 module
 * links against python3.dll, which does not export PySys_AddAuditHook.
 *
 * Also part of the cffi cdef (build_core.py), so cffi's parser only.
 */

/* Add one C audit hook (PEP 578, PySys_AddAuditHook) to the process that
 * calls the Python callable <module>.<attribute> as hook(event, args) for
 * the nevents event names in events, and returns for any other event
 * without touching a Python object.  The callable is looked up once, here,
 * and kept; a second call replaces the callable and the names and adds no
 * second hook.  An exception the callable raises propagates out of the
 * audited operation, as from a hook added with sys.addaudithook.  Events of
 * another interpreter than the calling one are ignored.
 *
 * Returns 0, or -1 with errno and no Python error set: ENOSYS where this
 * interpreter has no C audit hooks (PyPy), EINVAL for more than 8 names,
 * an empty one or one of 64 bytes or more, ENOENT when the callable cannot
 * be found, EPERM when a hook already there raised at "sys.addaudithook"
 * (the caller falls back to sys.addaudithook, which raises it again).  A
 * RuntimeError there means "do not add" (PEP 578) and is 0, nothing added,
 * as sys.addaudithook returns None. */
int nic_audit_add_hook(const char *module, const char *attribute,
                       const char *const *events, int nevents);

/* Drop the callable and the names, keeping the C hook (CPython cannot
 * remove one): every event returns at once until the next
 * nic_audit_add_hook.  Held until interpreter shutdown, the callable would
 * keep its module and everything reachable from it alive into the
 * finalisation's garbage collections.  Returns 0; ENOSYS as above. */
int nic_audit_release(void);
