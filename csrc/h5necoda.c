/*
 * h5necoda.c -- HDF5 dynamic-plugin shim for the necoda filter.
 *
 * This file implements only the HDF5 plugin ABI (H5PLget_plugin_type, H5PLget_plugin_info and an
 * H5Z_class2_t). All compression happens in Python (necoda_filter._bridge), reached through the
 * interpreter already running in the process. The library links neither libhdf5 nor libpython:
 *   - HDF5 symbols (for set_local and error reporting) are resolved at run time from the HDF5 library
 *     that loaded this plugin (found with dladdr on the caller of H5PLget_plugin_info) or, when
 *     registered from Python, from the library whose path Python hands to necoda_h5_init();
 *   - Python symbols are resolved with dlsym(RTLD_DEFAULT); a host without Python (h5dump, ...) gets
 *     a clear error from the filter instead of a crash.
 *
 * Filter contract (HDF5 H5Z_func_t): on success return the number of valid bytes in *buf (a malloc'd
 * buffer of *buf_size bytes, the input freed); on failure return 0 and leave *buf untouched.
 *
 * cd_values layout (docs/FORMAT.md, version NECODA_CD_LAYOUT_VERSION):
 *   [0] layout version  [1] mode id (255 = auto)  [2..7] mode options
 *   [NECODA_CD_MODEL_SLOT, +1] model id (64 bits, low word first; 0, 0 = default model)
 *   then, appended by set_local: type class, type size, signed, byte order, rank, chunk dims...
 * Layout 1 has NECODA_CD_USER_SLOTS_V1 user slots (no model id: the default model); it is what
 * necoda_filter.Necoda writes unless a model is named, and what older files hold. cd_values are parsed
 * by the version in slot 0.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef NECODA_FILTER_ID
#error "NECODA_FILTER_ID must be defined by the build (read from necoda_filter/constants.py)"
#endif
#ifndef NECODA_CD_LAYOUT_VERSION
#error "NECODA_CD_LAYOUT_VERSION must be defined by the build"
#endif
#ifndef NECODA_CD_USER_SLOTS
#error "NECODA_CD_USER_SLOTS must be defined by the build"
#endif
#if !defined(NECODA_CD_USER_SLOTS_V1) || !defined(NECODA_CD_MODEL_SLOT)
#error "NECODA_CD_USER_SLOTS_V1 and NECODA_CD_MODEL_SLOT must be defined by the build"
#endif
#if NECODA_CD_MODEL_SLOT + 2 > NECODA_CD_USER_SLOTS || NECODA_CD_USER_SLOTS_V1 > NECODA_CD_MODEL_SLOT
#error "the model id slots must lie after the layout-1 user slots and inside the current ones"
#endif
#define NECODA_MODE_AUTO 255u
#define H5Z_FILTER_SHUFFLE 2
#define NECODA_MAX_RANK 8

#define EXPORT __attribute__((visibility("default")))

/* user slots of cd_values whose slot 0 holds ``version`` (0 for an unknown version) */
static size_t user_slots_of(unsigned version) {
    return version == NECODA_CD_LAYOUT_VERSION ? (size_t)NECODA_CD_USER_SLOTS
           : version == 1u ? (size_t)NECODA_CD_USER_SLOTS_V1 : 0u;
}

/* ---- the slice of the HDF5 ABI we use (stable since HDF5 1.10: hid_t is 64-bit) ---------------- */
typedef int64_t hid_t;
typedef int herr_t;
typedef int htri_t;
typedef uint64_t hsize_t;
typedef int H5Z_filter_t;
typedef htri_t (*H5Z_can_apply_func_t)(hid_t, hid_t, hid_t);
typedef herr_t (*H5Z_set_local_func_t)(hid_t, hid_t, hid_t);
typedef size_t (*H5Z_func_t)(unsigned int, size_t, const unsigned int[], size_t, size_t *, void **);
typedef struct {
    int version;
    H5Z_filter_t id;
    unsigned encoder_present;
    unsigned decoder_present;
    const char *name;
    H5Z_can_apply_func_t can_apply;
    H5Z_set_local_func_t set_local;
    H5Z_func_t filter;
} H5Z_class2_t;
#define H5Z_CLASS_T_VERS 1
#define H5Z_FLAG_REVERSE 0x0100u
#define H5Z_FLAG_OPTIONAL 0x0001u
#define H5PL_TYPE_FILTER 0
#define H5T_INTEGER 0
#define H5T_FLOAT 1
#define H5T_ORDER_BE 1

typedef struct {
    int (*Tget_class)(hid_t);
    size_t (*Tget_size)(hid_t);
    int (*Tget_sign)(hid_t);
    int (*Tget_order)(hid_t);
    int (*Pget_chunk)(hid_t, int, hsize_t[]);
    herr_t (*Pget_filter_by_id2)(hid_t, H5Z_filter_t, unsigned *, size_t *, unsigned[], size_t, char[], unsigned *);
    herr_t (*Pmodify_filter)(hid_t, H5Z_filter_t, unsigned, size_t, const unsigned[]);
    int (*Pget_nfilters)(hid_t);
    H5Z_filter_t (*Pget_filter2)(hid_t, unsigned, unsigned *, size_t *, unsigned[], size_t, char[], unsigned *);
    herr_t (*Zregister)(const void *);
    herr_t (*Epush2)(hid_t, const char *, const char *, unsigned, hid_t, hid_t, hid_t, const char *, ...);
    hid_t *E_ERR_CLS, *E_PLINE, *E_CALLBACK;
    int ready;
} hdf5_api;
static hdf5_api H5;

/* ---- the slice of the CPython C API we use (stable ABI functions) ------------------------------ */
typedef struct _object PyObject;
typedef struct {
    int (*IsInitialized)(void);
    int (*GILState_Ensure)(void);
    void (*GILState_Release)(int);
    PyObject *(*Import_ImportModule)(const char *);
    PyObject *(*Object_GetAttrString)(PyObject *, const char *);
    PyObject *(*Object_CallObject)(PyObject *, PyObject *);
    PyObject *(*Tuple_New)(ssize_t);
    int (*Tuple_SetItem)(PyObject *, ssize_t, PyObject *);
    PyObject *(*Long_FromUnsignedLong)(unsigned long);
    PyObject *(*MemoryView_FromMemory)(char *, ssize_t, int);
    int (*Bytes_AsStringAndSize)(PyObject *, char **, ssize_t *);
    PyObject *(*Tuple_GetItem)(PyObject *, ssize_t);
    void *(*Long_AsVoidPtr)(PyObject *);
    ssize_t (*Long_AsSsize_t)(PyObject *);
    void (*DecRef)(PyObject *);
    PyObject *(*Err_Occurred)(void);
    void (*Err_Fetch)(PyObject **, PyObject **, PyObject **);
    PyObject *(*Object_Str)(PyObject *);
    const char *(*Unicode_AsUTF8)(PyObject *);
    void (*Err_Clear)(void);
    int (*Err_GivenExceptionMatches)(PyObject *, PyObject *);
    void (*Err_Restore)(PyObject *, PyObject *, PyObject *);
    int (*AddPendingCall)(int (*)(void *), void *);
    PyObject **Exc_Exception; /* the address of the variable PyExc_Exception */
    int ready;
} python_api;
static python_api PY;

static void *hdf5_handle = NULL;

#define RESOLVE(dst, handle, name) (*(void **)(&(dst)) = dlsym((handle), (name)))

static int resolve_hdf5(void *handle) {
    hdf5_api a;
    memset(&a, 0, sizeof a);
    RESOLVE(a.Tget_class, handle, "H5Tget_class");
    RESOLVE(a.Tget_size, handle, "H5Tget_size");
    RESOLVE(a.Tget_sign, handle, "H5Tget_sign");
    RESOLVE(a.Tget_order, handle, "H5Tget_order");
    RESOLVE(a.Pget_chunk, handle, "H5Pget_chunk");
    RESOLVE(a.Pget_filter_by_id2, handle, "H5Pget_filter_by_id2");
    RESOLVE(a.Pmodify_filter, handle, "H5Pmodify_filter");
    RESOLVE(a.Pget_nfilters, handle, "H5Pget_nfilters");
    RESOLVE(a.Pget_filter2, handle, "H5Pget_filter2");
    RESOLVE(a.Zregister, handle, "H5Zregister");
    RESOLVE(a.Epush2, handle, "H5Epush2");
    RESOLVE(a.E_ERR_CLS, handle, "H5E_ERR_CLS_g");
    RESOLVE(a.E_PLINE, handle, "H5E_PLINE_g");
    RESOLVE(a.E_CALLBACK, handle, "H5E_CALLBACK_g");
    if (!a.Tget_class || !a.Tget_size || !a.Tget_sign || !a.Tget_order || !a.Pget_chunk ||
        !a.Pget_filter_by_id2 || !a.Pmodify_filter || !a.Pget_nfilters || !a.Pget_filter2 || !a.Zregister)
        return -1;
    a.ready = 1;
    H5 = a;
    return 0;
}

static int resolve_python(void) {
    if (PY.ready) return 0;
    python_api a;
    memset(&a, 0, sizeof a);
    void *h = RTLD_DEFAULT;
    RESOLVE(a.IsInitialized, h, "Py_IsInitialized");
    RESOLVE(a.GILState_Ensure, h, "PyGILState_Ensure");
    RESOLVE(a.GILState_Release, h, "PyGILState_Release");
    RESOLVE(a.Import_ImportModule, h, "PyImport_ImportModule");
    RESOLVE(a.Object_GetAttrString, h, "PyObject_GetAttrString");
    RESOLVE(a.Object_CallObject, h, "PyObject_CallObject");
    RESOLVE(a.Tuple_New, h, "PyTuple_New");
    RESOLVE(a.Tuple_SetItem, h, "PyTuple_SetItem");
    RESOLVE(a.Long_FromUnsignedLong, h, "PyLong_FromUnsignedLong");
    RESOLVE(a.MemoryView_FromMemory, h, "PyMemoryView_FromMemory");
    RESOLVE(a.Bytes_AsStringAndSize, h, "PyBytes_AsStringAndSize");
    RESOLVE(a.Tuple_GetItem, h, "PyTuple_GetItem");
    RESOLVE(a.Long_AsVoidPtr, h, "PyLong_AsVoidPtr");
    RESOLVE(a.Long_AsSsize_t, h, "PyLong_AsSsize_t");
    RESOLVE(a.DecRef, h, "Py_DecRef");
    RESOLVE(a.Err_Occurred, h, "PyErr_Occurred");
    RESOLVE(a.Err_Fetch, h, "PyErr_Fetch");
    RESOLVE(a.Object_Str, h, "PyObject_Str");
    RESOLVE(a.Unicode_AsUTF8, h, "PyUnicode_AsUTF8");
    RESOLVE(a.Err_Clear, h, "PyErr_Clear");
    RESOLVE(a.Err_GivenExceptionMatches, h, "PyErr_GivenExceptionMatches");
    RESOLVE(a.Err_Restore, h, "PyErr_Restore");
    RESOLVE(a.AddPendingCall, h, "Py_AddPendingCall");
    RESOLVE(a.Exc_Exception, h, "PyExc_Exception");
    void **p = (void **)&a;
    for (size_t i = 0; i < offsetof(python_api, ready) / sizeof(void *); i++)
        if (!p[i]) return -1;
    if (!a.IsInitialized()) return -1;
    a.ready = 1;
    PY = a;
    return 0;
}

/* Report an error on HDF5's error stack and, when HDF5 is unavailable or no Python logger can say it,
 * on stderr (HDF5 2.0 does not show errors pushed from inside a filter callback in its own stack). */
static void report(const char *func, const char *msg, int also_stderr) {
    if (H5.ready && H5.Epush2 && H5.E_ERR_CLS && H5.E_PLINE && H5.E_CALLBACK)
        H5.Epush2(0 /* H5E_DEFAULT */, __FILE__, func, __LINE__, *H5.E_ERR_CLS, *H5.E_PLINE, *H5.E_CALLBACK,
                  "%s", msg);
    else
        also_stderr = 1;
    if (also_stderr) fprintf(stderr, "necoda filter (%s): %s\n", func, msg);
}

static htri_t necoda_can_apply(hid_t dcpl, hid_t type, hid_t space);
static herr_t necoda_set_local(hid_t dcpl, hid_t type, hid_t space);
static size_t necoda_filter(unsigned flags, size_t cd_nelmts, const unsigned cd_values[], size_t nbytes,
                            size_t *buf_size, void **buf);

static const H5Z_class2_t NECODA_CLASS = {
    H5Z_CLASS_T_VERS, NECODA_FILTER_ID, 1, 1,
    "necoda: neuroscience data compression (lossless, bounded, learned); https://pypi.org/project/necoda-filter",
    necoda_can_apply, necoda_set_local, necoda_filter,
};

/* Find the HDF5 library that is calling us (plugin path) so set_local and error reporting use it. */
static void bind_to_caller(const void *caller) {
    if (H5.ready) return;
    Dl_info info;
    if (caller && dladdr(caller, &info) && info.dli_fname) {
        void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        if (h && resolve_hdf5(h) == 0) { hdf5_handle = h; return; }
        if (h) dlclose(h);
    }
    resolve_hdf5(RTLD_DEFAULT);
}

EXPORT int H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }

EXPORT const void *H5PLget_plugin_info(void) {
    bind_to_caller(__builtin_return_address(0));
    return &NECODA_CLASS;
}

/* Called from Python (necoda_filter._plugin) with the path of a loaded library that depends on the
 * HDF5 h5py uses; registers the filter with that HDF5. Returns 0 on success. */
EXPORT int necoda_h5_init(const char *lib_path) {
    void *h = lib_path ? dlopen(lib_path, RTLD_LAZY | RTLD_NOLOAD) : NULL;
    if (!h) return -1;
    if (resolve_hdf5(h) != 0) { dlclose(h); return -2; }
    hdf5_handle = h;
    return H5.Zregister(&NECODA_CLASS) < 0 ? -3 : 0;
}

EXPORT int necoda_filter_id(void) { return NECODA_FILTER_ID; }

static htri_t necoda_can_apply(hid_t dcpl, hid_t type, hid_t space) {
    (void)dcpl; (void)space;
    if (!H5.ready) return 1; /* cannot check: let set_local decide */
    int cls = H5.Tget_class(type);
    size_t size = H5.Tget_size(type);
    if ((cls == H5T_INTEGER && (size == 1 || size == 2 || size == 4 || size == 8)) ||
        (cls == H5T_FLOAT && (size == 2 || size == 4 || size == 8)))
        return 1;
    /* no report() here: pushing onto HDF5's error stack from can_apply crashed HDF5 2.0 at file close.
     * The Python side (filters.Necoda, h5py's fill_dcpl hook) refuses such dtypes with a clear error. */
    return 0;
}

/* A dataset is being created with the filter: import necoda_filter (once), whose atexit handler
 * (necoda_filter/exitflush.py) flushes files left open at exit while Python can still run the codecs;
 * HDF5 would otherwise flush their cached chunks during interpreter shutdown, when this filter cannot
 * call Python, and those chunks were lost. Best effort: without Python, or if the import fails, nothing
 * changes (an error already set by the caller is kept as it was). */
static void import_package(void) {
    static int done = 0;
    if (done || resolve_python() != 0) return;
    int gil = PY.GILState_Ensure();
    PyObject *t = NULL, *v = NULL, *tb = NULL;
    PY.Err_Fetch(&t, &v, &tb);
    PyObject *m = PY.Import_ImportModule("necoda_filter");
    if (m) {
        PY.DecRef(m);
        done = 1;
    } else {
        PY.Err_Clear();
    }
    PY.Err_Restore(t, v, tb);
    PY.GILState_Release(gil);
}

static herr_t necoda_set_local(hid_t dcpl, hid_t type, hid_t space) {
    (void)space;
    import_package();
    if (!H5.ready) {
        fprintf(stderr, "necoda filter: HDF5 symbols unavailable in set_local\n");
        return -1;
    }
    unsigned flags = 0, values[NECODA_CD_USER_SLOTS + 5 + NECODA_MAX_RANK];
    size_t nelmts = NECODA_CD_USER_SLOTS;
    unsigned user[NECODA_CD_USER_SLOTS];
    memset(user, 0, sizeof user);
    if (H5.Pget_filter_by_id2(dcpl, NECODA_FILTER_ID, &flags, &nelmts, user, 0, NULL, NULL) < 0) return -1;
    size_t nuser;
    if (nelmts == 0) { /* the filter id with no options: the cd_values of necoda_filter.Necoda() (a test
                        * compares them): layout 1, the default model. Slots 2-3 and 4-5 hold max_error and
                        * max_error_noise as doubles, low word first: unset is NaN (all zero would mean a
                        * bound of 0, and mode "auto" would then store every movie chunk raw) */
        user[0] = 1u;
        user[1] = NECODA_MODE_AUTO;
        user[2] = 0u; user[3] = 0x7FF80000u;
        user[4] = 0u; user[5] = 0x7FF80000u;
        nuser = NECODA_CD_USER_SLOTS_V1;
    } else if ((nuser = user_slots_of(user[0])) == 0) {
        report("necoda_set_local", "unknown necoda cd_values layout version (create the filter with necoda_filter.Necoda)", 1);
        return -1;
    }
    /* the user slots of that layout only: cd_values copied whole from another necoda dataset (h5py's
     * create_dataset_like, a layout-1 dataset's cd_values) hold set_local's slots after them */
    for (size_t i = nuser; i < NECODA_CD_USER_SLOTS; i++) user[i] = 0u;
    /* necoda codes the chunk as an array of the dataset's type, so it must see the chunk as the type's
     * values: a filter before it that changes the size (scaleoffset, nbit, fletcher32, a compressor) made
     * every chunk unreadable, and shuffle (bytes regrouped) broke bounded mode's error bound and the learned
     * model; only the exact modes (raw, lossless) take shuffled bytes, bit for bit. */
    int nf = H5.Pget_nfilters(dcpl);
    for (int i = 0; i < nf; i++) {
        unsigned fflags = 0;
        size_t fn = 0;
        H5Z_filter_t fid = H5.Pget_filter2(dcpl, (unsigned)i, &fflags, &fn, NULL, 0, NULL, NULL);
        if (fid == NECODA_FILTER_ID) break;
        if (fid == H5Z_FILTER_SHUFFLE && (user[1] == NECODA_MODE_RAW || user[1] == NECODA_MODE_LOSSLESS)) continue;
        report("necoda_set_local", fid == H5Z_FILTER_SHUFFLE
               ? "shuffle before necoda regroups the bytes a lossy or auto necoda mode codes (its error bound and "
                 "model would apply to shuffled bytes): drop shuffle, necoda does its own prediction"
               : "a filter before necoda in the pipeline changes the bytes it codes: necoda must come first "
                 "(checksums such as fletcher32 after it)", 1);
        return -1;
    }
    hsize_t dims[NECODA_MAX_RANK];
    int rank = H5.Pget_chunk(dcpl, NECODA_MAX_RANK, dims);
    if (rank < 1 || rank > NECODA_MAX_RANK) {
        report("necoda_set_local", "necoda needs a chunked dataset of rank 1 to 8", 1);
        return -1;
    }
    memcpy(values, user, nuser * sizeof user[0]);
    size_t n = nuser;
    values[n++] = (unsigned)H5.Tget_class(type);
    values[n++] = (unsigned)H5.Tget_size(type);
    values[n++] = H5.Tget_class(type) == H5T_INTEGER ? (unsigned)H5.Tget_sign(type) : 1u;
    values[n++] = H5.Tget_order(type) == H5T_ORDER_BE ? 1u : 0u;
    values[n++] = (unsigned)rank;
    for (int i = 0; i < rank; i++) {
        if (dims[i] > 0xFFFFFFFFull) { report("necoda_set_local", "chunk dimension too large", 1); return -1; }
        values[n++] = (unsigned)dims[i];
    }
    /* Mandatory, never optional: a chunk the filter cannot encode must fail the write, not be stored
     * silently uncompressed (h5py adds plugin filters as optional). */
    return H5.Pmodify_filter(dcpl, NECODA_FILTER_ID, flags & ~H5Z_FLAG_OPTIONAL, n, values);
}

/* A KeyboardInterrupt (Ctrl-C) or SystemExit (a signal handler calling sys.exit) raised while the filter
 * ran Python code in the main thread. Failing the chunk made HDF5 make h5py raise its own OSError, and
 * the interrupt was lost: it is raised again, as itself, by a pending call that the interpreter runs as
 * soon as the main thread executes Python code outside the filter. A read fails its chunk (and h5py's
 * OSError gives way to the interrupt); a write stores the chunk raw in the container instead, so the
 * data written so far stays whole (a failed chunk write in a flush from a destructor was lost). Guarded
 * by the GIL. */
static PyObject *interrupt_exc[3];

static int raise_interrupt(void *arg) {
    (void)arg;
    if (!interrupt_exc[0]) return 0;
    PY.Err_Restore(interrupt_exc[0], interrupt_exc[1], interrupt_exc[2]);
    interrupt_exc[0] = interrupt_exc[1] = interrupt_exc[2] = NULL;
    return -1;
}

/* Signal handlers run in the interpreter's main thread, which on Linux is the process's first thread
 * (also in a child forked from another thread: the forking thread becomes both). */
static int in_main_thread(void) {
#ifdef SYS_gettid
    return (pid_t)syscall(SYS_gettid) == getpid();
#else
    return 0;
#endif
}

/* Whether the "cannot import necoda_filter" explanation has been printed (once per process). */
static int import_error_said = 0;
#define IMPORT_HINT "the HDF5 plugin found the necoda filter but this Python cannot import the necoda_filter " \
    "package, which runs its codecs: install necoda-filter in the environment that reads the file " \
    "(pip install necoda-filter), or convert the file for readers without it with `necoda decompress`"

/* Move the Python exception's text onto HDF5's error stack (h5py then raises its own OSError for the
 * failed read; necoda_filter._bridge has already logged the exception with its full message). With
 * ``importing``, the exception came from importing necoda_filter._bridge: nothing has logged it, and h5py
 * would only say "filter returned failure", so the reason and the remedy also go to stderr (once). */
static void python_error(const char *func, int importing) {
    char msg[1024];
    PyObject *t = NULL, *v = NULL, *tb = NULL;
    PY.Err_Fetch(&t, &v, &tb);
    if (t && !PY.Err_GivenExceptionMatches(t, *PY.Exc_Exception) && !interrupt_exc[0] && in_main_thread() &&
        PY.AddPendingCall(raise_interrupt, NULL) == 0) {
        interrupt_exc[0] = t; /* the references move to raise_interrupt */
        interrupt_exc[1] = v;
        interrupt_exc[2] = tb;
        report(func, "necoda: interrupted", 0);
        return;
    }
    const char *text = NULL;
    PyObject *s = v ? PY.Object_Str(v) : NULL;
    if (s) text = PY.Unicode_AsUTF8(s);
    if (importing)
        snprintf(msg, sizeof msg, "necoda: %s (%s)", IMPORT_HINT, text ? text : "import failed");
    else
        snprintf(msg, sizeof msg, "necoda: %s", text ? text : "Python error in necoda_filter._bridge");
    if (!text) PY.Err_Clear();
    if (s) PY.DecRef(s);
    if (t) PY.DecRef(t);
    if (v) PY.DecRef(v);
    if (tb) PY.DecRef(tb);
    report(func, msg, importing && !import_error_said); /* else _bridge has logged it in full */
    if (importing) import_error_said = 1;
}

/* ---------------------------------------------------------------------------------------------------
 * Raw container written in C, for chunks HDF5 flushes while the interpreter is shutting down (a file
 * closed by garbage collection during finalization, after necoda_filter/exitflush.py ran or when it could
 * not run): the Python codecs can no longer be called, and failing the write loses the chunk. It is stored
 * as the Python raw mode stores it (docs/FORMAT.md: format version 1, mode raw, "{}" parameters, no model,
 * little-endian payload, CRC-32 over header and payload), so every reader decodes it.
 * ------------------------------------------------------------------------------------------------- */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static int dtype_code(unsigned cls, unsigned size, unsigned sign) {
    if (cls == H5T_INTEGER) {
        switch (size) {
        case 1: return sign ? NECODA_DTYPE_i1 : NECODA_DTYPE_u1;
        case 2: return sign ? NECODA_DTYPE_i2 : NECODA_DTYPE_u2;
        case 4: return sign ? NECODA_DTYPE_i4 : NECODA_DTYPE_u4;
        case 8: return sign ? NECODA_DTYPE_i8 : NECODA_DTYPE_u8;
        }
    } else if (cls == H5T_FLOAT) {
        switch (size) {
        case 2: return NECODA_DTYPE_f2;
        case 4: return NECODA_DTYPE_f4;
        case 8: return NECODA_DTYPE_f8;
        }
    }
    return 0;
}

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* the container's size, or 0 when the chunk cannot be described (cd_values not set by set_local, size
 * mismatch, an unknown type): the caller then reports the failure */
static size_t raw_container(size_t cd_nelmts, const unsigned cd[], size_t nbytes, size_t *buf_size, void **buf) {
    const size_t u = cd_nelmts ? user_slots_of(cd[0]) : 0u; /* by the layout version in slot 0 */
    if (!u || cd_nelmts < u + 5) return 0;
    const unsigned cls = cd[u], size = cd[u + 1], sign = cd[u + 2], be = cd[u + 3], rank = cd[u + 4];
    const int code = dtype_code(cls, size, sign);
    if (!code || rank < 1 || rank > NECODA_MAX_RANK || cd_nelmts < u + 5 + rank) return 0;
    uint64_t n = size;
    for (unsigned i = 0; i < rank; i++) n *= cd[u + 5 + i];
    if (n != nbytes) return 0;
    const size_t head = 4 + 4 + 4 * (size_t)rank + 2 + 2 + 1 + 8;
    unsigned char *out = malloc(head + 4 + nbytes);
    if (!out) return 0;
    unsigned char *h = out;
    memcpy(h, NECODA_MAGIC, 4);
    h[4] = 1; /* format version 1: what the Python raw mode writes for C-ordered chunks */
    h[5] = (unsigned char)NECODA_MODE_RAW;
    h[6] = (unsigned char)code;
    h[7] = (unsigned char)rank;
    h += 8;
    for (unsigned i = 0; i < rank; i++, h += 4) put_le(h, cd[u + 5 + i], 4);
    put_le(h, 2, 2);
    memcpy(h + 2, "{}", 2);
    h[4] = 0; /* no model id */
    put_le(h + 5, nbytes, 8);
    unsigned char *payload = out + head + 4;
    memcpy(payload, *buf, nbytes);
    if (be && size > 1) /* the dataset's big-endian file type: the container holds little-endian values */
        for (size_t k = 0; k < nbytes; k += size)
            for (unsigned a = 0, b = size - 1; a < b; a++, b--) {
                unsigned char t = payload[k + a];
                payload[k + a] = payload[k + b];
                payload[k + b] = t;
            }
    uint32_t crc = crc32_update(crc32_update(0, out, head), payload, nbytes);
    put_le(out + head, crc, 4);
    free(*buf);
    *buf = out;
    *buf_size = head + 4 + nbytes;
    return head + 4 + nbytes;
}

/* Python was here (libpython's symbols are in the process) but is no longer initialised: shutting down */
static int python_shutting_down(void) {
    int (*initialized)(void) = PY.ready ? PY.IsInitialized : (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    return initialized && !initialized();
}

static size_t necoda_filter(unsigned flags, size_t cd_nelmts, const unsigned cd_values[], size_t nbytes,
                            size_t *buf_size, void **buf) {
    const char *func = (flags & H5Z_FLAG_REVERSE) ? "necoda_decode" : "necoda_encode";
    if (python_shutting_down()) {
        if (!(flags & H5Z_FLAG_REVERSE)) {
            size_t got = raw_container(cd_nelmts, cd_values, nbytes, buf_size, buf);
            if (got) {
                static int said = 0;
                if (!said) report(func, "Python is shutting down: chunks flushed now are stored raw in the necoda "
                                        "container (uncompressed, readable); close HDF5 files before exit to "
                                        "compress them", 1);
                said = 1;
                return got;
            }
        }
        report(func, "Python is shutting down: the necoda filter cannot run its codecs (close HDF5 files "
                     "before the interpreter exits)", 1);
        return 0;
    }
    if (resolve_python() != 0) {
        report(func, "the necoda filter runs its codecs in Python: this process has no Python interpreter "
                     "(read necoda data from Python with necoda_filter installed, or run `necoda decompress`)", 1);
        return 0;
    }
    size_t result = 0;
    int gil = PY.GILState_Ensure();
    PyObject *mod = NULL, *fn = NULL, *args = NULL, *out = NULL;
    if (interrupt_exc[0] && in_main_thread()) {
        /* interrupted, and HDF5 goes on with the next chunks of the same call (writes flush several): do
         * not run Python code, where the pending interrupt would fire again. A chunk being written is
         * stored raw inside the container (nothing the user wrote is lost, also when the flush runs in a
         * destructor, whose errors h5py can only print); a read fails, and the interrupt is raised. */
        if (!(flags & H5Z_FLAG_REVERSE) && (result = raw_container(cd_nelmts, cd_values, nbytes, buf_size, buf)))
            goto done;
        report(func, "necoda: interrupted", 0);
        goto done;
    }
    mod = PY.Import_ImportModule("necoda_filter._bridge");
    if (!mod) {
        if (PY.Err_Occurred()) python_error(func, 1);
        else report(func, "necoda: " IMPORT_HINT, 1);
        goto done;
    }
    /* decode: _bridge.decode_owned returns (address, size) of a malloc'd buffer holding the decoded chunk
       (decoded straight into it, no copies), which the filter hands to HDF5; encode: bytes, copied */
    const int owned = (flags & H5Z_FLAG_REVERSE) != 0;
    fn = PY.Object_GetAttrString(mod, owned ? "decode_owned" : "filter");
    if (!fn) goto fail;
    PyObject *cd = PY.Tuple_New((ssize_t)cd_nelmts);
    if (!cd) goto fail;
    for (size_t i = 0; i < cd_nelmts; i++) PY.Tuple_SetItem(cd, (ssize_t)i, PY.Long_FromUnsignedLong(cd_values[i]));
    args = PY.Tuple_New(3);
    if (!args) { PY.DecRef(cd); goto fail; }
    PY.Tuple_SetItem(args, 0, PY.Long_FromUnsignedLong(flags));
    PY.Tuple_SetItem(args, 1, cd);
    PY.Tuple_SetItem(args, 2, PY.MemoryView_FromMemory((char *)*buf, (ssize_t)nbytes, 0x100 /* PyBUF_READ */));
    out = PY.Object_CallObject(fn, args);
    if (!out) goto fail;
    char *data = NULL;
    ssize_t len = 0;
    if (owned) {
        PyObject *a0 = PY.Tuple_GetItem(out, 0), *a1 = a0 ? PY.Tuple_GetItem(out, 1) : NULL; /* borrowed */
        if (!a1) goto fail;
        void *ptr = PY.Long_AsVoidPtr(a0);
        len = PY.Long_AsSsize_t(a1);
        if (!ptr || len <= 0) {
            if (PY.Err_Occurred()) goto fail;
            report(func, "necoda_filter._bridge.decode_owned returned no buffer", 1);
            goto done;
        }
        free(*buf);
        *buf = ptr;
        *buf_size = (size_t)len;
        result = (size_t)len;
        goto done;
    }
    if (PY.Bytes_AsStringAndSize(out, &data, &len) != 0 || len <= 0) goto fail;
    void *nb = malloc((size_t)len);
    if (!nb) { report(func, "out of memory", 1); goto done; }
    memcpy(nb, data, (size_t)len);
    free(*buf);
    *buf = nb;
    *buf_size = (size_t)len;
    result = (size_t)len;
    goto done;
fail:
    if (PY.Err_Occurred()) python_error(func, 0);
    else report(func, "necoda_filter._bridge.filter failed", 1);
    /* an encode interrupted by Ctrl-C (python_error set the interrupt to be raised when Python code runs
     * outside the filter): store this chunk raw rather than lose it (see above) */
    if (!(flags & H5Z_FLAG_REVERSE) && interrupt_exc[0] && in_main_thread())
        result = raw_container(cd_nelmts, cd_values, nbytes, buf_size, buf);
done:
    if (out) PY.DecRef(out);
    if (args) PY.DecRef(args);
    if (fn) PY.DecRef(fn);
    if (mod) PY.DecRef(mod);
    PY.GILState_Release(gil);
    return result;
}
