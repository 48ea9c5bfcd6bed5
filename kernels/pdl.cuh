// Programmatic dependent launch (PDL, sm_90): a kernel started by launch_pdl may begin while
// the kernel before it in the stream is still running, so a decode step's ~300 small kernels
// do not each pay a launch gap and a cold start. The contract for every kernel launched so:
//   * before pdl_wait() it reads only constant data (weights, LUTs, the CSR, norm weights,
//     and the step's inputs - token ids, positions - which the host copies in before the
//     step's first kernel, a plain launch) and writes only its own shared memory and
//     registers;
//   * pdl_wait() returns once every earlier kernel in the stream has finished and its
//     writes are visible;
//   * pdl_launch_dependents() lets the next kernel start (its pre-wait part) early.
// Launched without the attribute (or before sm_90) both are no-ops. Captured into CUDA
// graphs as programmatic edges.
#pragma once
#include <cuda_runtime.h>

#include "kernels/cuda_common.h"

namespace sqz {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization.
// With cluster > 1, the blocks also go in clusters of that many along x (gridDim.x a multiple
// of it; sm_90).
template <typename... Params, typename... Args>
void launch_pdl_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                        cudaStream_t stream, int cluster, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr, cfg.numAttrs = 1;
  if (cluster > 1) {
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = unsigned(cluster);
    attr[1].val.clusterDim.y = attr[1].val.clusterDim.z = 1;
    cfg.numAttrs = 2;
  }
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                Args&&... args) {
  launch_pdl_cluster(kernel, grid, block, smem, stream, 1, std::forward<Args>(args)...);
}

}  // namespace sqz
