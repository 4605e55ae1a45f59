/* tests/gpu/cjson/cjson/cJSON.h — a minimal stand-in for the cJSON library's API as dinomap's
 * model code uses it (parse, look up, iterate, print), for building the GPU check on a machine
 * without libcjson (tests/gpu/run.sh uses it only when <cjson/cJSON.h> is missing). Not a full
 * JSON library: numbers as doubles, strings with the usual escapes (\u as UTF-8). */
#ifndef DM_MINI_CJSON_H
#define DM_MINI_CJSON_H

#include <stddef.h>

#define cJSON_False 1
#define cJSON_True 2
#define cJSON_NULL 4
#define cJSON_Number 8
#define cJSON_String 16
#define cJSON_Array 32
#define cJSON_Object 64

typedef struct cJSON {
    struct cJSON *next, *prev, *child;
    int type;
    char *valuestring;
    int valueint;
    double valuedouble;
    char *string;
} cJSON;

cJSON *cJSON_Parse(const char *value);
cJSON *cJSON_ParseWithLengthOpts(const char *value, size_t length, const char **end,
                                 int require_null_terminated);
void cJSON_Delete(cJSON *item);
char *cJSON_PrintUnformatted(const cJSON *item);
int cJSON_GetArraySize(const cJSON *array);
cJSON *cJSON_GetArrayItem(const cJSON *array, int index);
cJSON *cJSON_GetObjectItemCaseSensitive(const cJSON *object, const char *string);
cJSON *cJSON_GetObjectItem(const cJSON *object, const char *string);
int cJSON_IsArray(const cJSON *item);
int cJSON_IsObject(const cJSON *item);
int cJSON_IsString(const cJSON *item);
int cJSON_IsNumber(const cJSON *item);
int cJSON_IsTrue(const cJSON *item);
int cJSON_IsBool(const cJSON *item);
int cJSON_IsNull(const cJSON *item);
char *cJSON_GetStringValue(const cJSON *item);

#define cJSON_ArrayForEach(element, array)                                                         \
    for (element = (array != NULL) ? (array)->child : NULL; element != NULL;                      \
         element = element->next)

#endif
