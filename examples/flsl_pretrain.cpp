// The FLSL trainer: one binary per experiment of examples/experiments/ (FLSL_EXPERIMENT_HEADER
// names it; flsl_pretrain is built from the default one). `flsl_pretrain --help` lists the options.
#ifndef FLSL_EXPERIMENT_HEADER
#define FLSL_EXPERIMENT_HEADER "experiments/default.hpp"
#endif
#include FLSL_EXPERIMENT_HEADER

int main(int argc, char** argv) { return flsl::train::run_experiment<flsl_experiment>(argc, argv); }
