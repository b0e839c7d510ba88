/*
 * The AutoJudge acceptance rule for one sequence, written once for the host and the GPU.
 *
 * ALGORITHM.md section 4 (the oracle is autojudge/acceptance/rule.py):
 *   x_k  = [h_draft_k ; h_target_k ; s_k]   (s_k: the E scalar features, fp32; E may be 0)
 *   ok_k = (d_k == t_k) or (sigmoid(w . x_k + b) <= threshold)
 *   n    = length of the leading run of ok
 *   emit d_0 .. d_{n-1}, then t_n (correction when n < W, bonus when n == W)
 *
 * The scan is cooperative: a "team" (one CUDA block on the GPU, one thread on the host)
 * evaluates mismatched positions in rounds of team.groups() positions (one warp each on the
 * GPU), then the team's first thread walks the round in order and stops at the first
 * rejection. Judge dot products are computed only at mismatches, and never past the round
 * that holds the first rejection. The hidden states' part of w . x is shared out over the
 * team; the scalar part (E floats) is added by the first group, one lane per position, in
 * feature order, after the hidden part: the same sum in every team. Everything here is plain
 * C++ apart from the marked loads.
 */
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define AJ_HD __host__ __device__ __forceinline__
#define AJ_HD_TEMPLATE_CHECK _Pragma("nv_exec_check_disable")
#define AJ_UNROLL _Pragma("unroll")
#else
#define AJ_HD inline
#define AJ_HD_TEMPLATE_CHECK
#define AJ_UNROLL
#endif

namespace autojudge
{

//! Element type of the hidden-state inputs (draft and target share one).
enum class HiddenType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kBF16 = 2,
};

//! Probability written at positions the judge did not evaluate (matches, or past the rejection).
constexpr float kNotEvaluated = -1.0F;

//! Most positions one round evaluates at once (one per warp: 1024 threads / 32).
constexpr int32_t kMaxRoundSize = 32;

//! Everything one launch reads and writes. Pointers are device pointers on the GPU.
struct JudgeAcceptArgs
{
    // Inputs
    int32_t const* draftTokens;  //!< [B, W]
    int32_t const* targetTokens; //!< [B, W+1]
    void const* draftHidden;     //!< [B, W, Hd], hiddenType; unused when Hd == 0
    void const* targetHidden;    //!< [B, W, Ht], hiddenType
    float const* scalarFeatures; //!< [B, W, E] fp32; unused when E == 0
    float const* weight;         //!< [Hd + Ht + E], the scaler already folded in
    float const* bias;           //!< [1]
    float const* threshold;      //!< [B], one per sequence
    // Outputs
    int32_t* numAccepted;  //!< [B], n in 0..W
    int32_t* nextTokens;   //!< [B], t_n
    float* probabilities;  //!< [B, W], judge probability where evaluated, else kNotEvaluated
    // Shapes
    int32_t batch;
    int32_t window;
    int32_t draftHiddenSize;
    int32_t targetHiddenSize;
    int32_t scalarFeatureSize; //!< E, the scalar features after the hidden states (0: none)
    HiddenType hiddenType;
};

//! Raw storage of the 16-bit types, so that the host build needs no CUDA headers.
struct Half16
{
    uint16_t bits;
};
struct BFloat16
{
    uint16_t bits;
};

AJ_HD float toFloat(float x)
{
    return x;
}

AJ_HD float toFloat(BFloat16 x)
{
    uint32_t const u = static_cast<uint32_t>(x.bits) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

AJ_HD float toFloat(Half16 x)
{
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(x.bits));
#else
    uint32_t const sign = static_cast<uint32_t>(x.bits & 0x8000U) << 16;
    uint32_t const exponent = (x.bits >> 10) & 0x1FU;
    uint32_t const mantissa = x.bits & 0x3FFU;
    if (exponent == 0) // zero or subnormal: mantissa * 2^-24
    {
        float const magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    uint32_t const bits = exponent == 0x1FU ? (sign | 0x7F800000U | (mantissa << 13))  // inf, nan
                                            : (sign | ((exponent + 112U) << 23) | (mantissa << 13));
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

//! Copy 8 consecutive elements starting at `src` (16-byte aligned) as 16-byte vector loads.
template <typename T>
AJ_HD void load8(T const* src, T (&dst)[8])
{
    static_assert(sizeof(T) * 8 % 16 == 0, "8 elements must be whole 16-byte vectors");
#if defined(__CUDA_ARCH__)
    auto const* in = reinterpret_cast<uint4 const*>(src);
    auto* out = reinterpret_cast<uint4*>(dst);
AJ_UNROLL
    for (int j = 0; j < static_cast<int>(sizeof(T) * 8 / 16); ++j)
    {
        out[j] = __ldg(in + j);
    }
#else
    memcpy(dst, src, sizeof dst);
#endif
}

AJ_HD bool aligned16(void const* p)
{
    return (reinterpret_cast<uintptr_t>(p) & 15U) == 0;
}

//! This lane's share of w . x over one segment of the feature vector (x: [size], w: [size]).
template <typename T>
AJ_HD float partialDot(T const* x, float const* w, int32_t size, int32_t lane, int32_t lanes)
{
    float acc = 0.F;
    int32_t begin = 0;
    if (size % 8 == 0 && aligned16(x) && aligned16(w))
    {
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
        for (int32_t c = lane; c < size / 8; c += lanes) // 8 elements per 16-byte-vector chunk
        {
            alignas(16) T xv[8];
            alignas(16) float wv[8];
            load8(x + 8 * c, xv);
            load8(w + 8 * c, wv);
AJ_UNROLL
            for (int j = 0; j < 8; ++j)
            {
                acc += toFloat(xv[j]) * wv[j];
            }
        }
        begin = size; // all done in chunks
    }
    for (int32_t i = begin + lane; i < size; i += lanes) // unaligned or ragged sizes
    {
        acc += toFloat(x[i]) * w[i];
    }
    return acc;
}

//! w_s . s over the E scalar features of one position, serially in feature order (every team
//! computes it the same way: one lane, the same sequence of fp32 operations).
AJ_HD float scalarDot(float const* s, float const* w, int32_t size)
{
    float acc = 0.F;
    for (int32_t e = 0; e < size; ++e)
    {
        acc += s[e] * w[e];
    }
    return acc;
}

//! sigmoid(logit + bias) in fp32; exp overflow gives exactly 0, as torch.sigmoid does.
AJ_HD float judgeProbability(float logit, float bias)
{
    return 1.F / (1.F + expf(-(logit + bias)));
}

//! A mismatch is accepted iff p <= threshold (ties pass; NaN is rejected).
AJ_HD bool judgeAccepts(float probability, float threshold)
{
    return probability <= threshold;
}

//! Longest window a launch accepts (the mismatch bitmask lives in shared memory).
constexpr int32_t kMaxWindow = 1024;

//! Most groups one team uses (a cluster of 8 blocks of 1024 threads: 8 * 32 warps).
constexpr int32_t kMaxGroups = 256;

//! Shared state of one team while it scans one sequence (shared memory on the GPU; with a
//! cluster, the first block's, which the other blocks reach through distributed shared memory).
struct ScanState
{
    uint32_t mismatch[kMaxWindow / 32]; //!< bit k: d_k != t_k
    int32_t positions[kMaxRoundSize];   //!< mismatched positions of the current round
    float partials[kMaxGroups];         //!< one partial w . x per group (bias not added)
    int32_t count;                      //!< positions in this round
    int32_t scanEnd;                    //!< every position in [cursor, scanEnd) matches or is listed
    int32_t cursor;                     //!< positions < cursor are accepted
    int32_t done;                       //!< 1 once rejected or the window is exhausted
};

AJ_HD int32_t lowestSetBit(uint32_t word)
{
#if defined(__CUDA_ARCH__)
    return __ffs(static_cast<int>(word)) - 1;
#else
    return __builtin_ctz(word);
#endif
}

//! The first thread lists the next round: up to `roundSize` mismatches from the cursor on.
AJ_HD void listRound(ScanState& s, int32_t W, int32_t roundSize)
{
    int32_t count = 0;
    int32_t k = s.cursor;
    while (count < roundSize && k < W)
    {
        uint32_t const word = s.mismatch[k / 32] & (~0U << (k % 32));
        if (word == 0)
        {
            k = (k / 32 + 1) * 32;
            continue;
        }
        k = (k / 32) * 32 + lowestSetBit(word);
        s.positions[count++] = k++;
    }
    s.count = count;
    s.scanEnd = k < W ? k : W;
    if (count == 0) // nothing left to judge: the rest of the window matches
    {
        s.cursor = W;
        s.done = 1;
    }
}

/*
 * Team: rank() over all threads; group()/groups() over groups (warps on the GPU);
 * lane()/lanes() inside a group; groupSum(v), groupOr(bits), groupFirst(flag) (the lowest
 * lane whose flag is set, lanes() if none) and groupSync() inside a group; sync() over the team.
 *
 * The first group alone fills the mismatch bitmask and lists the first round: up to
 * min(groups, 32) mismatches from the cursor on. Per round, after one team sync, the groups
 * split evenly over the listed positions (`share` groups per position: several groups, even
 * several blocks of a cluster, share one position's dot product when the round is short) and
 * each writes its partial sum (hidden states only); after a second sync the first group adds
 * each position's partials in a fixed order, then its scalar features' w_s . s (lane i takes
 * position i: deterministic), walks them in order to the first rejection and lists the next round. Two team syncs per round, one before: an
 * all-match window costs one sync, a window whose first mismatch is rejected three.
 */
AJ_HD_TEMPLATE_CHECK
template <typename T, typename Team>
AJ_HD void acceptSequence(Team const& team, JudgeAcceptArgs const& a, int32_t b, ScanState& s)
{
    int32_t const W = a.window;
    int32_t const Hd = a.draftHiddenSize;
    int32_t const Ht = a.targetHiddenSize;
    int32_t const E = a.scalarFeatureSize;
    int32_t const* draft = a.draftTokens + static_cast<int64_t>(b) * W;       // [W]
    int32_t const* target = a.targetTokens + static_cast<int64_t>(b) * (W + 1); // [W+1]
    T const* draftHidden = static_cast<T const*>(a.draftHidden) + static_cast<int64_t>(b) * W * Hd;   // [W, Hd]
    T const* targetHidden = static_cast<T const*>(a.targetHidden) + static_cast<int64_t>(b) * W * Ht; // [W, Ht]
    float const* scalars = E > 0 ? a.scalarFeatures + static_cast<int64_t>(b) * W * E : nullptr; // [W, E]
    float* probabilities = a.probabilities + static_cast<int64_t>(b) * W; // [W]
    int32_t const groups = team.groups() < kMaxGroups ? team.groups() : kMaxGroups;
    int32_t const roundSize = groups < kMaxRoundSize ? groups : kMaxRoundSize;
    bool const first = team.group() == 0;

    if (first) // the bitmask, the probabilities' default and the first round: one group, no team sync
    {
        for (int32_t k = team.lane(); k < W; k += team.lanes())
        {
            probabilities[k] = kNotEvaluated;
        }
        for (int32_t word = 0; word < (W + 31) / 32; ++word)
        {
            uint32_t bits = 0;
            for (int32_t j = team.lane(); j < 32; j += team.lanes())
            {
                int32_t const k = 32 * word + j;
                if (k < W && draft[k] != target[k])
                {
                    bits |= 1U << j;
                }
            }
            bits = team.groupOr(bits);
            if (team.lane() == 0)
            {
                s.mismatch[word] = bits;
            }
        }
        if (team.lane() == 0)
        {
            s.cursor = 0;
            s.done = 0;
            listRound(s, W, roundSize);
        }
        team.groupSync();
    }
    team.sync();

    while (!s.done)
    {
        int32_t const count = s.count;
        int32_t const share = groups / count;
        { // groups split over positions: `share` groups per position
            int32_t const slot = team.group() / share;
            if (slot < count && team.group() < groups)
            {
                int32_t const k = s.positions[slot];
                int32_t const lane = (team.group() % share) * team.lanes() + team.lane();
                int32_t const lanes = share * team.lanes();
                float partial
                    = partialDot(targetHidden + static_cast<int64_t>(k) * Ht, a.weight + Hd, Ht, lane, lanes);
                if (Hd > 0)
                {
                    partial += partialDot(draftHidden + static_cast<int64_t>(k) * Hd, a.weight, Hd, lane, lanes);
                }
                partial = team.groupSum(partial);
                if (team.lane() == 0)
                {
                    s.partials[team.group()] = partial;
                }
            }
        }
        team.sync();

        if (first) // lane i adds position i's partials, then its scalar part; walk the round in order; stop at
                   // the first rejection
        {
            float const bias = a.bias[0];
            float const threshold = a.threshold[b];
            int32_t rejected = count; // index in the round of the first rejection
            for (int32_t base = 0; base < count && rejected == count; base += team.lanes())
            {
                int32_t const i = base + team.lane();
                float p = 0.F;
                bool reject = false;
                if (i < count)
                {
                    float logit = 0.F;
                    for (int32_t j = 0; j < share; ++j)
                    {
                        logit += s.partials[i * share + j];
                    }
                    if (E > 0)
                    {
                        logit += scalarDot(scalars + static_cast<int64_t>(s.positions[i]) * E, a.weight + Hd + Ht, E);
                    }
                    p = judgeProbability(logit, bias);
                    reject = !judgeAccepts(p, threshold);
                }
                int32_t const firstReject = team.groupFirst(reject);
                if (i < count && team.lane() <= firstReject) // nothing past the rejection is written
                {
                    probabilities[s.positions[i]] = p;
                }
                if (firstReject < team.lanes())
                {
                    rejected = base + firstReject;
                }
            }
            team.groupSync();
            if (team.lane() == 0)
            {
                if (rejected < count)
                {
                    s.cursor = s.positions[rejected];
                    s.done = 1;
                }
                else
                {
                    s.cursor = s.scanEnd;
                    if (s.cursor == W)
                    {
                        s.done = 1;
                    }
                    else
                    {
                        listRound(s, W, roundSize);
                    }
                }
            }
            team.groupSync();
        }
        team.sync();
    }

    if (team.rank() == 0)
    {
        a.numAccepted[b] = s.cursor;
        a.nextTokens[b] = target[s.cursor];
    }
}

//! The host team: one thread, one group, one lane.
struct SerialTeam
{
    int32_t rank() const { return 0; }
    int32_t group() const { return 0; }
    int32_t groups() const { return 1; }
    int32_t lane() const { return 0; }
    int32_t lanes() const { return 1; }
    float groupSum(float v) const { return v; }
    uint32_t groupOr(uint32_t bits) const { return bits; }
    int32_t groupFirst(bool flag) const { return flag ? 0 : 1; }
    void groupSync() const {}
    void sync() const {}
};

//! Checks shared by every entry point; returns nullptr when the arguments are usable.
inline char const* validateArgs(JudgeAcceptArgs const& a)
{
    if (a.batch < 0)
        return "batch must be >= 0";
    if (a.window < 1 || a.window > kMaxWindow)
        return "window must be in 1..1024";
    if (a.draftHiddenSize < 0 || a.targetHiddenSize < 1)
        return "hidden sizes must be draft >= 0 and target >= 1";
    if (a.scalarFeatureSize < 0)
        return "scalarFeatureSize must be >= 0";
    if (a.scalarFeatureSize > 0 && a.scalarFeatures == nullptr)
        return "scalarFeatures is null but scalarFeatureSize > 0";
    if (a.hiddenType != HiddenType::kFLOAT && a.hiddenType != HiddenType::kHALF && a.hiddenType != HiddenType::kBF16)
        return "hiddenType must be 0 (float32), 1 (float16) or 2 (bfloat16)";
    return nullptr;
}

} // namespace autojudge
