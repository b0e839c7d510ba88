/*
 * Entry points of the judge-accept kernel: the CUDA launch (judgeAcceptKernel.cu) and the
 * same per-sequence rule compiled for the host (judgeAcceptHost.cpp), which the tests call
 * through ctypes and compare with the PyTorch oracle.
 */
#pragma once

#include "judgeAcceptRule.h"

#if defined(__CUDACC__) || defined(AUTOJUDGE_WITH_CUDA_RUNTIME)
#include <cuda_runtime_api.h>

namespace autojudge
{
//! Default threads per block (warps share out each round's positions).
#ifndef AUTOJUDGE_JUDGE_ACCEPT_THREADS
#define AUTOJUDGE_JUDGE_ACCEPT_THREADS 1024
#endif
constexpr int32_t kJudgeAcceptThreads = AUTOJUDGE_JUDGE_ACCEPT_THREADS;

//! Most blocks one sequence is split over (a portable cluster size).
constexpr int32_t kMaxClusterBlocks = 8;
static_assert(kMaxClusterBlocks * kJudgeAcceptThreads / 32 <= kMaxGroups, "a cluster's warps must fit ScanState");

//! Launch on `stream` with `threads` per block (a multiple of 32 up to kJudgeAcceptThreads; 0 = that)
//! and `blocks` per sequence: 1 = one block, 2..8 = a thread-block cluster (sm_90 and later),
//! 0 = chosen from the batch and the GPU (a cluster while the batch leaves SMs idle).
//! Returns cudaErrorInvalidValue for unusable arguments.
cudaError_t launchJudgeAccept(JudgeAcceptArgs const& args, cudaStream_t stream, int32_t threads = 0, int32_t blocks = 0);
} // namespace autojudge
#endif

extern "C"
{
    //! Host build of the rule: 0 on success, else a message for the invalid argument (static storage).
    char const* autojudgeJudgeAcceptHost(autojudge::JudgeAcceptArgs const* args);

    //! The same with a team of `groups` x `lanes` host threads per sequence (tests of the cooperative code).
    char const* autojudgeJudgeAcceptHostTeam(autojudge::JudgeAcceptArgs const* args, int32_t groups, int32_t lanes);

#if defined(__CUDACC__) || defined(AUTOJUDGE_WITH_CUDA_RUNTIME)
    //! C entry point for the CUDA launch (ctypes, benchmarks): returns the cudaError_t as int.
    int autojudgeJudgeAcceptLaunch(autojudge::JudgeAcceptArgs const* args, void* stream, int32_t threads, int32_t blocks);
#endif
}
