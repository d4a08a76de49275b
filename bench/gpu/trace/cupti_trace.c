// A kernel and memcpy trace for the GPU machine, which has no Nsight Systems:
// loaded into any CUDA process by CUDA_INJECTION64_PATH, it records every
// kernel's and memcpy's GPU start and end (CUPTI activity records, graph
// replays included) to $TRACE_FILE (default /tmp/kernel-trace.csv), one CSV
// line each:
//   kernels: start_ns,end_ns,gridXxYxZ,correlation,registers,graph,mangled name
//   memcpys: start_ns,end_ns,memcpy,bytes,0,graph,[memcpy]
//   memsets: start_ns,end_ns,memset,bytes,0,graph,[memset]
//   TRACE_API=1 adds runtime and driver calls: start_ns,end_ns,api,correlation,0,thread,[api]name
// Build here, run there (the GPU machine's libcupti.so.13 is found at run time):
//   gcc -shared -fPIC -O2 -I/usr/local/cuda/include bench/gpu/trace/cupti_trace.c \
//       -L/usr/local/cuda/lib -lcupti -o .gpu-extra/libtrace.so
//   LD_LIBRARY_PATH=$(dirname $(find / -name 'libcupti.so.13*' | head -1)) \
//     CUDA_INJECTION64_PATH=$PWD/.gpu-extra/libtrace.so TRACE_FILE=/tmp/t.csv \
//     .gpu-bundle/run.sh llmir-gpu-bench ...
// Kernels launched dependent (PDL) start before the kernel they wait for
// ends: their times overlap it (read gaps, not durations, for those).
// Readers: step_timeline.py (a decode step), prefill_gaps.py (a prefill).
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
static FILE *out;
static void CUPTIAPI requested(uint8_t **buffer, size_t *size, size_t *maxRecords) {
  *size = 8 << 20;
  *buffer = (uint8_t *)aligned_alloc(8, *size);
  *maxRecords = 0;
}
static void CUPTIAPI completed(CUcontext c, uint32_t stream, uint8_t *buffer, size_t size,
                               size_t valid) {
  CUpti_Activity *record = NULL;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
        record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)record;
      fprintf(out, "%llu,%llu,%dx%dx%d,%u,%u,%u,%s\n", (unsigned long long)k->start,
              (unsigned long long)k->end, k->gridX, k->gridY, k->gridZ, k->correlationId,
              (unsigned)k->registersPerThread, k->graphId, k->name ? k->name : "?");
    } else if (record->kind == CUPTI_ACTIVITY_KIND_RUNTIME ||
               record->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
      CUpti_ActivityAPI *a = (CUpti_ActivityAPI *)record;
      const char *name = "?";
      cuptiGetCallbackName(record->kind == CUPTI_ACTIVITY_KIND_RUNTIME ? CUPTI_CB_DOMAIN_RUNTIME_API
                                                                      : CUPTI_CB_DOMAIN_DRIVER_API,
                           a->cbid, &name);
      fprintf(out, "%llu,%llu,api,%u,0,%u,[api]%s\n", (unsigned long long)a->start,
              (unsigned long long)a->end, a->correlationId, a->threadId, name);
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)record;
      fprintf(out, "%llu,%llu,memcpy,%llu,0,%u,[memcpy]\n", (unsigned long long)m->start,
              (unsigned long long)m->end, (unsigned long long)m->bytes, m->graphId);
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)record;
      fprintf(out, "%llu,%llu,memset,%llu,0,%u,[memset]\n", (unsigned long long)m->start,
              (unsigned long long)m->end, (unsigned long long)m->bytes, m->graphId);
    }
  }
  free(buffer);
}
static void finish(void) {
  cuptiActivityFlushAll(1);
  if (out)
    fclose(out);
}
int InitializeInjection(void) {
  const char *path = getenv("TRACE_FILE");
  out = fopen(path ? path : "/tmp/kernel-trace.csv", "w");
  if (!out)
    return 0;
  cuptiActivityRegisterCallbacks(requested, completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  if (getenv("TRACE_API"))
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
  atexit(finish);
  return 1;
}
