/*
 * The kernel's per-sequence rule built for the host (g++): the same acceptSequence as the
 * GPU runs, with a one-thread team. Tests call it through ctypes (autojudge/plugin_kernel.py).
 */
#include "judgeAcceptKernel.h"

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
