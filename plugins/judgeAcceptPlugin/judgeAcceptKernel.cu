/*
 * The judge-accept CUDA kernel. One team per sequence scans its window (judgeAcceptRule.h
 * holds the rule): either one block (warps share out each round's positions; any GPU), or
 * a thread-block cluster of up to 8 blocks on Hopper and later, whose warps all share the
 * round through the first block's shared memory (distributed shared memory), so that a
 * window full of mismatches reads its hidden states with 8 SMs instead of one. The round
 * structure, the order of every sum and so every decision are the same in both.
 */
#include "judgeAcceptKernel.h"

#include <cooperative_groups.h>

namespace autojudge
{
namespace
{

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2)
    {
        v += __shfl_xor_sync(0xFFFFFFFFU, v, offset);
    }
    return v;
}

__device__ __forceinline__ uint32_t warpOr(uint32_t bits)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2)
    {
        bits |= __shfl_xor_sync(0xFFFFFFFFU, bits, offset);
    }
    return bits;
}

//! The lowest lane whose flag is set, 32 if none.
__device__ __forceinline__ int32_t warpFirst(bool flag)
{
    uint32_t const votes = __ballot_sync(0xFFFFFFFFU, flag);
    return votes == 0 ? 32 : __ffs(static_cast<int>(votes)) - 1;
}

//! What every GPU team shares: its groups are warps.
struct WarpGroups
{
    __device__ int32_t lane() const { return static_cast<int32_t>(threadIdx.x) % 32; }
    __device__ int32_t lanes() const { return 32; }
    __device__ float groupSum(float v) const { return warpSum(v); }
    __device__ uint32_t groupOr(uint32_t bits) const { return warpOr(bits); }
    __device__ int32_t groupFirst(bool flag) const { return warpFirst(flag); }
    __device__ void groupSync() const { __syncwarp(); }
};

//! One block: groups are its warps.
struct BlockTeam : WarpGroups
{
    __device__ int32_t rank() const { return static_cast<int32_t>(threadIdx.x); }
    __device__ int32_t group() const { return static_cast<int32_t>(threadIdx.x) / 32; }
    __device__ int32_t groups() const { return static_cast<int32_t>(blockDim.x) / 32; }
    __device__ void sync() const { __syncthreads(); }
};

template <typename T>
__global__ void __launch_bounds__(kJudgeAcceptThreads) judgeAcceptKernel(JudgeAcceptArgs args)
{
    __shared__ ScanState state;
    acceptSequence<T>(BlockTeam{}, args, static_cast<int32_t>(blockIdx.x), state);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
//! A cluster of blocks: groups are the warps of every block, numbered block by block.
struct ClusterTeam : WarpGroups
{
    int32_t blockRank;
    int32_t blocks;
    __device__ int32_t rank() const
    {
        return blockRank * static_cast<int32_t>(blockDim.x) + static_cast<int32_t>(threadIdx.x);
    }
    __device__ int32_t group() const { return rank() / 32; }
    __device__ int32_t groups() const { return blocks * static_cast<int32_t>(blockDim.x) / 32; }
    // barrier.cluster.arrive/wait (cooperative_groups/details/helpers.h cluster::sync; crt/sm_90_rt.hpp
    // has a separate _relaxed arrive): release/acquire at cluster scope, so the shared state
    // written by one block before the barrier is seen by every block after it.
    __device__ void sync() const { cooperative_groups::this_cluster().sync(); }
};
#endif

//! One cluster per sequence; the scan state lives in the cluster's first block.
template <typename T>
__global__ void __launch_bounds__(kJudgeAcceptThreads) judgeAcceptClusterKernel(JudgeAcceptArgs args)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    __shared__ ScanState state;
    auto cluster = cooperative_groups::this_cluster();
    int32_t const blockRank = static_cast<int32_t>(cluster.block_rank());
    int32_t const blocks = static_cast<int32_t>(cluster.num_blocks());
    ScanState& shared = blockRank == 0 ? state : *cluster.map_shared_rank(&state, 0);
    ClusterTeam const team{{}, blockRank, blocks};
    acceptSequence<T>(team, args, static_cast<int32_t>(blockIdx.x) / blocks, shared);
    cluster.sync(); // the first block's shared memory must outlive every remote read of it
#else
    __trap(); // never launched below sm_90 (launchJudgeAccept checks the device)
#endif
}

//! Blocks per sequence for `blocks` == 0: a cluster of up to 8 blocks (a power of two) while
//! batch * cluster fits the SMs, one block on GPUs without clusters or when the batch fills them.
int32_t autoBlocks(int32_t batch, int32_t major, int32_t sms)
{
    if (major < 9)
    {
        return 1;
    }
    int32_t blocks = kMaxClusterBlocks;
    while (blocks > 1 && static_cast<int64_t>(batch) * blocks > sms)
    {
        blocks /= 2;
    }
    return blocks;
}

template <typename T>
cudaError_t launchTyped(JudgeAcceptArgs const& args, cudaStream_t stream, int32_t threads, int32_t blocks)
{
    if (blocks == 1)
    {
        judgeAcceptKernel<T><<<dim3(static_cast<unsigned>(args.batch)), dim3(static_cast<unsigned>(threads)), 0,
            stream>>>(args);
        return cudaGetLastError();
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(args.batch * blocks));
    config.blockDim = dim3(static_cast<unsigned>(threads));
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(blocks);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, judgeAcceptClusterKernel<T>, args);
}

} // namespace

cudaError_t launchJudgeAccept(JudgeAcceptArgs const& args, cudaStream_t stream, int32_t threads, int32_t blocks)
{
    threads = threads == 0 ? kJudgeAcceptThreads : threads;
    if (validateArgs(args) != nullptr || threads % 32 != 0 || threads < 32 || threads > kJudgeAcceptThreads
        || blocks < 0 || blocks > kMaxClusterBlocks)
    {
        return cudaErrorInvalidValue;
    }
    if (args.batch == 0)
    {
        return cudaSuccess;
    }
    int device = 0;
    int major = 0;
    int sms = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    }
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (status != cudaSuccess)
    {
        return status;
    }
    if (blocks == 0)
    {
        blocks = autoBlocks(args.batch, major, sms);
    }
    else if (blocks > 1 && major < 9)
    {
        return cudaErrorInvalidValue; // clusters need sm_90 or later
    }
    switch (args.hiddenType)
    {
    case HiddenType::kFLOAT: return launchTyped<float>(args, stream, threads, blocks);
    case HiddenType::kHALF: return launchTyped<Half16>(args, stream, threads, blocks);
    case HiddenType::kBF16: return launchTyped<BFloat16>(args, stream, threads, blocks);
    }
    return cudaErrorInvalidValue;
}

} // namespace autojudge

extern "C" int autojudgeJudgeAcceptLaunch(
    autojudge::JudgeAcceptArgs const* args, void* stream, int32_t threads, int32_t blocks)
{
    return static_cast<int>(autojudge::launchJudgeAccept(*args, static_cast<cudaStream_t>(stream), threads, blocks));
}
