"""cffi builder for tha._tha (API mode, out-of-line).

Compiles every csrc/src/*.c into the extension, the same list csrc/Makefile
builds libtha from, so the two cannot drift. The cdef is tha/_cdef.h,
written by hand against csrc/include/tha.h.
"""
import os
from glob import glob

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(*parts):
    # setuptools wants source paths relative to the directory it runs in.
    return os.path.relpath(os.path.join(HERE, *parts))


with open(os.path.join(HERE, "tha", "_cdef.h"), encoding="utf-8") as f:
    CDEF = f.read()

# The replication driver's HMAC-SHA256: OpenSSL's libcrypto (which Python's
# own ssl module links) when its headers are installed, so the MAC of every
# message costs no Python call; else tha/replication/connection.py computes
# it with Python's hmac. libtha itself holds no cryptography.
HAVE_OPENSSL = any(os.path.exists(os.path.join(d, "openssl", "core_names.h"))
                   for d in ("/usr/include", "/usr/local/include"))
MAC_SOURCE = r"""
#include "tha.h"
#ifdef THA_PY_OPENSSL
#include <openssl/core_names.h>
#include <openssl/evp.h>
const int tha_py_have_openssl = 1;
static EVP_MAC *tha_py_hmac;
static pthread_once_t tha_py_hmac_once = PTHREAD_ONCE_INIT;
static void tha_py_hmac_fetch(void) { tha_py_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL); }
/* HMAC-SHA256(key, parts...); all zeros (which fails any check) on error. */
void tha_py_openssl_mac(void *ctx, const uint8_t *key, size_t key_len,
                        const tha_mac_part_t *parts, size_t nparts, uint8_t *out) {
    (void)ctx;
    pthread_once(&tha_py_hmac_once, tha_py_hmac_fetch);
    EVP_MAC_CTX *c = tha_py_hmac ? EVP_MAC_CTX_new(tha_py_hmac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    size_t n = 0;
    int ok = c && EVP_MAC_init(c, key, key_len, params);
    for (size_t i = 0; ok && i < nparts; i++)
        ok = EVP_MAC_update(c, parts[i].data, parts[i].len);
    ok = ok && EVP_MAC_final(c, out, &n, THA_MAC_SIZE) && n == THA_MAC_SIZE;
    if (!ok) memset(out, 0, THA_MAC_SIZE);
    EVP_MAC_CTX_free(c);
}
#else
const int tha_py_have_openssl = 0;
void tha_py_openssl_mac(void *ctx, const uint8_t *key, size_t key_len,
                        const tha_mac_part_t *parts, size_t nparts, uint8_t *out) {
    (void)ctx; (void)key; (void)key_len; (void)parts; (void)nparts;
    memset(out, 0, THA_MAC_SIZE);
}
#endif
"""

# dump() walks the heap in batches: one Python -> C crossing per 4096
# objects instead of one per object (tha/dump.py); heap.touch_many() marks
# a batch of elements in one crossing and heap.store_many() writes one (their
# indexes checked first, tha_py_first_over).
WALK_SOURCE = r"""
/* The caller (tha/heap.py) checked every index against the elements of
 * one live allocation, so each span lies inside it: touch_range marks it
 * without looking the allocation up again. */
size_t tha_py_touch_each(tha_heap_t *h, uintptr_t first, size_t stride, size_t len,
                         const uint64_t *index, size_t n, int *rc) {
    for (size_t i = 0; i < n; i++) {
        int r = tha_heap_touch_range(
            h, (const void *)(first + stride * (index ? index[i] : i)), len);
        if (r) {
            *rc = r;
            return i;
        }
    }
    *rc = 0;
    return n;
}
/* store_many(): len bytes of value j (values + len * j; with tstride, the
 * address tfirst + tstride * values[j], or NULL for UINT64_MAX) into the
 * field at off of element index[j] (index NULL: j), in order, each marked.
 * Same precondition as above, for the targets too. */
int tha_py_store_each(tha_heap_t *h, uintptr_t first, size_t stride, size_t off,
                      size_t len, const uint64_t *index, size_t n, uintptr_t values,
                      uintptr_t tfirst, size_t tstride) {
    const uint8_t *src = (const uint8_t *)values;
    for (size_t j = 0; j < n; j++) {
        uint8_t *dst = (uint8_t *)(first + stride * (index ? index[j] : j) + off);
        if (tstride) {
            uint64_t t;
            memcpy(&t, src + 8 * j, 8);
            uintptr_t a = t == UINT64_MAX ? 0 : tfirst + tstride * t;
            memcpy(dst, &a, sizeof a);
        } else {
            memcpy(dst, src + len * j, len);
        }
        int r = tha_heap_touch_range(h, dst, len);
        if (r) return r;
    }
    return 0;
}
/* The first j with v[j] >= limit (UINT64_MAX allowed when null_ok), or n. */
size_t tha_py_first_over(const uint64_t *v, size_t n, uint64_t limit, int null_ok) {
    for (size_t j = 0; j < n; j++)
        if (v[j] >= limit && !(null_ok && v[j] == UINT64_MAX)) return j;
    return n;
}
size_t tha_py_next_batch(const tha_heap_t *h, uint64_t *cursor, tha_obj_t *out,
                         size_t n) {
    size_t k = 0;
    while (k < n && tha_heap_next(h, cursor, &out[k]) == 1) k++;
    return k;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tha._tha",
    "#include <pthread.h>\n#include <string.h>\n" + MAC_SOURCE + WALK_SOURCE,
    sources=sorted(_rel(p) for p in glob(os.path.join(HERE, "csrc", "src", "*.c"))),
    include_dirs=[_rel("csrc", "include"), _rel("csrc", "src")],
    depends=[_rel("csrc", "include", "tha.h")]
    + sorted(_rel(p) for p in glob(os.path.join(HERE, "csrc", "src", "*.h"))),
    extra_compile_args=["-std=c11", "-O2", "-D_GNU_SOURCE", "-fvisibility=hidden", "-pthread"]
    + (["-DTHA_PY_OPENSSL"] if HAVE_OPENSSL else []),
    extra_link_args=["-pthread"],
    libraries=["crypto"] if HAVE_OPENSSL else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
