/* errors.c — error messages, the version string and the detail-message
 * helper. A code is 0 (ok), a library THA_E* value from THA_ERROR_LIST in
 * tha.h, or a negated errno from the OS. */
#include "base.h"

#include <stdio.h>
#include <string.h>

const char *tha_strerror(int code) {
    if (code == 0)
        return "ok";
    switch (code) {
#define THA__MSG(name, value, msg)                                             \
    case name:                                                                 \
        return msg;
        THA_ERROR_LIST(THA__MSG)
#undef THA__MSG
    default:
        break;
    }
    /* Library codes sit at -30000 and below; errno values are small. An
     * unknown code inside the library range is not an errno. */
    if (code < 0 && code > -30000) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
        /* Static text, thread-safe; NULL for a value with no name. */
        const char *s = strerrordesc_np(-code);
        if (s)
            return s;
#else
        return strerror(-code);
#endif
    }
    return "unknown error";
}

const char *tha_version(void) { return THA_VERSION_STRING; }

int tha__fail(char *buf, size_t cap, int code, const char *fmt, ...) {
    if (buf && cap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, cap, fmt, ap);
        va_end(ap);
    }
    return code;
}
