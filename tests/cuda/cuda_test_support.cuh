// What every GPU test file shares: the device probe that test_cuda_main.cpp calls (its exit code
// 77, CTest's Skipped, when no device ran the checks) and the early return of a GPU test case on
// a machine without a device. Included by exactly one .cu file per test executable (it defines
// the probe).
#pragma once

#include <doctest/doctest.h>

#include <flsl/backend/cuda.cuh>

bool flsl_test_cuda_device_present() { return flsl::cuda_available(); }

#define SKIP_WITHOUT_CUDA_DEVICE()        \
  do {                                    \
    if (!flsl::cuda_available()) {        \
      MESSAGE("skipped: no CUDA device"); \
      return;                             \
    }                                     \
  } while (0)
