// Per-query AP, INP and rank of the first true match, the C++ twin of fba.metrics._rank_metrics_numpy.
//
// A query needs the rank of each of its few true matches among the kept gallery items, not the full order of
// the gallery. So instead of sorting G distances (O(G log G)), the kept wrong items are gathered once and, for
// each of the P true matches, those closer than it are counted in a vectorised pass: O(G P) simple compares
// with P ~ 20 on Market-1501. The order is the stable one of NumPy: by distance, then by gallery index.
#include "ranking.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace fba {
namespace {

constexpr int64_t kJunkPid = -1;

template <typename T>
struct Match {
  T dist;
  int64_t index;
};

// Kept wrong items (dist, index) of the query that precede a match at (dist, index) in the stable order. The
// strict comparison is a branch-free loop the compiler vectorises; ties, rare, are settled by gallery index.
template <typename T>
inline int64_t wrong_before(const std::vector<T>& wrong_dist, const std::vector<int64_t>& wrong_index, T dist,
                            int64_t index) {
  const T* w = wrong_dist.data();
  const int64_t n = static_cast<int64_t>(wrong_dist.size());
  int32_t less = 0, equal = 0;
  for (int64_t j = 0; j < n; ++j) {
    less += w[j] < dist;
    equal += w[j] == dist;
  }
  int64_t count = less;
  if (equal > 0) {
    for (int64_t j = 0; j < n; ++j) count += (w[j] == dist && wrong_index[j] < index);
  }
  return count;
}

struct QueryResult {
  double ap;
  double inp;
  int64_t first_rank;
};

template <typename T>
struct Workspace {
  std::vector<Match<T>> matches;
  std::vector<T> wrong_dist;
  std::vector<int64_t> wrong_index;
};

template <typename T>
QueryResult rank_query(const T* dist, int64_t num_gallery, int64_t q_pid, int64_t q_cam, const int64_t* g_pids,
                       const int64_t* g_cams, Workspace<T>& ws) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  ws.matches.clear();
  ws.wrong_dist.resize(num_gallery);
  ws.wrong_index.resize(num_gallery);
  int64_t num_wrong = 0;
  if (q_pid != kJunkPid) {
    for (int64_t j = 0; j < num_gallery; ++j) {
      const int64_t pid = g_pids[j];
      if (pid == q_pid) {
        if (g_cams[j] != q_cam) ws.matches.push_back({dist[j], j});
      } else if (pid != kJunkPid) {
        ws.wrong_dist[num_wrong] = dist[j];
        ws.wrong_index[num_wrong] = j;
        ++num_wrong;
      }
    }
  }
  if (ws.matches.empty()) return {nan, nan, -1};
  ws.wrong_dist.resize(num_wrong);
  ws.wrong_index.resize(num_wrong);
  std::sort(ws.matches.begin(), ws.matches.end(), [](const Match<T>& a, const Match<T>& b) {
    return a.dist < b.dist || (a.dist == b.dist && a.index < b.index);
  });
  double ap = 0.0;
  int64_t rank = 0, first_rank = 0;
  for (size_t t = 0; t < ws.matches.size(); ++t) {
    rank = wrong_before(ws.wrong_dist, ws.wrong_index, ws.matches[t].dist, ws.matches[t].index) +
           static_cast<int64_t>(t);
    if (t == 0) first_rank = rank;
    ap += static_cast<double>(t + 1) / static_cast<double>(rank + 1);
  }
  const double num_rel = static_cast<double>(ws.matches.size());
  return {ap / num_rel, num_rel / static_cast<double>(rank + 1), first_rank};
}

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

template <typename T>
py::tuple rank_metrics(Array<T> distmat, Array<int64_t> q_pids, Array<int64_t> g_pids, Array<int64_t> q_camids,
                       Array<int64_t> g_camids) {
  if (distmat.ndim() != 2) throw std::invalid_argument("distmat must be 2-D [num_query, num_gallery]");
  const int64_t num_query = distmat.shape(0), num_gallery = distmat.shape(1);
  auto check = [](const py::array& a, int64_t n, const char* name) {
    if (a.ndim() != 1 || a.shape(0) != n)
      throw std::invalid_argument(std::string(name) + " must be 1-D of length " + std::to_string(n));
  };
  check(q_pids, num_query, "q_pids");
  check(q_camids, num_query, "q_camids");
  check(g_pids, num_gallery, "g_pids");
  check(g_camids, num_gallery, "g_camids");

  py::array_t<double> ap(num_query), inp(num_query);
  py::array_t<int64_t> first_rank(num_query);
  const T* d = distmat.data();
  const int64_t *qp = q_pids.data(), *qc = q_camids.data(), *gp = g_pids.data(), *gc = g_camids.data();
  double *ap_out = ap.mutable_data(), *inp_out = inp.mutable_data();
  int64_t* rank_out = first_rank.mutable_data();
  {
    py::gil_scoped_release release;
    Workspace<T> ws;
    for (int64_t q = 0; q < num_query; ++q) {
      const QueryResult r = rank_query(d + q * num_gallery, num_gallery, qp[q], qc[q], gp, gc, ws);
      ap_out[q] = r.ap;
      inp_out[q] = r.inp;
      rank_out[q] = r.first_rank;
    }
  }
  return py::make_tuple(ap, inp, first_rank);
}

}  // namespace

void register_ranking(py::module_& m) {
  const char* doc =
      "rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids) -> (ap, inp, first_rank)\n\n"
      "Per-query AP, INP and 0-based rank of the first true match under the Market/Duke protocol (NaN, NaN, -1\n"
      "for a query without a valid match). distmat: C-contiguous float32 or float64; ids and cameras: int64.";
  m.def("rank_metrics", &rank_metrics<float>, doc, py::arg("distmat").noconvert(), py::arg("q_pids").noconvert(),
        py::arg("g_pids").noconvert(), py::arg("q_camids").noconvert(), py::arg("g_camids").noconvert());
  m.def("rank_metrics", &rank_metrics<double>, doc, py::arg("distmat").noconvert(), py::arg("q_pids").noconvert(),
        py::arg("g_pids").noconvert(), py::arg("q_camids").noconvert(), py::arg("g_camids").noconvert());
}

}  // namespace fba
