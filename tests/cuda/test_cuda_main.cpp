// doctest's main for test_cuda: runs every test case, then exits 77 (CTest: Skipped) when no CUDA
// device was there to run the GPU checks, so that a CPU-only CI shows them as skipped, not passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

bool flsl_test_cuda_device_present();  // cuda_test_support.cuh

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (context.shouldExit() || rc != 0) return rc;
  if (!flsl_test_cuda_device_present()) {
    std::printf("test_cuda: no CUDA device, the GPU checks were skipped (exit code 77)\n");
    return 77;
  }
  return 0;
}
