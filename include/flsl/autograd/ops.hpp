// Every differentiable op (one file each under ops/: forward, backward, gradcheck row).
#pragma once

#include "elementwise.hpp"
#include "ops/linear.hpp"
