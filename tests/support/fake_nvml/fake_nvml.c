/*
 * A stand-in for libnvidia-ml.so.1, for tests only.
 *
 * It exports the NVML symbols that pynvml resolves for the calls sentinel_keeper/observe/gpu.py makes,
 * with NVML's real signatures, struct layouts and return codes, so that the real pynvml code
 * path runs on a machine without a GPU.
 *
 * Behaviour comes from the file named by $FAKE_NVML_CONFIG, re-read on every call, so a test
 * can change it while a process is using the library. One "key = value" a line, '#' starts a
 * comment; a missing file or key means the default (in brackets):
 *
 *   init_rc = 0            nvmlInit* return code [0]; e.g. 9 = NVML_ERROR_DRIVER_NOT_LOADED
 *   shutdown_rc = 0        nvmlShutdown return code when initialised [0]
 *   count = 2              number of GPUs [0]
 *   count_rc = 0           nvmlDeviceGetCount_v2 return code [0]
 *   driver_version = ...   [999.99.99]
 *   gpu0.name = NVIDIA H100 80GB HBM3        [Fake GPU <i>]
 *   gpu0.uuid = GPU-5a0c8b6e-...             [GPU-00000000-0000-4000-8000-<i, 12 digits>]
 *   gpu0.total = 85520809984                 bytes [0]; likewise
 *   gpu0.reserved / gpu0.used / gpu0.free    (v1 'used' is reported as reserved + used)
 *   gpu0.handle_rc / gpu0.name_rc / gpu0.memory_rc / gpu0.uuid_rc
 *                                            return codes of those calls [0]; handle_rc is
 *                                            answered by both nvmlDeviceGetHandleByIndex* and
 *                                            nvmlDeviceGetHandleByUUID, uuid_rc by
 *                                            nvmlDeviceGetUUID
 *
 * nvmlDeviceGetHandleByUUID answers NVML_ERROR_INVALID_ARGUMENT for a NULL argument or a UUID
 * that does not start with "GPU-" or "MIG-", NVML_ERROR_NOT_FOUND when no GPU has it.
 * nvmlDeviceGetIndex answers the index of a handle this library gave out.
 *
 * Like the real library, a GPU that has once answered NVML_ERROR_GPU_IS_LOST (15) stays lost
 * until NVML is initialised again from scratch (refcount 0 -> 1), even after its configured
 * return code goes back to 0; every call on a lost GPU (a handle by index or UUID, its name,
 * UUID, index or memory) answers it. Calls before nvmlInit answer NVML_ERROR_UNINITIALIZED.
 *
 * If $FAKE_NVML_LOG names a file, every call appends one line "<function> <args...> -> <rc>".
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

/* nvml.h: typedef struct nvmlMemory_st { unsigned long long total, free, used; } */
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

/* nvml.h: nvmlMemory_v2_t, version = nvmlMemory_v2 = NVML_STRUCT_VERSION(Memory, 2) */
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");
_Static_assert(nvmlMemory_v2 == 0x02000028, "nvmlMemory_v2 value");

#define MAX_GPUS 64
#define NAME_LEN 96 /* NVML_DEVICE_NAME_V2_BUFFER_SIZE */
#define UUID_LEN 96 /* NVML_DEVICE_UUID_V2_BUFFER_SIZE */

struct nvmlDevice_st {
    int index;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

struct gpu_conf {
    char name[NAME_LEN];
    char uuid[UUID_LEN];
    unsigned long long total, reserved, used, free;
    int handle_rc, name_rc, memory_rc, uuid_rc;
};

struct conf {
    int init_rc, shutdown_rc, count, count_rc;
    char driver_version[80];
    struct gpu_conf gpus[MAX_GPUS];
};

static struct nvmlDevice_st devices[MAX_GPUS];
static int refcount;
static int lost[MAX_GPUS];

static void log_call(const char *fmt, ...) {
    const char *path = getenv("FAKE_NVML_LOG");
    if (path == NULL || *path == '\0') return;
    FILE *f = fopen(path, "a");
    if (f == NULL) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

static void set_gpu(struct gpu_conf *g, const char *field, const char *value) {
    if (strcmp(field, "name") == 0) {
        snprintf(g->name, sizeof g->name, "%s", value);
    } else if (strcmp(field, "uuid") == 0) {
        snprintf(g->uuid, sizeof g->uuid, "%s", value);
    } else if (strcmp(field, "total") == 0) {
        g->total = strtoull(value, NULL, 0);
    } else if (strcmp(field, "reserved") == 0) {
        g->reserved = strtoull(value, NULL, 0);
    } else if (strcmp(field, "used") == 0) {
        g->used = strtoull(value, NULL, 0);
    } else if (strcmp(field, "free") == 0) {
        g->free = strtoull(value, NULL, 0);
    } else if (strcmp(field, "handle_rc") == 0) {
        g->handle_rc = atoi(value);
    } else if (strcmp(field, "name_rc") == 0) {
        g->name_rc = atoi(value);
    } else if (strcmp(field, "memory_rc") == 0) {
        g->memory_rc = atoi(value);
    } else if (strcmp(field, "uuid_rc") == 0) {
        g->uuid_rc = atoi(value);
    }
}

static void read_conf(struct conf *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->driver_version, sizeof c->driver_version, "999.99.99");
    for (int i = 0; i < MAX_GPUS; i++) {
        snprintf(c->gpus[i].name, NAME_LEN, "Fake GPU %d", i);
        snprintf(c->gpus[i].uuid, UUID_LEN, "GPU-00000000-0000-4000-8000-%012d", i);
    }

    const char *path = getenv("FAKE_NVML_CONFIG");
    if (path == NULL || *path == '\0') return;
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        char *hash = strchr(line, '#');
        if (hash != NULL) *hash = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL) continue;
        *eq = '\0';
        char *key = trim(line);
        char *value = trim(eq + 1);
        int index;
        int consumed = 0;
        if (strcmp(key, "init_rc") == 0) {
            c->init_rc = atoi(value);
        } else if (strcmp(key, "shutdown_rc") == 0) {
            c->shutdown_rc = atoi(value);
        } else if (strcmp(key, "count") == 0) {
            c->count = atoi(value);
            if (c->count < 0) c->count = 0;
            if (c->count > MAX_GPUS) c->count = MAX_GPUS;
        } else if (strcmp(key, "count_rc") == 0) {
            c->count_rc = atoi(value);
        } else if (strcmp(key, "driver_version") == 0) {
            snprintf(c->driver_version, sizeof c->driver_version, "%s", value);
        } else if (sscanf(key, "gpu%d.%n", &index, &consumed) == 1 && consumed > 0 && index >= 0 &&
                   index < MAX_GPUS) {
            set_gpu(&c->gpus[index], key + consumed, value);
        }
    }
    fclose(f);
}

/* The index of a handle this library gave out, or -1. */
static int handle_index(nvmlDevice_t device) {
    if (device < devices || device >= devices + MAX_GPUS) return -1;
    return (int)(device - devices);
}

/* The return code a call on GPU i answers besides its own configured failure, and marks it
   lost when it answers NVML_ERROR_GPU_IS_LOST. */
static nvmlReturn_t device_rc(const struct conf *c, int i, int configured_rc) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (i < 0 || i >= c->count) return NVML_ERROR_INVALID_ARGUMENT;
    if (lost[i]) return NVML_ERROR_GPU_IS_LOST;
    if (configured_rc == NVML_ERROR_GPU_IS_LOST) lost[i] = 1;
    return configured_rc;
}

static nvmlReturn_t do_init(const char *fn, unsigned int flags) {
    struct conf c;
    read_conf(&c);
    nvmlReturn_t rc = c.init_rc;
    if (rc == NVML_SUCCESS) {
        if (refcount == 0) memset(lost, 0, sizeof lost);
        refcount++;
    }
    log_call("%s %u -> %d", fn, flags, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    return do_init("nvmlInitWithFlags", flags);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    return do_init("nvmlInit_v2", 0);
}

EXPORT nvmlReturn_t nvmlInit(void) {
    return do_init("nvmlInit", 0);
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    struct conf c;
    read_conf(&c);
    nvmlReturn_t rc;
    if (refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else {
        refcount--; /* the real library drops the reference even when it reports a failure */
        rc = c.shutdown_rc;
    }
    log_call("nvmlShutdown -> %d", rc);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    struct conf c;
    read_conf(&c);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else if (version == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (strlen(c.driver_version) + 1 > length) {
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
    } else {
        strcpy(version, c.driver_version);
    }
    log_call("nvmlSystemGetDriverVersion -> %d", rc);
    return rc;
}

static nvmlReturn_t get_count(const char *fn, unsigned int *count) {
    struct conf c;
    read_conf(&c);
    nvmlReturn_t rc = c.count_rc;
    if (refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else if (count == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (rc == NVML_SUCCESS) {
        *count = (unsigned int)c.count;
    }
    log_call("%s -> %d", fn, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    return get_count("nvmlDeviceGetCount_v2", count);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) {
    return get_count("nvmlDeviceGetCount", count);
}

static nvmlReturn_t get_handle(const char *fn, unsigned int index, nvmlDevice_t *device) {
    struct conf c;
    read_conf(&c);
    nvmlReturn_t rc;
    if (refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else if (device == NULL || index >= (unsigned int)c.count) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        rc = device_rc(&c, (int)index, c.gpus[index].handle_rc);
        if (rc == NVML_SUCCESS) {
            devices[index].index = (int)index;
            *device = &devices[index];
        }
    }
    log_call("%s %u -> %d", fn, index, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    return get_handle("nvmlDeviceGetHandleByIndex_v2", index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return get_handle("nvmlDeviceGetHandleByIndex", index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    struct conf c;
    read_conf(&c);
    nvmlReturn_t rc;
    int i = -1;
    if (refcount == 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else if (uuid == NULL || device == NULL ||
               (strncmp(uuid, "GPU-", 4) != 0 && strncmp(uuid, "MIG-", 4) != 0)) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        for (int j = 0; j < c.count && i < 0; j++)
            if (strcmp(c.gpus[j].uuid, uuid) == 0) i = j;
        rc = i < 0 ? NVML_ERROR_NOT_FOUND : device_rc(&c, i, c.gpus[i].handle_rc);
        if (rc == NVML_SUCCESS) {
            devices[i].index = i;
            *device = &devices[i];
        }
    }
    log_call("nvmlDeviceGetHandleByUUID %s -> %d", uuid == NULL ? "(null)" : uuid, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    struct conf c;
    read_conf(&c);
    int i = handle_index(device);
    nvmlReturn_t rc = index == NULL ? NVML_ERROR_INVALID_ARGUMENT : device_rc(&c, i, 0);
    if (rc == NVML_SUCCESS) *index = (unsigned int)i;
    log_call("nvmlDeviceGetIndex %d -> %d", i, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    struct conf c;
    read_conf(&c);
    int i = handle_index(device);
    nvmlReturn_t rc = uuid == NULL ? NVML_ERROR_INVALID_ARGUMENT
                                   : device_rc(&c, i, i < 0 ? 0 : c.gpus[i].uuid_rc);
    if (rc == NVML_SUCCESS) {
        if (strlen(c.gpus[i].uuid) + 1 > length) {
            rc = NVML_ERROR_INSUFFICIENT_SIZE;
        } else {
            strcpy(uuid, c.gpus[i].uuid);
        }
    }
    log_call("nvmlDeviceGetUUID %d -> %d", i, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    struct conf c;
    read_conf(&c);
    int i = handle_index(device);
    nvmlReturn_t rc = name == NULL ? NVML_ERROR_INVALID_ARGUMENT
                                   : device_rc(&c, i, i < 0 ? 0 : c.gpus[i].name_rc);
    if (rc == NVML_SUCCESS) {
        if (strlen(c.gpus[i].name) + 1 > length) {
            rc = NVML_ERROR_INSUFFICIENT_SIZE;
        } else {
            strcpy(name, c.gpus[i].name);
        }
    }
    log_call("nvmlDeviceGetName %d -> %d", i, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    struct conf c;
    read_conf(&c);
    int i = handle_index(device);
    nvmlReturn_t rc = memory == NULL ? NVML_ERROR_INVALID_ARGUMENT
                                     : device_rc(&c, i, i < 0 ? 0 : c.gpus[i].memory_rc);
    if (rc == NVML_SUCCESS) {
        const struct gpu_conf *g = &c.gpus[i];
        memory->total = g->total;
        memory->free = g->free;
        memory->used = g->reserved + g->used; /* v1 counts reserved memory as used */
    }
    log_call("nvmlDeviceGetMemoryInfo %d -> %d", i, rc);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    struct conf c;
    read_conf(&c);
    int i = handle_index(device);
    nvmlReturn_t rc;
    if (memory == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (memory->version != nvmlMemory_v2) {
        rc = refcount == 0 ? NVML_ERROR_UNINITIALIZED : NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    } else {
        rc = device_rc(&c, i, i < 0 ? 0 : c.gpus[i].memory_rc);
    }
    if (rc == NVML_SUCCESS) {
        const struct gpu_conf *g = &c.gpus[i];
        memory->total = g->total;
        memory->reserved = g->reserved;
        memory->free = g->free;
        memory->used = g->used;
    }
    log_call("nvmlDeviceGetMemoryInfo_v2 %d -> %d", i, rc);
    return rc;
}
