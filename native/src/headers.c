/* headers.c - the request headers a config reads, found in one pass over
 * the request's header list (see canary.h, canary_headers_find).
 *
 * The plugin used to ask nginx for each header through its $http_*
 * variable, about 800 instructions each: the variable's name lowercased
 * and hashed, a miss in the variables hash, a compare against each
 * prefix nginx knows, and then the walk of the header list.  Here the
 * list, as lua-nginx-module hands it out (pointers, no copies), is walked
 * once for all the names, comparing lengths first. */
#include "canary.h"

#include <string.h>

/* Whether the `len` bytes of key spell `name` (lowercase, '-'), reading
 * key case-insensitively and '_' as '-'. */
static int same_name(const uint8_t *key, const char *name, size_t len) {
  for (size_t i = 0; i < len; i++) {
    uint8_t c = key[i];
    if (c >= 'A' && c <= 'Z') c = (uint8_t)(c + ('a' - 'A'));
    if (c == '_') c = '-';
    if (c != (uint8_t)name[i]) return 0;
  }
  return 1;
}

CANARY_API int canary_headers_find(const canary_header_t *headers, int32_t n,
                                   const char *names, int32_t n_names,
                                   int32_t *found) {
  const char *name[CANARY_HEADERS_FIND_MAX];
  size_t len[CANARY_HEADERS_FIND_MAX];
  int wanted = 0, got = 0;

  if (n < 0 || (n > 0 && !headers) || !names || !found || n_names < 0 ||
      n_names > CANARY_HEADERS_FIND_MAX)
    return CANARY_EINVAL;
  for (int32_t i = 0; i < n_names; i++) {
    name[i] = names;
    len[i] = strlen(names);
    names += len[i] + 1;
    found[i] = -1;
    if (len[i] > 0) wanted++;
  }
  for (int32_t h = 0; h < n && got < wanted; h++) {
    const canary_header_t *e = &headers[h];
    if (e->key_len <= 0 || !e->key) continue;
    for (int32_t i = 0; i < n_names; i++) {
      if (found[i] >= 0 || len[i] != (size_t)e->key_len) continue;
      if (!same_name(e->key, name[i], len[i])) continue;
      found[i] = h;
      got++;
    }
  }
  return got;
}
