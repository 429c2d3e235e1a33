/*
 * errors.c - error messages and the small string helpers every module uses.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *canary_strerror(int err) {
  switch (err) {
  case CANARY_OK:
    return "success";
#define CANARY_STRERROR_GEN(name, value, msg)                                  \
  case CANARY_##name:                                                          \
    return msg;
    CANARY_ERRNO_MAP(CANARY_STRERROR_GEN)
#undef CANARY_STRERROR_GEN
  default:
    return "unknown error";
  }
}

void canary__copy_str(char *dst, size_t cap, const char *src, size_t len) {
  if (cap == 0)
    return;
  if (len >= cap)
    len = cap - 1;
  if (len > 0)
    memcpy(dst, src, len);
  dst[len] = '\0';
}

int canary__fail(char *err, size_t err_len, int code, const char *fmt, ...) {
  if (err != NULL && err_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
  }
  return code;
}
