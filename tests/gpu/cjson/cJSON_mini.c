/* tests/gpu/cjson/cJSON_mini.c — see cjson/cJSON.h: the subset of cJSON the GPU check needs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cjson/cJSON.h"

typedef struct pst {
    const char *p, *end;
} pst;

static void ws(pst *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static cJSON *item(int type)
{
    cJSON *c = calloc(1, sizeof *c);
    if (c)
        c->type = type;
    return c;
}

static int put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 63));
    o[2] = (char)(0x80 | (cp >> 6 & 63)), o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

static char *str(pst *s)
{
    if (s->p >= s->end || *s->p != '"')
        return NULL;
    s->p++;
    const char *q = s->p;
    while (q < s->end && *q != '"')
        q += *q == '\\' ? 2 : 1;
    if (q >= s->end)
        return NULL;
    char *o = malloc((size_t)(q - s->p) * 2 + 1), *w = o;
    if (!o)
        return NULL;
    while (s->p < q) {
        char c = *s->p++;
        if (c != '\\') {
            *w++ = c;
            continue;
        }
        c = *s->p++;
        switch (c) {
        case 'n': *w++ = '\n'; break;
        case 't': *w++ = '\t'; break;
        case 'r': *w++ = '\r'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4 && s->p < q; i++) {
                char h = *s->p++;
                cp = cp * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 32) - 'a' + 10);
            }
            w += put_utf8(w, cp);
            break;
        }
        default: *w++ = c;
        }
    }
    *w = 0;
    s->p = q + 1;
    return o;
}

static cJSON *value(pst *s, int depth);

static cJSON *list(pst *s, int depth, int obj)
{
    cJSON *c = item(obj ? cJSON_Object : cJSON_Array), *last = NULL;
    if (!c)
        return NULL;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == (obj ? '}' : ']')) {
        s->p++;
        return c;
    }
    for (;;) {
        char *key = NULL;
        ws(s);
        if (obj) {
            if (!(key = str(s)))
                goto fail;
            ws(s);
            if (s->p >= s->end || *s->p != ':') {
                free(key);
                goto fail;
            }
            s->p++;
        }
        cJSON *v = value(s, depth + 1);
        if (!v) {
            free(key);
            goto fail;
        }
        v->string = key;
        if (last)
            last->next = v, v->prev = last;
        else
            c->child = v;
        last = v;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == (obj ? '}' : ']')) {
            s->p++;
            return c;
        }
        goto fail;
    }
fail:
    cJSON_Delete(c);
    return NULL;
}

static cJSON *value(pst *s, int depth)
{
    ws(s);
    if (s->p >= s->end || depth > 64)
        return NULL;
    char c = *s->p;
    if (c == '{' || c == '[')
        return list(s, depth, c == '{');
    if (c == '"') {
        cJSON *v = item(cJSON_String);
        if (v && !(v->valuestring = str(s))) {
            free(v);
            return NULL;
        }
        return v;
    }
    static const struct { const char *w; int t; } words[] = {
        { "true", cJSON_True }, { "false", cJSON_False }, { "null", cJSON_NULL } };
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i].w);
        if ((size_t)(s->end - s->p) >= n && !strncmp(s->p, words[i].w, n)) {
            s->p += n;
            cJSON *v = item(words[i].t);
            if (v)
                v->valueint = words[i].t == cJSON_True;
            return v;
        }
    }
    char buf[64];
    size_t n = 0;
    while (s->p + n < s->end && n < sizeof buf - 1 && strchr("+-0123456789.eE", s->p[n]))
        n++;
    if (!n)
        return NULL;
    memcpy(buf, s->p, n);
    buf[n] = 0;
    char *e;
    double d = strtod(buf, &e);
    if (e == buf)
        return NULL;
    s->p += e - buf;
    cJSON *v = item(cJSON_Number);
    if (v) {
        v->valuedouble = d;
        v->valueint = d >= 2147483647.0 ? 2147483647 : d <= -2147483648.0 ? (-2147483647 - 1)
                                                                           : (int)d;
    }
    return v;
}

cJSON *cJSON_ParseWithLengthOpts(const char *value_, size_t length, const char **end,
                                 int require_null_terminated)
{
    pst s = { value_, value_ + length };
    cJSON *c = value(&s, 0);
    if (c && require_null_terminated) {
        ws(&s);
        if (s.p < s.end && *s.p) {
            cJSON_Delete(c);
            return NULL;
        }
    }
    if (end)
        *end = s.p;
    return c;
}

cJSON *cJSON_Parse(const char *v) { return v ? cJSON_ParseWithLengthOpts(v, strlen(v), NULL, 0) : NULL; }

void cJSON_Delete(cJSON *c)
{
    while (c) {
        cJSON *n = c->next;
        cJSON_Delete(c->child);
        free(c->valuestring);
        free(c->string);
        free(c);
        c = n;
    }
}

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static int add(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int add_str(buf *b, const char *s)
{
    int rc = add(b, "\"", 1);
    for (; !rc && *s; s++) {
        char e[8];
        if (*s == '"' || *s == '\\')
            e[0] = '\\', e[1] = *s, rc = add(b, e, 2);
        else if ((unsigned char)*s < 0x20)
            snprintf(e, sizeof e, "\\u%04x", (unsigned char)*s), rc = add(b, e, 6);
        else
            rc = add(b, s, 1);
    }
    return rc ? rc : add(b, "\"", 1);
}

static int print(buf *b, const cJSON *c)
{
    char num[64];
    switch (c->type) {
    case cJSON_True: return add(b, "true", 4);
    case cJSON_False: return add(b, "false", 5);
    case cJSON_NULL: return add(b, "null", 4);
    case cJSON_String: return add_str(b, c->valuestring ? c->valuestring : "");
    case cJSON_Number:
        if (c->valuedouble == (double)c->valueint)
            snprintf(num, sizeof num, "%d", c->valueint);
        else
            snprintf(num, sizeof num, "%.17g", c->valuedouble);
        return add(b, num, strlen(num));
    default: break;
    }
    int obj = c->type == cJSON_Object, rc = add(b, obj ? "{" : "[", 1);
    for (const cJSON *e = c->child; e && !rc; e = e->next) {
        if (e != c->child)
            rc = add(b, ",", 1);
        if (!rc && obj)
            rc = add_str(b, e->string ? e->string : "");
        if (!rc && obj)
            rc = add(b, ":", 1);
        if (!rc)
            rc = print(b, e);
    }
    return rc ? rc : add(b, obj ? "}" : "]", 1);
}

char *cJSON_PrintUnformatted(const cJSON *c)
{
    buf b = { NULL, 0, 0 };
    if (!c || print(&b, c)) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

int cJSON_GetArraySize(const cJSON *a)
{
    int n = 0;
    for (const cJSON *e = a ? a->child : NULL; e; e = e->next)
        n++;
    return n;
}

cJSON *cJSON_GetArrayItem(const cJSON *a, int i)
{
    cJSON *e = a && i >= 0 ? a->child : NULL;
    while (e && i--)
        e = e->next;
    return e;
}

cJSON *cJSON_GetObjectItemCaseSensitive(const cJSON *o, const char *k)
{
    for (cJSON *e = o && k ? o->child : NULL; e; e = e->next)
        if (e->string && !strcmp(e->string, k))
            return e;
    return NULL;
}

cJSON *cJSON_GetObjectItem(const cJSON *o, const char *k)
{
    for (cJSON *e = o && k ? o->child : NULL; e; e = e->next)
        if (e->string && !strcasecmp(e->string, k))
            return e;
    return NULL;
}

int cJSON_IsArray(const cJSON *c) { return c && c->type == cJSON_Array; }
int cJSON_IsObject(const cJSON *c) { return c && c->type == cJSON_Object; }
int cJSON_IsString(const cJSON *c) { return c && c->type == cJSON_String; }
int cJSON_IsNumber(const cJSON *c) { return c && c->type == cJSON_Number; }
int cJSON_IsTrue(const cJSON *c) { return c && c->type == cJSON_True; }
int cJSON_IsBool(const cJSON *c) { return c && (c->type == cJSON_True || c->type == cJSON_False); }
int cJSON_IsNull(const cJSON *c) { return c && c->type == cJSON_NULL; }
char *cJSON_GetStringValue(const cJSON *c) { return cJSON_IsString(c) ? c->valuestring : NULL; }
