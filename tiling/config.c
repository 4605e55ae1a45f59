/* tiling/config.c — a run's configuration as JSON: comparing a resumed run's settings with the
 * folder's, and small JSON helpers of the engine. The configuration is one flat object of the
 * settings that change pixels (see engine.c and the recipes); its SHA-256 is the config hash. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

cJSON *dm_json_ints(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

const char **dm_json_strings(const cJSON *arr)
{
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
    const char **s = calloc((size_t)n + 1, sizeof *s);
    for (int i = 0; s && i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(arr, i);
        s[i] = cJSON_IsString(x) ? x->valuestring : "";
    }
    return s;
}

const char *dm_base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* A value as short text for a message (long strings such as hashes are cut). */
static void show(const cJSON *v, char *buf, size_t n)
{
    if (!v) {
        snprintf(buf, n, "(not set)");
        return;
    }
    char *s = cJSON_PrintUnformatted(v);
    if (!s) {
        snprintf(buf, n, "?");
        return;
    }
    size_t len = strlen(s);
    if (len > 60)
        snprintf(buf, n, "%.24s…%s", s, s + len - 12);
    else
        snprintf(buf, n, "%s", s);
    free(s);
}

int dm_config_diff(const cJSON *now, const cJSON *stored, char *msg, size_t n)
{
    int nd = 0;
    size_t o = 0;
    msg[0] = '\0';
    /* every key of either side, in the order of `now`, then keys only the folder has */
    const cJSON *sides[2] = { now, stored };
    for (int s = 0; s < 2; s++) {
        const cJSON *it;
        cJSON_ArrayForEach(it, sides[s])
        {
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(now, it->string);
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(stored, it->string);
            if (s == 1 && a)
                continue; /* seen in the first pass */
            if (a && b && cJSON_Compare(a, b, 1))
                continue;
            char va[128], vb[128];
            show(a, va, sizeof va);
            show(b, vb, sizeof vb);
            if (o < n)
                o += (size_t)snprintf(msg + o, n - o, "%s%s: %s now, %s in the folder's run",
                                      nd ? "; " : "", it->string, va, vb);
            nd++;
        }
    }
    return nd;
}
