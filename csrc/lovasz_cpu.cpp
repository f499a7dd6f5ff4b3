// Lovász extension of the Jaccard loss on the CPU (see lovasz_cpu.h).
//
// Per row: keys that order the errors decreasingly (the float bits made monotone, then inverted;
// ignored elements get the largest key), sorted with their element indices by a least-significant-digit
// radix sort of 11-bit digits (3 passes for float32, 6 for float64; a digit every key shares is skipped),
// which is stable: tied errors keep their element order. Then, in sorted order, with G = Σ g over the
// counted elements and running sums of g and 1 − g over the first i of them,
//   J_i = 1 − (G − Σ_{j≤i} g_πj) / (G + Σ_{j≤i} (1 − g_πj)),   d_i = J_i − J_{i−1} (J_0 = 0),
//   loss = Σ_i m_πi·d_i,
// sums in double. The union is never 0 (G = 0 makes every counted g 0, so it is i ≥ 1). Ignored
// elements come after every counted one, so they change nothing before them; their d is 0.
#include "lovasz_cpu.h"

#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "parallel.h"

namespace fastloss {
namespace {

constexpr int kDigitBits = 11;
constexpr int kBuckets = 1 << kDigitBits;

template <class S>
using KeyOf = typename std::conditional<sizeof(S) == 4, uint32_t, uint64_t>::type;

// A key that sorts ascending as the value sorts descending: IEEE bits made monotone (negative values
// inverted, positive ones with the sign bit set), then inverted. NaN of either sign sorts as it does
// under torch.sort(descending=True): a positive NaN first, a negative one after every number.
template <class S>
inline KeyOf<S> descending_key(S v) {
  using K = KeyOf<S>;
  K u;
  std::memcpy(&u, &v, sizeof u);
  const K sign = K(1) << (8 * sizeof(K) - 1);
  const K ascending = (u & sign) ? ~u : (u | sign);
  return ~ascending;
}

template <class S>
void lovasz_row(const S* err, const S* fg, const uint8_t* valid, int64_t P, S* loss, S* d, std::vector<KeyOf<S>>& keys,
                std::vector<KeyOf<S>>& keys2, std::vector<uint32_t>& idx, std::vector<uint32_t>& idx2) {
  using K = KeyOf<S>;
  constexpr int kBits = 8 * sizeof(K);
  constexpr int kPasses = (kBits + kDigitBits - 1) / kDigitBits;
  keys.resize(P);
  keys2.resize(P);
  idx.resize(P);
  idx2.resize(P);
  // keys, and every digit's histogram in the same read
  std::vector<int64_t> hist(static_cast<size_t>(kPasses) * kBuckets, 0);
  int64_t counted = 0;
  double G = 0.0;
  for (int64_t i = 0; i < P; ++i) {
    const bool on = valid == nullptr || valid[i] != 0;
    const K k = on ? descending_key<S>(err[i]) : std::numeric_limits<K>::max();
    keys[i] = k;
    idx[i] = static_cast<uint32_t>(i);
    if (on) {
      ++counted;
      G += static_cast<double>(fg[i]);
    }
    for (int p = 0; p < kPasses; ++p) ++hist[p * kBuckets + ((k >> (p * kDigitBits)) & (kBuckets - 1))];
  }
  for (int p = 0; p < kPasses; ++p) {
    int64_t* h = hist.data() + p * kBuckets;
    bool trivial = false;
    for (int b = 0; b < kBuckets; ++b)
      if (h[b] == P) trivial = true;  // every key has this digit: the pass would not move anything
    if (trivial) continue;
    int64_t sum = 0;
    for (int b = 0; b < kBuckets; ++b) {  // bucket starts
      const int64_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    const int shift = p * kDigitBits;
    for (int64_t i = 0; i < P; ++i) {
      const K k = keys[i];
      const int64_t at = h[(k >> shift) & (kBuckets - 1)]++;
      keys2[at] = k;
      idx2[at] = idx[i];
    }
    keys.swap(keys2);
    idx.swap(idx2);
  }
  // the ignored elements are the last P − counted of the order
  double cum_g = 0.0, cum_ng = 0.0, j_prev = 0.0, total = 0.0;
  for (int64_t i = 0; i < counted; ++i) {
    const uint32_t j = idx[i];
    const double g = static_cast<double>(fg[j]);
    cum_g += g;
    cum_ng += 1.0 - g;
    const double jac = 1.0 - (G - cum_g) / (G + cum_ng);
    const double di = jac - j_prev;
    j_prev = jac;
    total += static_cast<double>(err[j]) * di;
    d[j] = static_cast<S>(di);
  }
  for (int64_t i = counted; i < P; ++i) d[idx[i]] = S(0);
  *loss = static_cast<S>(total);
}

template <class S>
void lovasz_rows(const S* err, const S* fg, const uint8_t* valid, int64_t R, int64_t P, S* loss, S* d, int threads) {
  parallel_for(R, threads, [&](int64_t begin, int64_t end) {
    std::vector<KeyOf<S>> keys, keys2;
    std::vector<uint32_t> idx, idx2;
    for (int64_t r = begin; r < end; ++r)
      lovasz_row<S>(err + r * P, fg + r * P, valid ? valid + r * P : nullptr, P, loss + r, d + r * P, keys, keys2,
                    idx, idx2);
  });
}

}  // namespace

void lovasz_cpu(const void* errors, const void* fg, const uint8_t* valid, int64_t R, int64_t P, int elem, void* loss,
                void* d, int threads) {
  if (R < 0 || P < 0) throw std::invalid_argument("lovasz_cpu: negative size");
  if (P > static_cast<int64_t>(std::numeric_limits<uint32_t>::max()))
    throw std::invalid_argument("lovasz_cpu: rows longer than 2^32 - 1 elements");
  threads = resolve_threads(threads);
  if (elem == 4)
    lovasz_rows<float>(static_cast<const float*>(errors), static_cast<const float*>(fg), valid, R, P,
                       static_cast<float*>(loss), static_cast<float*>(d), threads);
  else if (elem == 8)
    lovasz_rows<double>(static_cast<const double*>(errors), static_cast<const double*>(fg), valid, R, P,
                        static_cast<double*>(loss), static_cast<double*>(d), threads);
  else
    throw std::invalid_argument("lovasz_cpu: expected float32 or float64");
}

}  // namespace fastloss
