// The data layer in one include: decoding, datasets, the FLSL multi-crop transform and the loader.
#pragma once

#include "blur.hpp"
#include "color.hpp"
#include "dataset.hpp"
#include "decode.hpp"
#include "encode.hpp"
#include "folder_dataset.hpp"
#include "image.hpp"
#include "loader.hpp"
#include "multicrop.hpp"
#include "procedural.hpp"
#include "query_tokens.hpp"
#include "random_resized_crop.hpp"
#include "resample.hpp"
#include "transforms.hpp"
