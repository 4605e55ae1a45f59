/* models/cuda/plugin.cu — the plugin's entry (plugin.h): the host table, the GPUs the CUDA runtime
 * sees, and the errors of CUDA calls as dm_err messages. */
#include "cuda_internal.h"

const dm_cuda_host *dm_cu_host;

int dm_cu_err(dm_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void dm_cu_log(int level, const char *fmt, ...)
{
    if (!dm_cu_host || !dm_cu_host->log)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    dm_cu_host->log(level, buf);
}

int dm_cu_check(cudaError_t e, const char *what, dm_err *err)
{
    if (e == cudaSuccess)
        return 0;
    cudaGetLastError(); /* clear a non-sticky error */
    return dm_cu_err(err, e == cudaErrorMemoryAllocation ? DM_ENOMEM : DM_EUNSUPPORTED,
                     "CUDA: %s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

int dm_cu_check_blas(cublasStatus_t s, const char *what, dm_err *err)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    return dm_cu_err(err, s == CUBLAS_STATUS_ALLOC_FAILED ? DM_ENOMEM : DM_EUNSUPPORTED,
                     "cuBLASLt: %s: %s (%s)", what, cublasLtGetStatusName(s),
                     cublasLtGetStatusString(s));
}

static int count(int *n, dm_err *err)
{
    *n = 0;
    cudaError_t e = cudaGetDeviceCount(n);
    if (e == cudaErrorNoDevice) { /* a driver, no GPU */
        cudaGetLastError();
        *n = 0;
        return 0;
    }
    if (e == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        int rt = 0;
        cudaRuntimeGetVersion(&rt);
        return dm_cu_err(err, DM_EUNSUPPORTED, "no usable CUDA driver (libcuda.so.1 missing or "
                         "older than this CUDA runtime %d.%d): no GPU can be used here",
                         rt / 1000, rt % 1000 / 10);
    }
    return dm_cu_check(e, "cudaGetDeviceCount", err);
}

static void name(int dev, char *buf, size_t n)
{
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        cudaGetLastError();
        snprintf(buf, n, "GPU %d (unreadable)", dev);
        return;
    }
    snprintf(buf, n, "%s, %.1f GiB, sm_%d%d", p.name, (double)p.totalGlobalMem / (1 << 30),
             p.major, p.minor);
}

#define STR_(x) #x
#define STR(x) STR_(x)

extern "C" __attribute__((visibility("default"))) const dm_cuda_plugin *
dm_cuda_plugin_entry(const dm_cuda_host *host)
{
    static const dm_cuda_plugin p = {
        DM_CUDA_ABI, dm_cuda_layout(), DINOMAP_VERSION,
        "CUDA " STR(__CUDACC_VER_MAJOR__) "." STR(__CUDACC_VER_MINOR__) ", cuBLASLt",
        count, name, dm_cu_vit_create, &dm_cu_vit_ops, dm_cu_dops,
    };
    if (!host || host->abi != DM_CUDA_ABI)
        return NULL;
    dm_cu_host = host;
    return &p;
}
