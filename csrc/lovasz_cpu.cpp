// Lovász extension of the Jaccard loss on the CPU (see lovasz_cpu.h).
//
// Per row: keys that order the errors decreasingly (the float bits made monotone, then inverted;
// ignored elements get the largest key), sorted with their element indices by a least-significant-digit
// radix sort (a digit every key shares is skipped), which is stable: tied errors keep their element
// order. Then, in sorted order, with G = Σ g over the counted elements and running sums of g and 1 − g
// over the first i of them,
//   J_i = 1 − (G − Σ_{j≤i} g_πj) / (G + Σ_{j≤i} (1 − g_πj)),   d_i = J_i − J_{i−1} (J_0 = 0),
//   loss = Σ_i m_πi·d_i,
// sums in double. The union is never 0 (G = 0 makes every counted g 0, so it is i ≥ 1). Ignored
// elements come after every counted one, so they change nothing before them; their d is 0.
//
// float32 rows (the training path) sort one 64-bit word per element: the key in the high half, the
// element index in the low 31 bits and, while every g of the row is 0 or 1, g in bit 31. 8-bit digits,
// 4 passes: 256 buckets keep the scatter's write streams few, one array instead of two halves them, and
// the last pass reads m_πi back from the key (the key is a bijection of the float's bits) and g_πi from
// the word, so the only random access left is the write of d. On this project's machine, rows of
// 1.77 M elements ((2, 14, 96³) Lovász-softmax): 30 → 14 ms per row for the sort and 29 → 14 ms for the
// last pass, against keys and indices in two arrays with 11-bit digits and m, g gathered by index.
// float64 rows (gradcheck) and rows of 2^31 elements or more keep that two-array form.
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

// A digit's histogram h (n buckets, P keys) turned into the buckets' start offsets; false (h left as it
// is) when every key has the same digit, so that the pass would not move anything and is skipped.
inline bool bucket_starts(int64_t* h, int n, int64_t P) {
  for (int b = 0; b < n; ++b)
    if (h[b] == P) return false;
  int64_t sum = 0;
  for (int b = 0; b < n; ++b) {
    const int64_t c = h[b];
    h[b] = sum;
    sum += c;
  }
  return true;
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
    if (!bucket_starts(h, kBuckets, P)) continue;
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

// The inverse of descending_key for float32: the float's bits.
inline float from_descending_key(uint32_t key) {
  const uint32_t sign = uint32_t(1) << 31;
  const uint32_t ascending = ~key;
  const uint32_t u = (ascending & sign) ? (ascending & ~sign) : ~ascending;
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// float32 row, P < 2^31: see the file comment.
void lovasz_row_packed(const float* err, const float* fg, const uint8_t* valid, int64_t P, float* loss, float* d,
                       std::vector<uint64_t>& words, std::vector<uint64_t>& words2) {
  constexpr int kBits8 = 8, kBuckets8 = 1 << kBits8, kPasses8 = 4;
  constexpr uint64_t kGBit = uint64_t(1) << 31, kIndex = kGBit - 1;
  words.resize(static_cast<size_t>(P));
  words2.resize(static_cast<size_t>(P));
  int64_t hist[kPasses8][kBuckets8] = {};
  int64_t counted = 0;
  double G = 0.0;
  bool binary = true;  // every g is 0 or 1: g rides in bit 31
  for (int64_t i = 0; i < P; ++i) {
    const bool on = valid == nullptr || valid[i] != 0;
    const uint32_t k = on ? descending_key<float>(err[i]) : std::numeric_limits<uint32_t>::max();
    const float g = fg[i];
    binary = binary && (g == 0.0f || g == 1.0f);
    words[i] = (uint64_t(k) << 32) | (g == 1.0f ? kGBit : 0) | static_cast<uint64_t>(i);
    if (on) {
      ++counted;
      G += static_cast<double>(g);
    }
    for (int p = 0; p < kPasses8; ++p) ++hist[p][(k >> (p * kBits8)) & (kBuckets8 - 1)];
  }
  for (int p = 0; p < kPasses8; ++p) {
    int64_t* h = hist[p];
    if (!bucket_starts(h, kBuckets8, P)) continue;
    const int shift = 32 + p * kBits8;
    for (int64_t i = 0; i < P; ++i) {
      const uint64_t w = words[i];
      words2[h[(w >> shift) & (kBuckets8 - 1)]++] = w;
    }
    words.swap(words2);
  }
  double cum_g = 0.0, cum_ng = 0.0, j_prev = 0.0, total = 0.0;
  for (int64_t i = 0; i < counted; ++i) {
    const uint64_t w = words[i];
    const int64_t j = static_cast<int64_t>(w & kIndex);
    const double g = binary ? ((w & kGBit) ? 1.0 : 0.0) : static_cast<double>(fg[j]);
    cum_g += g;
    cum_ng += 1.0 - g;
    const double jac = 1.0 - (G - cum_g) / (G + cum_ng);
    const double di = jac - j_prev;
    j_prev = jac;
    total += static_cast<double>(from_descending_key(static_cast<uint32_t>(w >> 32))) * di;
    d[j] = static_cast<float>(di);
  }
  for (int64_t i = counted; i < P; ++i) d[words[i] & kIndex] = 0.0f;
  *loss = static_cast<float>(total);
}

void lovasz_rows_packed(const float* err, const float* fg, const uint8_t* valid, int64_t R, int64_t P, float* loss,
                        float* d, int threads) {
  parallel_for(R, threads, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> words, words2;
    for (int64_t r = begin; r < end; ++r)
      lovasz_row_packed(err + r * P, fg + r * P, valid ? valid + r * P : nullptr, P, loss + r, d + r * P, words,
                        words2);
  });
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
  if (elem == 4 && P < (int64_t(1) << 31))
    lovasz_rows_packed(static_cast<const float*>(errors), static_cast<const float*>(fg), valid, R, P,
                       static_cast<float*>(loss), static_cast<float*>(d), threads);
  else if (elem == 4)
    lovasz_rows<float>(static_cast<const float*>(errors), static_cast<const float*>(fg), valid, R, P,
                       static_cast<float*>(loss), static_cast<float*>(d), threads);
  else if (elem == 8)
    lovasz_rows<double>(static_cast<const double*>(errors), static_cast<const double*>(fg), valid, R, P,
                        static_cast<double*>(loss), static_cast<double*>(d), threads);
  else
    throw std::invalid_argument("lovasz_cpu: expected float32 or float64");
}

}  // namespace fastloss
