// flsl: everything a program needs, in one include.
#pragma once

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
#include "backend/cpu/gemm.hpp"
