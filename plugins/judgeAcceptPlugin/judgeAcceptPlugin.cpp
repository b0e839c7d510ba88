/*
 * The IPluginV3 wrapper of the judge-accept kernel (see judgeAcceptPlugin.h, README.md).
 *
 * Tensor positions: inputs 0 draft_tokens [B, W] int32, 1 target_tokens [B, W+1] int32,
 * then draft_hidden [B, W, Hd] (layout draft+target only), target_hidden [B, W, Ht] (fp32, fp16
 * or bf16, one type), scalar_features [B, W, E] fp32 (only when the field scalar_feature_size
 * E > 0), weight [Hd+Ht+E] fp32, bias [1] fp32, threshold [B] fp32; outputs num_accepted [B]
 * int32, next_tokens [B] int32, probabilities [B, W] fp32. 6 inputs, + 1 with draft_hidden,
 * + 1 with scalar_features: 7 inputs are either, so the field E says which.
 */
#include "judgeAcceptPlugin.h"

#include <atomic>
#include <cstring>
#include <exception>

using namespace nvinfer1;

namespace autojudge
{
namespace
{

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

void logError(char const* message) noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, message);
    }
}

constexpr int32_t kNB_OUTPUTS = 3;

//! Inputs without draft hidden states (layout target) and without scalar features.
constexpr int32_t kMIN_NB_INPUTS = 6;

//! 1 more input with scalar features (E > 0).
int32_t scalarInputs(int32_t scalarFeatureSize)
{
    return scalarFeatureSize > 0 ? 1 : 0;
}

//! Whether `nbInputs` is a valid count for E scalar features: 6 or 7, plus 1 when E > 0.
bool validNbInputs(int32_t nbInputs, int32_t scalarFeatureSize)
{
    int32_t const rest = nbInputs - scalarInputs(scalarFeatureSize);
    return rest == kMIN_NB_INPUTS || rest == kMIN_NB_INPUTS + 1;
}

//! Index of each input for every form (-1: absent).
struct InputIndex
{
    int32_t draftTokens = 0, targetTokens = 1, draftHidden, targetHidden, scalarFeatures, weight, bias, threshold;
    InputIndex(int32_t nbInputs, int32_t scalarFeatureSize)
    {
        int32_t const scalars = scalarInputs(scalarFeatureSize);
        int32_t const shift = nbInputs - scalars == kMIN_NB_INPUTS + 1 ? 1 : 0; // draft hidden states
        draftHidden = shift ? 2 : -1;
        targetHidden = 2 + shift;
        scalarFeatures = scalars ? 3 + shift : -1;
        weight = 3 + shift + scalars;
        bias = 4 + shift + scalars;
        threshold = 5 + shift + scalars;
    }
};

bool isHiddenType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

HiddenType toHiddenType(DataType t)
{
    return t == DataType::kHALF ? HiddenType::kHALF : t == DataType::kBF16 ? HiddenType::kBF16 : HiddenType::kFLOAT;
}

} // namespace

JudgeAcceptPlugin::JudgeAcceptPlugin(int32_t threads, int32_t scalarFeatureSize)
    : mThreads(threads)
    , mScalarFeatureSize(scalarFeatureSize)
{
}

IPluginCapability* JudgeAcceptPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* JudgeAcceptPlugin::clone() noexcept
{
    try
    {
        auto* copy = new JudgeAcceptPlugin(mThreads, mScalarFeatureSize);
        copy->mNbInputs = mNbInputs;
        return copy;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
        return nullptr;
    }
}

char const* JudgeAcceptPlugin::getPluginName() const noexcept
{
    return kJUDGE_ACCEPT_PLUGIN_NAME;
}

char const* JudgeAcceptPlugin::getPluginVersion() const noexcept
{
    return kJUDGE_ACCEPT_PLUGIN_VERSION;
}

char const* JudgeAcceptPlugin::getPluginNamespace() const noexcept
{
    return kJUDGE_ACCEPT_PLUGIN_NAMESPACE;
}

int32_t JudgeAcceptPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t JudgeAcceptPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!validNbInputs(nbInputs, mScalarFeatureSize) || nbOutputs != kNB_OUTPUTS)
    {
        logError(mScalarFeatureSize > 0
                ? "AutoJudgeJudgeAccept: expected 7 or 8 inputs (scalar_feature_size > 0) and 3 outputs"
                : "AutoJudgeJudgeAccept: expected 6 or 7 inputs and 3 outputs");
        return -1;
    }
    InputIndex const idx(nbInputs, mScalarFeatureSize);
    if (in[idx.draftTokens].desc.dims.nbDims != 2 || in[idx.targetTokens].desc.dims.nbDims != 2
        || in[idx.targetHidden].desc.dims.nbDims != 3 || in[idx.weight].desc.dims.nbDims != 1
        || (idx.scalarFeatures >= 0 && in[idx.scalarFeatures].desc.dims.nbDims != 3))
    {
        logError("AutoJudgeJudgeAccept: tokens must be 2-D, hidden states and scalar features 3-D and the weight 1-D");
        return -1;
    }
    mNbInputs = nbInputs;
    return 0;
}

bool JudgeAcceptPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    InputIndex const idx(nbInputs, mScalarFeatureSize);
    if (pos == idx.draftTokens || pos == idx.targetTokens || pos == nbInputs || pos == nbInputs + 1)
    {
        return desc.type == DataType::kINT32; // tokens in, num_accepted and next_tokens out
    }
    if (pos == idx.draftHidden)
    {
        return isHiddenType(desc.type);
    }
    if (pos == idx.targetHidden)
    {
        return isHiddenType(desc.type) && (idx.draftHidden < 0 || desc.type == inOut[idx.draftHidden].desc.type);
    }
    return desc.type == DataType::kFLOAT; // scalar_features, weight, bias, threshold, probabilities
}

int32_t JudgeAcceptPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept
{
    if (nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kINT32;
    outputTypes[2] = DataType::kFLOAT;
    return 0;
}

int32_t JudgeAcceptPlugin::getOutputShapes(DimsExprs const* inputs, int32_t /*nbInputs*/, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbOutputs != kNB_OUTPUTS || inputs[0].nbDims != 2)
    {
        return -1;
    }
    outputs[0].nbDims = 1; // num_accepted [B]
    outputs[0].d[0] = inputs[0].d[0];
    outputs[1].nbDims = 1; // next_tokens [B]
    outputs[1].d[0] = inputs[0].d[0];
    outputs[2].nbDims = 2; // probabilities [B, W]
    outputs[2].d[0] = inputs[0].d[0];
    outputs[2].d[1] = inputs[0].d[1];
    return 0;
}

int32_t JudgeAcceptPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    if (!validNbInputs(nbInputs, mScalarFeatureSize))
    {
        logError(mScalarFeatureSize > 0 ? "AutoJudgeJudgeAccept: expected 7 or 8 inputs (scalar_feature_size > 0)"
                                        : "AutoJudgeJudgeAccept: expected 6 or 7 inputs");
        return -1;
    }
    mNbInputs = nbInputs;
    InputIndex const idx(nbInputs, mScalarFeatureSize);
    int64_t const batch = in[idx.draftTokens].dims.d[0];
    int64_t const window = in[idx.draftTokens].dims.d[1];
    int64_t const draftSize = idx.draftHidden >= 0 ? in[idx.draftHidden].dims.d[2] : 0;
    int64_t const targetSize = in[idx.targetHidden].dims.d[2];
    int64_t const scalarSize = mScalarFeatureSize;
    bool const scalarsOk = idx.scalarFeatures < 0
        || (in[idx.scalarFeatures].dims.d[0] == batch && in[idx.scalarFeatures].dims.d[1] == window
            && in[idx.scalarFeatures].dims.d[2] == scalarSize);
    bool const ok = in[idx.targetTokens].dims.d[0] == batch && in[idx.targetTokens].dims.d[1] == window + 1
        && in[idx.targetHidden].dims.d[0] == batch && in[idx.targetHidden].dims.d[1] == window && scalarsOk
        && in[idx.weight].dims.d[0] == draftSize + targetSize + scalarSize && in[idx.threshold].dims.d[0] == batch
        && window >= 1 && window <= kMaxWindow;
    if (!ok)
    {
        logError("AutoJudgeJudgeAccept: shapes disagree (need target_tokens [B, W+1], hidden [B, W, H], "
                 "scalar_features [B, W, E] with E = scalar_feature_size, weight [Hd+Ht+E], threshold [B], "
                 "1 <= W <= 1024)");
        return -1;
    }
    return 0;
}

int32_t JudgeAcceptPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    InputIndex const idx(mNbInputs, mScalarFeatureSize); // mNbInputs: set by onShapeChange, called before enqueue
    JudgeAcceptArgs args{};
    args.draftTokens = static_cast<int32_t const*>(inputs[idx.draftTokens]);
    args.targetTokens = static_cast<int32_t const*>(inputs[idx.targetTokens]);
    args.draftHidden = idx.draftHidden >= 0 ? inputs[idx.draftHidden] : nullptr;
    args.targetHidden = inputs[idx.targetHidden];
    args.scalarFeatures = idx.scalarFeatures >= 0 ? static_cast<float const*>(inputs[idx.scalarFeatures]) : nullptr;
    args.weight = static_cast<float const*>(inputs[idx.weight]);
    args.bias = static_cast<float const*>(inputs[idx.bias]);
    args.threshold = static_cast<float const*>(inputs[idx.threshold]);
    args.numAccepted = static_cast<int32_t*>(outputs[0]);
    args.nextTokens = static_cast<int32_t*>(outputs[1]);
    args.probabilities = static_cast<float*>(outputs[2]);
    args.batch = static_cast<int32_t>(inputDesc[idx.draftTokens].dims.d[0]);
    args.window = static_cast<int32_t>(inputDesc[idx.draftTokens].dims.d[1]);
    args.draftHiddenSize = idx.draftHidden >= 0 ? static_cast<int32_t>(inputDesc[idx.draftHidden].dims.d[2]) : 0;
    args.targetHiddenSize = static_cast<int32_t>(inputDesc[idx.targetHidden].dims.d[2]);
    args.scalarFeatureSize = idx.scalarFeatures >= 0 ? mScalarFeatureSize : 0;
    args.hiddenType = toHiddenType(inputDesc[idx.targetHidden].type);
    cudaError_t const status = launchJudgeAccept(args, stream, mThreads);
    if (status != cudaSuccess)
    {
        logError(cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* JudgeAcceptPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* JudgeAcceptPlugin::getFieldsToSerialize() noexcept
{
    mFieldsToSerialize.clear();
    mFieldsToSerialize.emplace_back("threads", &mThreads, PluginFieldType::kINT32, 1);
    mFieldsToSerialize.emplace_back("scalar_feature_size", &mScalarFeatureSize, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
    mFieldCollection.fields = mFieldsToSerialize.data();
    return &mFieldCollection;
}

JudgeAcceptPluginCreator::JudgeAcceptPluginCreator()
{
    mFields.emplace_back("threads", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("scalar_feature_size", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.nbFields = static_cast<int32_t>(mFields.size());
    mFieldNames.fields = mFields.data();
}

char const* JudgeAcceptPluginCreator::getPluginName() const noexcept
{
    return kJUDGE_ACCEPT_PLUGIN_NAME;
}

char const* JudgeAcceptPluginCreator::getPluginVersion() const noexcept
{
    return kJUDGE_ACCEPT_PLUGIN_VERSION;
}

char const* JudgeAcceptPluginCreator::getPluginNamespace() const noexcept
{
    return kJUDGE_ACCEPT_PLUGIN_NAMESPACE;
}

PluginFieldCollection const* JudgeAcceptPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

IPluginV3* JudgeAcceptPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        int32_t threads = 0;
        int32_t scalarFeatureSize = 0; // absent in engines built before the field existed: no scalar features
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            bool const int32Scalar = field.type == PluginFieldType::kINT32 && field.length == 1;
            if (std::strcmp(field.name, "threads") == 0 && int32Scalar)
            {
                threads = *static_cast<int32_t const*>(field.data);
            }
            else if (std::strcmp(field.name, "scalar_feature_size") == 0 && int32Scalar)
            {
                scalarFeatureSize = *static_cast<int32_t const*>(field.data);
            }
        }
        if (threads != 0 && (threads % 32 != 0 || threads < 32 || threads > kJudgeAcceptThreads))
        {
            logError("AutoJudgeJudgeAccept: field 'threads' must be 0 or a multiple of 32, at most 1024");
            return nullptr;
        }
        if (scalarFeatureSize < 0)
        {
            logError("AutoJudgeJudgeAccept: field 'scalar_feature_size' must be >= 0");
            return nullptr;
        }
        return new JudgeAcceptPlugin(threads, scalarFeatureSize);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
        return nullptr;
    }
}

} // namespace autojudge

extern "C" AUTOJUDGE_EXPORT void setLoggerFinder(ILoggerFinder* finder)
{
    autojudge::gLoggerFinder.store(finder);
}

extern "C" AUTOJUDGE_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static autojudge::JudgeAcceptPluginCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
