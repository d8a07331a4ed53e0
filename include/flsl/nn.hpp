// The module layer: compile-time layer specs, composition and named parameters.
#pragma once

#include "nn/layers.hpp"
#include "nn/module.hpp"
#include "nn/pos_embed.hpp"
#include "nn/sequential.hpp"
#include "nn/vit.hpp"
