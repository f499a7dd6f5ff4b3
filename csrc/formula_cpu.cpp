// See formula_cpu.h. One (b, c) loop per term; sums in a fixed order (deterministic), accumulated in double.
#include "formula_cpu.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace fastloss {
namespace {

enum Int { kRegion, kFirst, kBatch, kRegionMean, kTp, kPs, kGs, kDist, kDistMean, kCeWDen, kFocalMasked,
           kCe, kG, kCount, kFocal, kGdWeight, kGdRelative, kGdF32, kNumInts };
enum Float { kSmoothNr, kSmoothDr, kAlpha, kBeta, kLamR, kLamD, kRegionNumel, kDistDiv, kEps, kNumFloats };

void check_column(int64_t k, int64_t K, const char* what) {
  if (k < 0 || k >= K)
    throw std::invalid_argument(std::string("loss formula: column ") + what + " = " + std::to_string(k) +
                                " outside [0, " + std::to_string(K) + ")");
}

}  // namespace

float loss_formula_cpu(const float* s, int64_t B, int64_t C, int64_t K, const float* rw, int64_t rw_stride,
                       const float* dw, int64_t dw_stride, const std::vector<int64_t>& ints,
                       const std::vector<double>& fl, float* ds) {
  if (ints.size() != kNumInts || fl.size() != kNumFloats)
    throw std::invalid_argument("loss formula: expected " + std::to_string(int(kNumInts)) + " ints and " +
                                std::to_string(int(kNumFloats)) + " floats");
  if (B < 1 || C < 1 || K < 1) throw std::invalid_argument("loss formula: empty statistics");
  auto at = [&](int64_t b, int64_t c, int64_t k) { return (b * C + c) * K + k; };
  auto S = [&](int64_t b, int64_t c, int64_t k) { return static_cast<double>(s[at(b, c, k)]); };
  std::vector<double> g(static_cast<size_t>(B * C * K), 0.0);  // dL/dstats, in double until stored
  double loss = 0.0;

  const int64_t region = ints[kRegion];
  if (region == 4) {
    // Generalized Dice (Sudre et al.; region.GeneralizedDiceLoss), per row r (the batch summed with batch):
    //   w_c = 1/G_c² (square), 1/G_c (simple) or 1 (uniform), an infinite weight (G_c = 0) replaced by the
    //   row's largest finite one (MONAI's rule; in float32 where MONAI computes them so);
    //   num = 2 Σ_c w_c tp_c + s_nr·W,  den = Σ_c w_c (2tp_c + fp_c + fn_c) + s_dr·W,  f_r = 1 − num/den,
    //   W = 1, or Σ_c w_c G_c (1 where that is 0) with the relative smoothing.
    // den = Σ_c w_c (P_c + G_c) + s_dr·W does not depend on tp: ∂f/∂tp_c = −2 w_c/den, ∂f/∂P_c = num·w_c/den².
    // The weights and W depend on the target volumes G only, which have no path to the logits: dL/dG is
    // left 0 (the fused path is not taken for a target that requires grad).
    const int64_t c0 = std::max<int64_t>(ints[kFirst], 0), i_tp = ints[kTp], i_ps = ints[kPs], i_gs = ints[kGs];
    check_column(i_tp, K, "i_tp");
    check_column(i_ps, K, "i_ps");
    check_column(i_gs, K, "i_gs");
    const bool batch = ints[kBatch] != 0, mean = ints[kRegionMean] != 0, relative = ints[kGdRelative] != 0;
    const bool f32 = ints[kGdF32] != 0;
    const int64_t wtype = ints[kGdWeight];
    if (wtype < 0 || wtype > 2) throw std::invalid_argument("loss formula: unknown generalized Dice weight " + std::to_string(wtype));
    const double lam = fl[kLamR], numel = fl[kRegionNumel], snr = fl[kSmoothNr], sdr = fl[kSmoothDr];
    const int64_t rows = batch ? 1 : B, Cr = C - c0;
    std::vector<double> tp(static_cast<size_t>(Cr)), ps(static_cast<size_t>(Cr)), gs(static_cast<size_t>(Cr)),
        w(static_cast<size_t>(Cr));
    double tot = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b0 = batch ? 0 : r, b1 = batch ? B : r + 1;
      double wmax = 0.0;
      for (int64_t c = c0; c < C; ++c) {
        double t = 0.0, p = 0.0, q = 0.0;
        for (int64_t b = b0; b < b1; ++b) {
          t += S(b, c, i_tp);
          p += S(b, c, i_ps);
          q += S(b, c, i_gs);
        }
        const size_t j = static_cast<size_t>(c - c0);
        tp[j] = t, ps[j] = p, gs[j] = q;
        double wc;
        if (wtype == 0) {
          wc = 1.0;
        } else if (f32) {
          const float gf = static_cast<float>(q);
          wc = static_cast<double>(wtype == 1 ? 1.0f / gf : 1.0f / (gf * gf));
        } else {
          wc = wtype == 1 ? 1.0 / q : 1.0 / (q * q);
        }
        w[j] = wc;
        if (!std::isinf(wc)) wmax = std::max(wmax, wc);
      }
      double num = 0.0, den = 0.0, vol = 0.0;
      for (size_t j = 0; j < static_cast<size_t>(Cr); ++j) {
        if (std::isinf(w[j])) w[j] = wmax;
        num += w[j] * tp[j];
        den += w[j] * (2.0 * tp[j] + (ps[j] - tp[j]) + (gs[j] - tp[j]));
        vol += gs[j] * w[j];
      }
      num *= 2.0;
      const double scale = relative ? (vol > 0.0 ? vol : 1.0) : 1.0;
      num += snr * scale;
      den += sdr * scale;
      tot += 1.0 - num / den;
      const double gf = mean ? lam / numel : lam;  // dL/df_r
      for (int64_t c = c0; c < C; ++c) {
        const double wc = w[static_cast<size_t>(c - c0)];
        const double gtp = gf * (-2.0 * wc / den), gps = gf * (num * wc / (den * den));
        for (int64_t b = b0; b < b1; ++b) {  // batch: dL/dS_bc = dL/dS_c
          g[at(b, c, i_tp)] += gtp;
          g[at(b, c, i_ps)] += gps;
        }
      }
    }
    loss += mean ? lam * (tot / numel) : lam * tot;
  } else if (region != 0) {
    const int64_t c0 = ints[kFirst], i_tp = ints[kTp], i_ps = ints[kPs], i_gs = ints[kGs];
    check_column(i_tp, K, "i_tp");
    check_column(i_ps, K, "i_ps");
    check_column(i_gs, K, "i_gs");
    const bool batch = ints[kBatch] != 0, mean = ints[kRegionMean] != 0;
    const double lam = fl[kLamR], numel = fl[kRegionNumel], snr = fl[kSmoothNr], sdr = fl[kSmoothDr];
    const double ta = fl[kAlpha], tb = fl[kBeta];
    // f = 1 − num/den with r = num/den: ∂f/∂S = −(∂num/∂S)/den + (r/den)·(∂den/∂S), S ∈ {tp, P, G}
    //   Dice:    num = 2tp + s_nr, den = P + G + s_dr:            ∂num = (2, 0, 0), ∂den = (0, 1, 1)
    //   Jaccard: num = 2tp + s_nr, den = 2(P + G − tp) + s_dr:    ∂num = (2, 0, 0), ∂den = (−2, 2, 2)
    //   Tversky: num = tp + s_nr, den = tp + α·fp + β·fn + s_dr:  ∂num = (1, 0, 0), ∂den = (1 − α − β, α, β)
    double a_tp, b_tp, b_ps, b_gs;
    if (region == 1) {
      a_tp = 2.0, b_tp = 0.0, b_ps = 1.0, b_gs = 1.0;
    } else if (region == 2) {
      a_tp = 2.0, b_tp = -2.0, b_ps = 2.0, b_gs = 2.0;
    } else if (region == 3) {
      a_tp = 1.0, b_tp = 1.0 - ta - tb, b_ps = ta, b_gs = tb;
    } else {
      throw std::invalid_argument("loss formula: unknown region term " + std::to_string(region));
    }
    double tot = 0.0;
    const int64_t rows = batch ? 1 : B;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = std::max<int64_t>(c0, 0); c < C; ++c) {
        double tp = 0.0, ps = 0.0, gs = 0.0;
        for (int64_t b = batch ? 0 : r; b < (batch ? B : r + 1); ++b) {  // batch: the sums over the batch
          tp += S(b, c, i_tp);
          ps += S(b, c, i_ps);
          gs += S(b, c, i_gs);
        }
        const double fp = ps - tp, fn = gs - tp;
        double num, den;
        if (region == 3) {
          num = tp + snr;
          den = tp + ta * fp + tb * fn + sdr;
        } else {
          num = 2.0 * tp + snr;
          den = (region == 1 ? 2.0 * (tp + 0.5 * (fp + fn)) : 2.0 * (tp + fp + fn)) + sdr;
        }
        const double inv = 1.0 / den, ratio = num / den;
        const double w = rw ? static_cast<double>(rw[(c - c0) * rw_stride]) : 1.0;
        tot += (1.0 - ratio) * w;
        const double gf = mean ? (lam / numel) * w : lam * w;  // dL/df_bc
        const double q = ratio * inv;
        const double gtp = gf * (b_tp * q - a_tp * inv), gps = gf * (b_ps * q), ggs = gf * (b_gs * q);
        for (int64_t b = batch ? 0 : r; b < (batch ? B : r + 1); ++b) {  // batch: dL/dS_bc = dL/dS_c
          g[at(b, c, i_tp)] += gtp;
          g[at(b, c, i_ps)] += gps;
          g[at(b, c, i_gs)] += ggs;
        }
      }
    }
    loss += mean ? lam * (tot / numel) : lam * tot;
  }

  const int64_t dist = ints[kDist];
  auto wc = [&](int64_t c) { return dw ? static_cast<double>(dw[c * dw_stride]) : 1.0; };
  const double lam = fl[kLamD];
  const bool dmean = ints[kDistMean] != 0;
  if (dist == 1) {
    // CE: num = Σ_c w_c Σ_b ce_bc; mean: num/den, den = Σ_b count_b0 (unweighted or soft targets) or
    // Σ_c w_c Σ_b g_bc (labels + weight: torch's Σ_i w_{y_i}); den = 0 → den := 1 (gradient 0 through den)
    const int64_t i_ce = ints[kCe];
    check_column(i_ce, K, "i_ce");
    double num = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      double col = 0.0;
      for (int64_t b = 0; b < B; ++b) col += S(b, c, i_ce);
      num += wc(c) * col;
    }
    if (dmean) {
      const bool wden = ints[kCeWDen] != 0;
      const int64_t i_den = wden ? ints[kG] : ints[kCount];
      check_column(i_den, K, wden ? "i_g" : "i_count");
      double den = 0.0;
      if (wden) {
        for (int64_t c = 0; c < C; ++c) {
          double col = 0.0;
          for (int64_t b = 0; b < B; ++b) col += S(b, c, i_den);
          den += wc(c) * col;
        }
      } else {
        for (int64_t b = 0; b < B; ++b) den += S(b, 0, i_den);
      }
      const bool pos = den > 0.0;
      const double den_s = pos ? den : 1.0, val = num / den_s;
      loss += lam * val;
      const double gnum = lam / den_s, gden = pos ? -(lam * val) / den_s : 0.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          g[at(b, c, i_ce)] += gnum * wc(c);
          if (wden) g[at(b, c, i_den)] += gden * wc(c);
        }
      if (!wden)
        for (int64_t b = 0; b < B; ++b) g[at(b, 0, i_den)] += gden;  // ∂den/∂count_b0 = 1
    } else {
      loss += lam * num;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) g[at(b, c, i_ce)] += lam * wc(c);
    }
  } else if (dist == 2) {
    // Focal: sums_bc = focal_bc·w_c. Masked: mean Σ sums / max(Σ_b cnt_b, ε), sum Σ_b Σ_c sums_bc /
    // max(cnt_b, ε); unmasked: Σ sums / divisor. Linear in focal_bc; the counts get no gradient (the torch
    // formula reads them from the mask, which has no path to the logits).
    const int64_t i_f = ints[kFocal];
    check_column(i_f, K, "i_focal");
    const double eps = fl[kEps], div = fl[kDistDiv];
    if (ints[kFocalMasked] != 0) {
      const int64_t i_cnt = ints[kCount];
      check_column(i_cnt, K, "i_count");
      if (dmean) {
        double cnt = 0.0, tot = 0.0;
        for (int64_t b = 0; b < B; ++b) cnt += S(b, 0, i_cnt);
        cnt = std::max(cnt, eps);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < C; ++c) tot += S(b, c, i_f) * wc(c);
        loss += lam * (tot / cnt);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < C; ++c) g[at(b, c, i_f)] += (lam / cnt) * wc(c);
      } else {
        double tot = 0.0;
        for (int64_t b = 0; b < B; ++b) {
          const double cb = std::max(S(b, 0, i_cnt), eps);
          for (int64_t c = 0; c < C; ++c) {
            tot += S(b, c, i_f) * wc(c) / cb;
            g[at(b, c, i_f)] += (lam / cb) * wc(c);
          }
        }
        loss += lam * tot;
      }
    } else {
      double tot = 0.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          tot += S(b, c, i_f) * wc(c);
          g[at(b, c, i_f)] += (lam / div) * wc(c);
        }
      loss += lam * (tot / div);
    }
  } else if (dist != 0) {
    throw std::invalid_argument("loss formula: unknown distribution term " + std::to_string(dist));
  }
  for (size_t i = 0; i < g.size(); ++i) ds[i] = static_cast<float>(g[i]);
  return static_cast<float>(loss);
}

}  // namespace fastloss
