// Thread block clusters (sm_90): the few operations the packed GEMV uses to share one staging
// of its activations between the two blocks of a cluster (kernels/lut_gemv.cu). A kernel
// launched without a cluster is a cluster of one: rank 0 of 1. Before sm_90 the size is 1 and
// the barriers and peer stores are never reached.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sqz {

// This block's rank in its cluster and the cluster's size in blocks.
struct ClusterPlace {
  uint32_t rank, size;
};
__device__ __forceinline__ ClusterPlace cluster_place() {
  ClusterPlace c{0, 1};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n\tmov.u32 %1, %%cluster_nctarank;"
               : "=r"(c.rank), "=r"(c.size));
#endif
  return c;
}

// Every thread of every block of the cluster: arrive (no ordering: the peer has started, so
// its shared memory may be written once the wait returns) ...
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
// ... and wait.
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// A barrier of the whole cluster (and of the block): shared-memory writes before it, local or
// to a peer, are seen by every thread of the cluster after it.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
#endif
}

// Stores v at the address in block `peer`'s shared memory that corresponds to `local` in this
// block's (distributed shared memory).
__device__ __forceinline__ void store_peer_u4(const void* local, uint32_t peer, const uint4& v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(peer));
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(r), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
#endif
}

}  // namespace sqz
