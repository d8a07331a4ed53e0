// The `--device cuda` half of flsl_pretrain (built when FLSL_WITH_CUDA is on): the experiment's
// trainer on the GPU, compiled by nvcc here, apart from the CPU trainer of flsl_pretrain.cpp
// (compiled by the C++ compiler, unchanged). train/trainer_cuda.cuh says how the two meet.
#ifndef FLSL_EXPERIMENT_HEADER
#define FLSL_EXPERIMENT_HEADER "experiments/default.hpp"
#endif
#include FLSL_EXPERIMENT_HEADER
#include <flsl/train/trainer_cuda.cuh>

int flsl_pretrain_run_cuda(const flsl::train::resolved_run& run) {
  return flsl::train::run_on_cuda<flsl_experiment>(run);
}
