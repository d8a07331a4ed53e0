// flsl: everything a program needs, in one include.
#pragma once

#include "autograd/elementwise.hpp"
#include "autograd/gradcheck.hpp"
#include "autograd/ops.hpp"
#include "autograd/var.hpp"
#include "backend/cpu/gemm.hpp"
#include "backend/matmul_precision.hpp"
#include "core/config.hpp"
#include "core/device.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/random.hpp"
#include "core/shape.hpp"
#include "core/storage.hpp"
#include "core/tensor.hpp"
#include "expr/assign.hpp"
#include "expr/node.hpp"
#include "expr/ops.hpp"
#include "expr/reduce.hpp"
#include "interop/xtensor.hpp"
#include "nn.hpp"
#include "objective/flsl_loss.hpp"

// The CUDA backend, in files compiled by nvcc (the g++ build never sees CUDA headers).
#if defined(__CUDACC__)
#include "backend/cuda.cuh"
#endif
