// Per-query ranking metrics (AP, INP, first-match rank) under the Market/Duke protocol; see ranking.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace fba {

void register_ranking(pybind11::module_& m);

}  // namespace fba
