/*
 * The IPluginV3 wrapper driven on the CPU, without TensorRT's library or a GPU: the creator makes
 * the plugin from its fields, then configurePlugin, supportsFormatCombination, onShapeChange and
 * enqueue are called as TensorRT calls them, for every input form (with or without draft_hidden,
 * with or without scalar_features). enqueue's CUDA launch is replaced by the host build of the same
 * rule, so the arguments the wrapper passes the kernel are checked end to end. Needs only the
 * TensorRT headers (not in CI):
 *
 *   g++ -std=c++17 -Wall -Wextra -Werror -DAUTOJUDGE_WITH_CUDA_RUNTIME -isystem $TENSORRT_ROOT/include \
 *       -isystem /usr/local/cuda/include checkWrapper.cpp judgeAcceptPlugin.cpp judgeAcceptHost.cpp \
 *       -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -pthread -o /tmp/checkWrapper && /tmp/checkWrapper
 */
#include "judgeAcceptPlugin.h"

#include <cstdio>
#include <string>
#include <vector>

using namespace nvinfer1;
using namespace autojudge;

//! The launch replaced by the host build of the rule (the plugin's enqueue calls this).
cudaError_t autojudge::launchJudgeAccept(JudgeAcceptArgs const& args, cudaStream_t, int32_t, int32_t)
{
    return autojudgeJudgeAcceptHost(&args) == nullptr ? cudaSuccess : cudaErrorInvalidValue;
}

namespace
{

int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    gFailures += ok ? 0 : 1;
}

Dims dims(std::vector<int64_t> const& d)
{
    Dims out{};
    out.nbDims = static_cast<int32_t>(d.size());
    for (size_t i = 0; i < d.size(); ++i)
    {
        out.d[i] = d[i];
    }
    return out;
}

IPluginV3* makePlugin(int32_t scalarFeatureSize)
{
    int32_t threads = 0;
    std::vector<PluginField> fields{PluginField("threads", &threads, PluginFieldType::kINT32, 1),
        PluginField("scalar_feature_size", &scalarFeatureSize, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    int32_t nbCreators = 0;
    auto* creator = static_cast<IPluginCreatorV3One*>(getCreators(nbCreators)[0]);
    return creator->createPlugin("judge_accept", &fc, TensorRTPhase::kBUILD);
}

/*
 * B = 2 sequences, W = 6 positions, every one a mismatch; hidden weights 0, so p = sigmoid(w_s . s + b).
 * With E = 5: sequence 0 has s_0 = -12 (logit 6 - 2 > 0: rejected at 0), sequence 1 s_0 = -0.5 (all
 * accepted). With E = 0: p = sigmoid(-2) everywhere: all accepted in both.
 */
void runForm(bool draft, int32_t E)
{
    std::string const form = std::string(draft ? "draft+target" : "target") + ", E = " + std::to_string(E);
    int32_t const B = 2, W = 6, Hd = draft ? 8 : 0, Ht = 16;
    std::vector<int32_t> draftTokens(B * W, 1), targetTokens(B * (W + 1), 0);
    std::vector<float> draftHidden(B * W * 8, 0.5F), targetHidden(B * W * Ht, 0.25F), scalars(B * W * 5, 0.F);
    for (int32_t k = 0; k < W; ++k)
    {
        scalars[(0 * W + k) * 5] = -12.F;
        scalars[(1 * W + k) * 5] = -0.5F;
    }
    std::vector<float> weight(Hd + Ht + E, 0.F), bias{-2.F}, threshold{0.5F, 0.5F};
    if (E > 0)
    {
        weight[Hd + Ht] = -0.5F;
    }
    std::vector<int32_t> numAccepted(B, -7), nextTokens(B, -7);
    std::vector<float> probabilities(B * W, 0.F);

    IPluginV3* plugin = makePlugin(E);
    check(plugin != nullptr, form + ": the creator makes the plugin");
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

    std::vector<PluginTensorDesc> in;
    std::vector<void const*> pointers;
    auto add = [&](std::vector<int64_t> const& d, DataType t, void const* p) {
        PluginTensorDesc desc{};
        desc.dims = dims(d);
        desc.type = t;
        desc.format = TensorFormat::kLINEAR;
        in.push_back(desc);
        pointers.push_back(p);
    };
    add({B, W}, DataType::kINT32, draftTokens.data());
    add({B, W + 1}, DataType::kINT32, targetTokens.data());
    if (draft)
    {
        add({B, W, Hd}, DataType::kFLOAT, draftHidden.data());
    }
    add({B, W, Ht}, DataType::kFLOAT, targetHidden.data());
    int32_t const scalarIndex = static_cast<int32_t>(in.size());
    if (E > 0)
    {
        add({B, W, E}, DataType::kFLOAT, scalars.data());
    }
    add({Hd + Ht + E}, DataType::kFLOAT, weight.data());
    add({1}, DataType::kFLOAT, bias.data());
    add({B}, DataType::kFLOAT, threshold.data());
    int32_t const nbInputs = static_cast<int32_t>(in.size());
    std::vector<PluginTensorDesc> out(3);
    out[0].dims = dims({B});
    out[0].type = DataType::kINT32;
    out[1] = out[0];
    out[2].dims = dims({B, W});
    out[2].type = DataType::kFLOAT;

    std::vector<DynamicPluginTensorDesc> dynIn(in.size()), dynOut(out.size());
    std::vector<DynamicPluginTensorDesc> inOut;
    for (size_t i = 0; i < in.size(); ++i)
    {
        dynIn[i].desc = in[i];
        dynIn[i].min = dynIn[i].opt = dynIn[i].max = in[i].dims;
    }
    for (size_t i = 0; i < out.size(); ++i)
    {
        dynOut[i].desc = out[i];
        dynOut[i].desc.format = TensorFormat::kLINEAR;
    }
    inOut.insert(inOut.end(), dynIn.begin(), dynIn.end());
    inOut.insert(inOut.end(), dynOut.begin(), dynOut.end());
    check(build->configurePlugin(dynIn.data(), nbInputs, dynOut.data(), 3) == 0,
        form + ": configurePlugin takes " + std::to_string(nbInputs) + " inputs");
    bool formats = true;
    for (int32_t pos = 0; pos < nbInputs + 3; ++pos)
    {
        formats = formats && build->supportsFormatCombination(pos, inOut.data(), nbInputs, 3);
    }
    check(formats, form + ": supportsFormatCombination takes every tensor as given");
    if (E > 0)
    {
        inOut[scalarIndex].desc.type = DataType::kHALF;
        check(!build->supportsFormatCombination(scalarIndex, inOut.data(), nbInputs, 3),
            form + ": scalar_features must be fp32");
        inOut[scalarIndex].desc.type = DataType::kFLOAT;
    }
    check(runtime->onShapeChange(in.data(), nbInputs, out.data(), 3) == 0, form + ": onShapeChange accepts the shapes");
    std::vector<void*> outputs{numAccepted.data(), nextTokens.data(), probabilities.data()};
    check(runtime->enqueue(in.data(), out.data(), pointers.data(), outputs.data(), nullptr, nullptr) == 0,
        form + ": enqueue");
    std::vector<int32_t> const want = E > 0 ? std::vector<int32_t>{0, W} : std::vector<int32_t>{W, W};
    check(numAccepted == want,
        form + ": num_accepted " + std::to_string(numAccepted[0]) + ", " + std::to_string(numAccepted[1]));
    check(nextTokens[0] == 0 && nextTokens[1] == 0, form + ": next_tokens");

    if (E > 0) // a scalar_features shape other than [B, W, E], a weight without the scalar part
    {
        in[scalarIndex].dims = dims({B, W, E - 1});
        check(runtime->onShapeChange(in.data(), nbInputs, out.data(), 3) != 0, form + ": refuses scalar_features [B, W, E-1]");
        in[scalarIndex].dims = dims({B, W, E});
        in[nbInputs - 3].dims = dims({Hd + Ht});
        check(runtime->onShapeChange(in.data(), nbInputs, out.data(), 3) != 0, form + ": refuses weight [Hd + Ht]");
    }
    // The serialized fields: what the runtime phase's createPlugin gets back.
    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    bool found = false;
    for (int32_t i = 0; i < serialized->nbFields; ++i)
    {
        if (std::string(serialized->fields[i].name) == "scalar_feature_size")
        {
            found = *static_cast<int32_t const*>(serialized->fields[i].data) == E;
        }
    }
    check(found, form + ": scalar_feature_size serialized");
    IPluginV3* copy = runtime->attachToContext(nullptr);
    check(copy != nullptr, form + ": attachToContext clones");
    delete copy;
    delete plugin;
}

} // namespace

int main()
{
    for (bool draft : {true, false})
    {
        for (int32_t E : {0, 5})
        {
            runForm(draft, E);
        }
    }
    check(makePlugin(-1) == nullptr, "the creator refuses scalar_feature_size = -1");
    std::printf("%d failure(s)\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
