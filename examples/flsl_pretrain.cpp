// The FLSL trainer: one binary per experiment of examples/experiments/ (FLSL_EXPERIMENT_HEADER
// names it; flsl_pretrain is built from the default one). `flsl_pretrain --help` lists the options.
// With FLSL_PRETRAIN_CUDA (flsl_pretrain built with the CUDA backend), `--device cuda` runs the
// trainer of flsl_pretrain_cuda.cu; otherwise it is refused with the reason.
#ifndef FLSL_EXPERIMENT_HEADER
#define FLSL_EXPERIMENT_HEADER "experiments/default.hpp"
#endif
#include FLSL_EXPERIMENT_HEADER

#ifdef FLSL_PRETRAIN_CUDA
int flsl_pretrain_run_cuda(const flsl::train::resolved_run& run);  // flsl_pretrain_cuda.cu
#endif

int main(int argc, char** argv) {
#ifdef FLSL_PRETRAIN_CUDA
  return flsl::train::run_experiment<flsl_experiment>(argc, argv, &flsl_pretrain_run_cuda);
#else
  return flsl::train::run_experiment<flsl_experiment>(argc, argv);
#endif
}
