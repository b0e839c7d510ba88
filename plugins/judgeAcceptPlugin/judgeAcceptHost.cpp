/*
 * The kernel's per-sequence rule built for the host (g++): the same acceptSequence as the
 * GPU runs, with a one-thread team, and (for tests of the cooperative code: round sharing,
 * the partial sums' reduction, the walk) with a team of groups x lanes host threads.
 * Tests call both through ctypes (autojudge/acceptance/plugin.py).
 */
#include "judgeAcceptKernel.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace autojudge
{
namespace
{

//! A reusable barrier for `count` threads (C++17 has no std::barrier); a mutex orders memory.
class HostBarrier
{
public:
    explicit HostBarrier(int32_t count)
        : mCount(count)
    {
    }

    void wait()
    {
        std::unique_lock<std::mutex> lock(mMutex);
        int64_t const generation = mGeneration;
        if (++mWaiting == mCount)
        {
            mWaiting = 0;
            ++mGeneration;
            mChanged.notify_all();
            return;
        }
        mChanged.wait(lock, [&] { return generation != mGeneration; });
    }

private:
    std::mutex mMutex;
    std::condition_variable mChanged;
    int32_t const mCount;
    int32_t mWaiting = 0;
    int64_t mGeneration = 0;
};

//! What the threads of one ThreadTeam share: barriers and one exchange slot per thread.
struct ThreadTeamState
{
    ThreadTeamState(int32_t groups, int32_t lanes)
        : team(groups * lanes)
        , values(static_cast<size_t>(groups * lanes))
        , bits(static_cast<size_t>(groups * lanes))
    {
        for (int32_t g = 0; g < groups; ++g)
        {
            groupBarriers.push_back(std::make_unique<HostBarrier>(lanes));
        }
    }

    HostBarrier team;
    std::vector<std::unique_ptr<HostBarrier>> groupBarriers;
    std::vector<float> values;
    std::vector<uint32_t> bits;
};

//! A team of groups x lanes host threads: the GPU's warps and lanes, with reductions in lane order.
struct ThreadTeam
{
    ThreadTeamState* state;
    int32_t mRank;
    int32_t mGroups;
    int32_t mLanes;

    int32_t rank() const { return mRank; }
    int32_t group() const { return mRank / mLanes; }
    int32_t groups() const { return mGroups; }
    int32_t lane() const { return mRank % mLanes; }
    int32_t lanes() const { return mLanes; }
    void groupSync() const { state->groupBarriers[static_cast<size_t>(group())]->wait(); }
    void sync() const { state->team.wait(); }

    float groupSum(float v) const
    {
        state->values[static_cast<size_t>(mRank)] = v;
        groupSync();
        float sum = 0.F;
        for (int32_t j = 0; j < mLanes; ++j)
        {
            sum += state->values[static_cast<size_t>(group() * mLanes + j)];
        }
        groupSync(); // nobody overwrites a slot before every lane has read it
        return sum;
    }

    uint32_t groupOr(uint32_t bits) const
    {
        state->bits[static_cast<size_t>(mRank)] = bits;
        groupSync();
        uint32_t all = 0;
        for (int32_t j = 0; j < mLanes; ++j)
        {
            all |= state->bits[static_cast<size_t>(group() * mLanes + j)];
        }
        groupSync();
        return all;
    }

    int32_t groupFirst(bool flag) const
    {
        state->bits[static_cast<size_t>(mRank)] = flag ? 1U : 0U;
        groupSync();
        int32_t first = mLanes;
        for (int32_t j = mLanes - 1; j >= 0; --j)
        {
            if (state->bits[static_cast<size_t>(group() * mLanes + j)] != 0)
            {
                first = j;
            }
        }
        groupSync();
        return first;
    }
};

template <typename T>
void acceptWithThreads(JudgeAcceptArgs const& args, int32_t groups, int32_t lanes)
{
    for (int32_t b = 0; b < args.batch; ++b)
    {
        ThreadTeamState shared(groups, lanes);
        ScanState scan{};
        std::vector<std::thread> threads;
        for (int32_t r = 0; r < groups * lanes; ++r)
        {
            threads.emplace_back([&, r] { acceptSequence<T>(ThreadTeam{&shared, r, groups, lanes}, args, b, scan); });
        }
        for (auto& thread : threads)
        {
            thread.join();
        }
    }
}

} // namespace
} // namespace autojudge

extern "C" char const* autojudgeJudgeAcceptHost(autojudge::JudgeAcceptArgs const* args)
{
    using namespace autojudge;
    if (char const* error = validateArgs(*args))
    {
        return error;
    }
    ScanState state{};
    for (int32_t b = 0; b < args->batch; ++b)
    {
        switch (args->hiddenType)
        {
        case HiddenType::kFLOAT: acceptSequence<float>(SerialTeam{}, *args, b, state); break;
        case HiddenType::kHALF: acceptSequence<Half16>(SerialTeam{}, *args, b, state); break;
        case HiddenType::kBF16: acceptSequence<BFloat16>(SerialTeam{}, *args, b, state); break;
        }
    }
    return nullptr;
}

extern "C" char const* autojudgeJudgeAcceptHostTeam(autojudge::JudgeAcceptArgs const* args, int32_t groups, int32_t lanes)
{
    using namespace autojudge;
    if (char const* error = validateArgs(*args))
    {
        return error;
    }
    if (groups < 1 || groups > kMaxGroups || lanes < 1 || lanes > 32)
    {
        return "a host team needs 1..256 groups of 1..32 lanes";
    }
    switch (args->hiddenType)
    {
    case HiddenType::kFLOAT: acceptWithThreads<float>(*args, groups, lanes); break;
    case HiddenType::kHALF: acceptWithThreads<Half16>(*args, groups, lanes); break;
    case HiddenType::kBF16: acceptWithThreads<BFloat16>(*args, groups, lanes); break;
    }
    return nullptr;
}
