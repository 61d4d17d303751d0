// The C++ twin of the counting pass of fba.streaming.evaluate._rank_chunk (its torch code is the reference).
//
// For one block of distances [n, m] (queries x a slice of the gallery starting at g0) and each query's true
// matches sorted by (distance, gallery index), every kept wrong item (id != the query's, id != -1) is put in
// the bucket b = #matches at distance <= its own: histogram[q, b] += 1, so the running sum over buckets counts
// the wrong items strictly closer than each match. A wrong item at exactly a match's distance is before that
// match when its gallery index is smaller (tied[q, t] += 1), the stable order of fba.metrics.evaluate.
//
// The block may be approximate: each value within margin[q] of the exact distance (a float32 product bounding
// its rounding). An item whose window [value - margin, value + margin] holds no match distance is in the same
// bucket whatever its exact value; the others are returned as (row, column) pairs for the caller to settle
// with exact distances. With margin 0 every item is settled here, ties included.
// One pass over the block: one compare for the many items past the last match, else a count of the matches
// below the window (branch-free for up to 64 matches, a binary search beyond).
#include "block_counts.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace fba {
namespace {

constexpr int64_t kJunkPid = -1;

// Below this many matches a branch-free count (vectorised) beats a binary search's unpredictable branches.
constexpr int64_t kLinear = 64;

template <typename T>
inline int64_t matches_below(const T* matches, int64_t count, T value) {
  int64_t b = 0;
  for (int64_t k = 0; k < count; ++k) b += matches[k] < value;
  return b;
}

template <typename T>
inline int64_t matches_at_or_below(const T* matches, int64_t count, T value) {
  int64_t b = 0;
  for (int64_t k = 0; k < count; ++k) b += matches[k] <= value;
  return b;
}

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

template <typename T>
py::tuple count_block(Array<T> dist, Array<T> margin, Array<int64_t> block_pids, Array<int64_t> q_pids,
                      Array<T> match_dist, Array<int64_t> match_idx, Array<int64_t> counts, int64_t g0,
                      Array<int64_t> histogram, Array<int64_t> tied) {
  if (dist.ndim() != 2 || match_dist.ndim() != 2 || match_idx.ndim() != 2 || histogram.ndim() != 2 ||
      tied.ndim() != 2)
    throw std::invalid_argument("dist, match_dist, match_idx, histogram and tied must be 2-D");
  const int64_t n = dist.shape(0), m = dist.shape(1), width = match_dist.shape(1);
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
  };
  need(block_pids.ndim() == 1 && block_pids.shape(0) == m, "block_pids must have one entry per block column");
  need(q_pids.ndim() == 1 && q_pids.shape(0) == n && counts.ndim() == 1 && counts.shape(0) == n &&
           margin.ndim() == 1 && margin.shape(0) == n,
       "q_pids, margin and counts must have one entry per block row");
  need(match_dist.shape(0) == n && match_idx.shape(0) == n && match_idx.shape(1) == width,
       "match_dist and match_idx must be [rows, width]");
  need(histogram.shape(0) == n && histogram.shape(1) >= width + 1 && tied.shape(0) == n && tied.shape(1) >= width,
       "histogram must be [rows, >= width + 1] and tied [rows, >= width]");
  const T* d = dist.data();
  const T* e = margin.data();
  const int64_t* gp = block_pids.data();
  const int64_t* qp = q_pids.data();
  const T* md = match_dist.data();
  const int64_t* mi = match_idx.data();
  const int64_t* cnt = counts.data();
  int64_t* hist = histogram.mutable_data();
  int64_t* tie = tied.mutable_data();
  const int64_t hist_stride = histogram.shape(1), tie_stride = tied.shape(1);
  bool finite = true;
  std::vector<int64_t> unsure;  // row, column, row, column, ...
  {
    py::gil_scoped_release release;
    for (int64_t q = 0; q < n; ++q) {
      const int64_t count = cnt[q];
      if (count == 0) continue;
      const T* row = d + q * m;
      const T* matches = md + q * width;
      const int64_t* indices = mi + q * width;
      int64_t* h = hist + q * hist_stride;
      int64_t* t = tie + q * tie_stride;
      const T slack = e[q];
      const T last = matches[count - 1] + slack;
      const int64_t pid = qp[q];
      int64_t past_last = 0;
      for (int64_t j = 0; j < m; ++j) {
        const T value = row[j];
        if (!(value > last)) {
          if (std::isnan(value)) {
            finite = false;
            continue;
          }
          const int64_t g = gp[j];
          if (g == pid || g == kJunkPid) continue;
          const T low = value - slack, high = value + slack;
          const bool linear = count <= kLinear;
          const int64_t below = linear ? matches_below(matches, count, low)
                                       : std::lower_bound(matches, matches + count, low) - matches;
          const int64_t upto = linear ? matches_at_or_below(matches, count, high)
                                      : std::upper_bound(matches, matches + count, high) - matches;
          if (below == upto) {
            ++h[below];
          } else if (slack > 0) {
            unsure.push_back(q);
            unsure.push_back(j);
          } else {  // exactly at the distance of matches below .. upto - 1
            ++h[upto];
            for (int64_t k = below; k < upto; ++k) t[k] += indices[k] > g0 + j;
          }
        } else {
          const int64_t g = gp[j];
          past_last += (g != pid) & (g != kJunkPid);
        }
      }
      h[count] += past_last;
    }
  }
  Array<int64_t> pairs({static_cast<py::ssize_t>(unsure.size() / 2), static_cast<py::ssize_t>(2)});
  std::copy(unsure.begin(), unsure.end(), pairs.mutable_data());
  return py::make_tuple(finite, pairs);
}

}  // namespace

void register_block_counts(py::module_& m) {
  const char* doc =
      "count_block(dist, margin, block_pids, q_pids, match_dist, match_idx, counts, g0, histogram, tied)\n"
      "    -> (finite, unsure)\n\n"
      "Adds one distance block's wrong items to histogram[q, b] (b = matches at distance <= the item's) and\n"
      "tied[q, t] (at exactly match t's distance with a smaller gallery index), in place. dist[q] is within\n"
      "margin[q] of the exact distances; items whose bucket that leaves open are returned as unsure [k, 2]\n"
      "(row, column) pairs and not counted. match_dist rows are sorted, the first counts[q] real. finite is\n"
      "False when the block holds NaN. All C-contiguous; int64 ids.";
  m.def("count_block", &count_block<float>, doc, py::arg("dist").noconvert(), py::arg("margin").noconvert(),
        py::arg("block_pids").noconvert(), py::arg("q_pids").noconvert(), py::arg("match_dist").noconvert(),
        py::arg("match_idx").noconvert(), py::arg("counts").noconvert(), py::arg("g0"),
        py::arg("histogram").noconvert(), py::arg("tied").noconvert());
  m.def("count_block", &count_block<double>, doc, py::arg("dist").noconvert(), py::arg("margin").noconvert(),
        py::arg("block_pids").noconvert(), py::arg("q_pids").noconvert(), py::arg("match_dist").noconvert(),
        py::arg("match_idx").noconvert(), py::arg("counts").noconvert(), py::arg("g0"),
        py::arg("histogram").noconvert(), py::arg("tied").noconvert());
}

}  // namespace fba
