// Every differentiable op (one file each under ops/: forward, backward, gradcheck row).
#pragma once

#include "elementwise.hpp"
#include "ops/attention.hpp"
#include "ops/drop_path.hpp"
#include "ops/gather.hpp"
#include "ops/layer_norm.hpp"
#include "ops/linear.hpp"
#include "ops/losses.hpp"
#include "ops/meanshift.hpp"
#include "ops/normalize.hpp"
#include "ops/patch_embed.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"
#include "ops/softmax.hpp"
#include "ops/weight_norm.hpp"
