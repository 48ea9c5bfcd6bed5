// cuBLAS status checking, in the style of CUDA_CHECK (kernels/cuda_common.h).
#pragma once
#include <cublas_v2.h>

#include <string>

#include "kernels/cuda_common.h"

// Evaluates its argument once; on failure throws cuda_error naming the statement and place.
#define CUBLAS_CHECK(stmt)                                                                \
  do {                                                                                    \
    cublasStatus_t st_ = (stmt);                                                          \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      throw sqz::cuda_error(std::string("cuBLAS error: ") + cublasGetStatusString(st_) + \
                            " in " #stmt " (" + __func__ + " at " + __FILE__ + ":" +      \
                            std::to_string(__LINE__) + ")");                              \
  } while (0)
