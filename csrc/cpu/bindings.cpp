// Python bindings of the CPU extension fba._C. Each source file in csrc/cpu registers its functions here.
#include <pybind11/pybind11.h>

#include "block_counts.h"
#include "ranking.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "FBA CPU extension (pybind11 over NumPy)";
  fba::register_ranking(m);
  fba::register_block_counts(m);
}
