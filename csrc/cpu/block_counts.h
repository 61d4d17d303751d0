// Counting pass of the streaming evaluation (fba.streaming.evaluate): wrong items before each true match.
#pragma once

#include <pybind11/pybind11.h>

namespace fba {

void register_block_counts(pybind11::module_& m);

}  // namespace fba
