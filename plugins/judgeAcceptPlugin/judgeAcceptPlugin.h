/*
 * AutoJudgeJudgeAccept: an IPluginV3 (IPluginV3OneCore/Build/Runtime) around the
 * judge-accept kernel, with its IPluginCreatorV3One and the getCreators/setLoggerFinder
 * entry points that `trtexec --dynamicPlugins` and IPluginRegistry::loadLibrary look for.
 * Inputs, outputs and attributes: README.md beside this file.
 */
#pragma once

#include "judgeAcceptKernel.h"

#include <NvInferRuntime.h>

#include <vector>

//! The library's entry points stay visible even when everything else is hidden.
#define AUTOJUDGE_EXPORT __attribute__((visibility("default")))

namespace autojudge
{

constexpr char const* kJUDGE_ACCEPT_PLUGIN_NAME = "AutoJudgeJudgeAccept";
constexpr char const* kJUDGE_ACCEPT_PLUGIN_VERSION = "1";
constexpr char const* kJUDGE_ACCEPT_PLUGIN_NAMESPACE = "autojudge";

class JudgeAcceptPlugin : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    //! `threads`: CUDA threads per block (multiple of 32, at most 1024; 0 = the kernel's default);
    //! `scalarFeatureSize`: E, the judge's scalar features (0: none, and no scalar_features input).
    JudgeAcceptPlugin(int32_t threads, int32_t scalarFeatureSize);

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    bool supportsFormatCombination(
        int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t mThreads;
    int32_t mScalarFeatureSize;
    int32_t mNbInputs{7}; //!< 6, + 1 with draft hidden states, + 1 with scalar features (E > 0)
    std::vector<nvinfer1::PluginField> mFieldsToSerialize;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class JudgeAcceptPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    JudgeAcceptPluginCreator();
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldNames{};
};

} // namespace autojudge

extern "C"
{
    AUTOJUDGE_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
    AUTOJUDGE_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
}
