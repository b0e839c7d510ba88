/*
 * The judge-accept CUDA kernel: one block per sequence, one warp per mismatched position
 * in each round, warp-shuffle reductions, early exit at the first rejection
 * (judgeAcceptRule.h holds the rule itself).
 */
#include "judgeAcceptKernel.h"

namespace autojudge
{
namespace
{

//! The GPU team: the whole block; groups are warps.
struct BlockTeam
{
    __device__ int32_t rank() const { return static_cast<int32_t>(threadIdx.x); }
    __device__ int32_t size() const { return static_cast<int32_t>(blockDim.x); }
    __device__ int32_t group() const { return static_cast<int32_t>(threadIdx.x) / 32; }
    __device__ int32_t groups() const { return static_cast<int32_t>(blockDim.x) / 32; }
    __device__ int32_t lane() const { return static_cast<int32_t>(threadIdx.x) % 32; }
    __device__ int32_t lanes() const { return 32; }
    __device__ float groupSum(float v) const
    {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
        {
            v += __shfl_xor_sync(0xFFFFFFFFU, v, offset);
        }
        return v;
    }
    __device__ uint32_t groupOr(uint32_t bits) const
    {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
        {
            bits |= __shfl_xor_sync(0xFFFFFFFFU, bits, offset);
        }
        return bits;
    }
    __device__ void sync() const { __syncthreads(); }
};

template <typename T>
__global__ void __launch_bounds__(kJudgeAcceptThreads) judgeAcceptKernel(JudgeAcceptArgs args)
{
    __shared__ ScanState state;
    acceptSequence<T>(BlockTeam{}, args, static_cast<int32_t>(blockIdx.x), state);
}

} // namespace

cudaError_t launchJudgeAccept(JudgeAcceptArgs const& args, cudaStream_t stream, int32_t threads)
{
    threads = threads == 0 ? kJudgeAcceptThreads : threads;
    if (validateArgs(args) != nullptr || threads % 32 != 0 || threads < 32 || threads > kJudgeAcceptThreads)
    {
        return cudaErrorInvalidValue;
    }
    if (args.batch == 0)
    {
        return cudaSuccess;
    }
    dim3 const grid(static_cast<unsigned>(args.batch));
    dim3 const block(static_cast<unsigned>(threads));
    switch (args.hiddenType)
    {
    case HiddenType::kFLOAT: judgeAcceptKernel<float><<<grid, block, 0, stream>>>(args); break;
    case HiddenType::kHALF: judgeAcceptKernel<Half16><<<grid, block, 0, stream>>>(args); break;
    case HiddenType::kBF16: judgeAcceptKernel<BFloat16><<<grid, block, 0, stream>>>(args); break;
    }
    return cudaGetLastError();
}

} // namespace autojudge

extern "C" int autojudgeJudgeAcceptLaunch(autojudge::JudgeAcceptArgs const* args, void* stream, int32_t threads)
{
    return static_cast<int>(autojudge::launchJudgeAccept(*args, static_cast<cudaStream_t>(stream), threads));
}
