// The selective scan on the CPU, one loop nest a sequence: mbsnet's native scan.
//
// mbsnet/models/scan/native.py builds this file with the system C++ compiler into a plain
// shared library (no Python or PyTorch headers: it compiles in seconds) and calls it through
// ctypes, which releases the GIL, so Python threads can run sequences in parallel. The
// arithmetic is that of mbsnet/models/scan/modes.py (exact: Mamba-1's S6; as coded: the
// original code's clamps, with torch.clamp's gradient convention).
//
// Per sequence the state h is [d_state][dim], channels innermost, so every loop runs over
// channels in vectors of W floats (GCC/Clang vector extensions: no compiler flag decides
// whether it vectorises), and stays in the L1 cache; backward recomputes the sequence's
// states into a [length][d_state][dim] buffer, then walks them backwards with the adjoint.
//
// Layout (contiguous, float32): x, delta, y, g, gx, gdelta [count][length][dim];
// B, C, gB, gC [count][length][d_state]; At, gAt [d_state][dim] (A transposed).

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using i64 = std::int64_t;

constexpr float kExponentMin = -10.0f;  // as coded: clamp(Δ·A, -10, 0)
constexpr float kDecayMax = 0.999f;     // as coded: clamp(exp(.), 0, 0.999)
constexpr float kInputLimit = 10.0f;    // as coded: clamp(clamp(Δ, 0, 1)·B, -10, 10)
constexpr float kStateLimit = 100.0f;   // as coded: clamp(h, -100, 100)

#if defined(__AVX__)
constexpr i64 W = 8;  // floats a vector: one AVX register
#else
constexpr i64 W = 4;  // one SSE or NEON register
#endif
typedef float vf __attribute__((vector_size(4 * W)));
typedef std::int32_t vi __attribute__((vector_size(4 * W)));
using Full = std::integral_constant<i64, W>;

#define MBSNET_INLINE inline __attribute__((always_inline))

MBSNET_INLINE vf splat(float v) { return vf{} + v; }

// m floats from p (m = W: one vector load; fewer: the tail of a row, zero-filled)
template <class M>
MBSNET_INLINE vf load(const float* p, M m) {
  vf v = splat(0.0f);
  std::memcpy(&v, p, sizeof(float) * m);
  return v;
}

template <class M>
MBSNET_INLINE void store(float* p, vf v, M m) {
  std::memcpy(p, &v, sizeof(float) * m);
}

MBSNET_INLINE float total(vf v) {
  float s = 0.0f;
  for (i64 i = 0; i < W; ++i) s += v[i];
  return s;
}

// NaN stays NaN (both comparisons are false), as with torch.clamp
MBSNET_INLINE vf clamp(vf v, float lo, float hi) {
  return v < splat(lo) ? splat(lo) : (v > splat(hi) ? splat(hi) : v);
}

// where lo <= v <= hi: where torch.clamp lets the gradient through
MBSNET_INLINE vi within(vf v, float lo, float hi) { return (v >= splat(lo)) & (v <= splat(hi)); }

// exp(v) within a few ulp: v = k·ln2 + r, |r| <= ln2/2 (ln2 in two parts, so k·ln2 is exact),
// exp(r) by a degree-7 polynomial, 2^k built in the exponent bits. Below -87.33 (2^-126) it
// gives 0, not a subnormal; NaN stays NaN; -inf gives 0, +inf gives inf.
MBSNET_INLINE vf exp_approx(vf v) {
  const vf vc = clamp(v, -87.3365447504019f, 88.3762626647949f);
  const vf shifter = splat(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const vf k = (vc * splat(1.44269504088896341f) + shifter) - shifter;
  vf r = vc - k * splat(0.693359375f);
  r = r - k * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const vf e = p * r * r + r + splat(1.0f);
  const vi ki = __builtin_convertvector(k == k ? k : splat(0.0f), vi);  // NaN: e is NaN anyway
  const vf scale = (vf)((ki + 127) << 23);
  return v < splat(-87.3365447504019f) ? splat(0.0f) : e * scale;
}

// body(d, m) for every run of m <= W channels from d: full vectors, then one partial tail
template <class Body>
MBSNET_INLINE void over_channels(i64 dim, Body&& body) {
  i64 d = 0;
  for (; d + W <= dim; d += W) body(d, Full{});
  if (d < dim) body(d, dim - d);
}

struct Dims {
  i64 length, dim, nstate;
};

// a = exp(Δ·A) (exact) or clamp(exp(clamp(Δ·A, -10, 0)), 0, 0.999) (as coded)
template <bool AsCoded>
MBSNET_INLINE vf decay(vf z) {
  if constexpr (AsCoded) {
    const vf e = exp_approx(clamp(z, kExponentMin, 0.0f));
    return e > splat(kDecayMax) ? splat(kDecayMax) : e;
  } else {
    return exp_approx(z);
  }
}

// u = (Δ·x)·B (exact; dx = Δ·x) or clamp(p·B, -10, 10)·x (as coded; dx = p = clamp(Δ, 0, 1))
template <bool AsCoded>
MBSNET_INLINE vf drive(vf dx, vf x, vf b) {
  if constexpr (AsCoded) {
    return clamp(dx * b, -kInputLimit, kInputLimit) * x;
  } else {
    (void)x;
    return dx * b;
  }
}

template <bool AsCoded>
MBSNET_INLINE void prepare_step(const float* delta, const float* x, float* dx, i64 dim) {
  over_channels(dim, [&](i64 d, auto m) __attribute__((always_inline)) {
    const vf dt = load(delta + d, m);
    store(dx + d, AsCoded ? clamp(dt, 0.0f, 1.0f) : dt * load(x + d, m), m);
  });
}

// The states of one sequence: every h_t into ``states`` ([length][nstate][dim]) when it is
// given, else h_t over h in place; y_t = C_t·h_t into y (``y_stride`` 0: one scratch row).
template <bool AsCoded>
MBSNET_INLINE void run_states(const Dims& s, const float* x, const float* delta, const float* At,
                              const float* B, const float* C, float* y, i64 y_stride, float* h,
                              float* states, float* dx) {
  const i64 dim = s.dim, ns = s.nstate;
  std::memset(h, 0, sizeof(float) * ns * dim);
  for (i64 t = 0; t < s.length; ++t) {
    const float* xt = x + t * dim;
    const float* dt = delta + t * dim;
    prepare_step<AsCoded>(dt, xt, dx, dim);
    float* yt = y + t * y_stride;
    std::memset(yt, 0, sizeof(float) * dim);
    float* out = states ? states + t * ns * dim : h;
    const float* prev = (states && t > 0) ? states + (t - 1) * ns * dim : h;
    for (i64 n = 0; n < ns; ++n) {
      const vf b = splat(B[t * ns + n]), c = splat(C[t * ns + n]);
      const float* an = At + n * dim;
      const float* pn = prev + n * dim;
      float* hn = out + n * dim;
      over_channels(dim, [&](i64 d, auto m) __attribute__((always_inline)) {
        const vf z = load(dt + d, m) * load(an + d, m);
        vf v = decay<AsCoded>(z) * load(pn + d, m) +
               drive<AsCoded>(load(dx + d, m), load(xt + d, m), b);
        if constexpr (AsCoded) v = clamp(v, -kStateLimit, kStateLimit);
        store(hn + d, v, m);
        store(yt + d, load(yt + d, m) + v * c, m);
      });
    }
  }
}

// Per-channel sums of one backward step, over the states n.
struct StepSums {
  float* u;      // exact: Σ λ·B; as coded: Σ λ·clamp(p·B)         -> x's gradient
  float* p;      // as coded: Σ λ·x·B where the input clamp passes -> p's gradient
  float* decay;  // Σ w·A, w the gradient reaching Δ·A              -> Δ's gradient
};

// One step t of backward over every state n. g: the gradient reaching y_t before the skip
// term; carry: a_{t+1}·λ_{t+1} (λ: the gradient reaching u, and the pre-clamp state), made
// a_t·λ_t for step t-1. Writes the gradients of B_t and C_t, the StepSums, adds w·Δ to gAt.
template <bool AsCoded>
MBSNET_INLINE void backward_step(const Dims& s, i64 t, const float* xt, const float* dt,
                                 const float* At, const float* Bt, const float* Ct,
                                 const float* g, const float* states, const float* dx,
                                 float* carry, float* gAt, float* gbt, float* gct,
                                 const StepSums& sums) {
  const i64 dim = s.dim, ns = s.nstate;
  std::memset(sums.u, 0, sizeof(float) * dim);
  std::memset(sums.p, 0, sizeof(float) * dim);
  std::memset(sums.decay, 0, sizeof(float) * dim);
  for (i64 n = 0; n < ns; ++n) {
    const vf b = splat(Bt[n]), c = splat(Ct[n]);
    const float* an = At + n * dim;
    const float* hn = states + (t * ns + n) * dim;
    const float* hp = t > 0 ? states + ((t - 1) * ns + n) * dim : nullptr;
    float* cn = carry + n * dim;
    float* gan = gAt + n * dim;
    vf gc = splat(0.0f), gb = splat(0.0f);
    over_channels(dim, [&](i64 d, auto m) __attribute__((always_inline)) {
      const vf prev = hp ? load(hp + d, m) : splat(0.0f);
      const vf dtv = load(dt + d, m), av = load(an + d, m), gv = load(g + d, m);
      const vf dxv = load(dx + d, m);
      const vf z = dtv * av;
      vf lam = gv * c + load(cn + d, m);
      gc += gv * load(hn + d, m);
      vf a, slope;
      if constexpr (AsCoded) {
        const vf e = exp_approx(clamp(z, kExponentMin, 0.0f));
        a = e > splat(kDecayMax) ? splat(kDecayMax) : e;
        // z > 0 needs no test: there e = exp(0) = 1 > 0.999
        slope = ((z >= splat(kExponentMin)) & (e <= splat(kDecayMax))) ? e : splat(0.0f);
        const vf xv = load(xt + d, m);
        const vf bp = dxv * b;
        const vf bc = clamp(bp, -kInputLimit, kInputLimit);
        lam = within(a * prev + bc * xv, -kStateLimit, kStateLimit) ? lam : splat(0.0f);
        const vf gbp = within(bp, -kInputLimit, kInputLimit) ? lam * xv : splat(0.0f);
        store(sums.u + d, load(sums.u + d, m) + lam * bc, m);
        store(sums.p + d, load(sums.p + d, m) + gbp * b, m);
        gb += gbp * dxv;
      } else {
        a = exp_approx(z);
        slope = a;
        store(sums.u + d, load(sums.u + d, m) + lam * b, m);
        gb += lam * dxv;
      }
      const vf w = lam * prev * slope;
      store(sums.decay + d, load(sums.decay + d, m) + w * av, m);
      store(gan + d, load(gan + d, m) + w * dtv, m);
      store(cn + d, a * lam, m);
    });
    gbt[n] = total(gb);
    gct[n] = total(gc);
  }
}

template <bool AsCoded>
void forward(const Dims& s, i64 count, const float* x, const float* delta, const float* At,
             const float* B, const float* C, float* y) {
  std::vector<float> h(s.nstate * s.dim), dx(s.dim);
  for (i64 i = 0; i < count; ++i) {
    const i64 xo = i * s.length * s.dim, bo = i * s.length * s.nstate;
    run_states<AsCoded>(s, x + xo, delta + xo, At, B + bo, C + bo, y + xo, s.dim, h.data(),
                        nullptr, dx.data());
  }
}

template <bool AsCoded>
void backward(const Dims& s, i64 count, const float* x, const float* delta, const float* At,
              const float* B, const float* C, const float* g, float* gx, float* gdelta,
              float* gAt, float* gB, float* gC) {
  const i64 dim = s.dim, ns = s.nstate;
  std::vector<float> states(s.length * ns * dim), carry(ns * dim), dx(dim), su(dim), sp(dim),
      sd(dim), gA_seq(ns * dim);
  const StepSums sums{su.data(), sp.data(), sd.data()};
  std::memset(gAt, 0, sizeof(float) * ns * dim);
  for (i64 i = 0; i < count; ++i) {
    const i64 xo = i * s.length * dim, bo = i * s.length * ns;
    run_states<AsCoded>(s, x + xo, delta + xo, At, B + bo, C + bo, su.data(), 0, carry.data(),
                        states.data(), dx.data());
    std::fill(carry.begin(), carry.end(), 0.0f);
    // A's gradient summed over this sequence's steps first, then over the sequences: two
    // short sums, so micro-batches and thread splits change it by little more than rounding
    std::fill(gA_seq.begin(), gA_seq.end(), 0.0f);
    for (i64 t = s.length - 1; t >= 0; --t) {
      const i64 to = xo + t * dim, tb = bo + t * ns;
      const float* xt = x + to;
      const float* dt = delta + to;
      prepare_step<AsCoded>(dt, xt, dx.data(), dim);
      backward_step<AsCoded>(s, t, xt, dt, At, B + tb, C + tb, g + to, states.data(), dx.data(),
                             carry.data(), gA_seq.data(), gB + tb, gC + tb, sums);
      float* gxt = gx + to;
      float* gdt = gdelta + to;
      over_channels(dim, [&](i64 d, auto m) __attribute__((always_inline)) {
        const vf dtv = load(dt + d, m), u = load(sums.u + d, m), gd = load(sums.decay + d, m);
        if constexpr (AsCoded) {
          // Δ's gradient through p = clamp(Δ, 0, 1), where that clamp lets it through
          const vf gp = within(dtv, 0.0f, 1.0f) ? load(sums.p + d, m) : splat(0.0f);
          store(gxt + d, u, m);
          store(gdt + d, gp + gd, m);
        } else {
          store(gxt + d, dtv * u, m);
          store(gdt + d, load(xt + d, m) * u + gd, m);
        }
      });
    }
    for (i64 k = 0; k < ns * dim; ++k) gAt[k] += gA_seq[k];
  }
}

}  // namespace

extern "C" {

// The vector width in floats: 8 with AVX (-march=native on a machine that has it), else 4.
int mbsnet_scan_width() { return static_cast<int>(W); }

// y = C·h (before the skip term) of ``count`` sequences.
void mbsnet_scan_forward(i64 count, i64 length, i64 dim, i64 nstate, int as_coded, const float* x,
                         const float* delta, const float* At, const float* B, const float* C,
                         float* y) {
  const Dims s{length, dim, nstate};
  (as_coded ? forward<true> : forward<false>)(s, count, x, delta, At, B, C, y);
}

// Gradients of x, Δ, B, C and A (transposed: these sequences' share) from g, the gradient
// reaching C·h (x's gradient leaves out the skip term's share).
void mbsnet_scan_backward(i64 count, i64 length, i64 dim, i64 nstate, int as_coded,
                          const float* x, const float* delta, const float* At, const float* B,
                          const float* C, const float* g, float* gx, float* gdelta, float* gAt,
                          float* gB, float* gC) {
  const Dims s{length, dim, nstate};
  (as_coded ? backward<true> : backward<false>)(s, count, x, delta, At, B, C, g, gx, gdelta, gAt,
                                               gB, gC);
}

}  // extern "C"
