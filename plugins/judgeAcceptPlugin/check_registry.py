"""Load the built plugin library into a TensorRT runtime and create the plugin (no GPU needed).

    python plugins/judgeAcceptPlugin/check_registry.py build/plugin/libautojudge_judge_accept_plugin.so

Works with the full `tensorrt` package or the lean runtime (`tensorrt-lean-cu13-libs` +
`tensorrt-lean-cu13-bindings`, which import on a CPU-only machine): the registry loads the
library through its getCreators entry point, finds the creator, and creates the plugin.
"""

import sys

import numpy as np

try:
    import tensorrt as trt
except ImportError:
    import tensorrt_lean_bindings as trt


def main(library: str) -> None:
    print("TensorRT runtime", trt.__version__)
    registry = trt.get_plugin_registry()
    registry.load_library(library)
    creator = registry.get_creator("AutoJudgeJudgeAccept", "1", "autojudge")
    assert creator is not None, "creator AutoJudgeJudgeAccept/1/autojudge not found"
    print("creator:", creator.name, creator.plugin_version, creator.plugin_namespace, type(creator).__name__)
    print("fields:", [f.name for f in creator.field_names])

    assert [f.name for f in creator.field_names] == ["threads", "scalar_feature_size"], "unexpected fields"

    def fields(threads: int, scalar_feature_size: int | None = None):
        given = [trt.PluginField("threads", np.array([threads], np.int32), trt.PluginFieldType.INT32)]
        if scalar_feature_size is not None:
            given.append(trt.PluginField("scalar_feature_size", np.array([scalar_feature_size], np.int32),
                                         trt.PluginFieldType.INT32))
        return trt.PluginFieldCollection(given)

    plugin = creator.create_plugin("judge_accept", fields(256), trt.TensorRTPhase.BUILD)
    assert plugin is not None, "create_plugin returned None"
    core = plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
    print("plugin:", core.plugin_name, core.plugin_version, core.plugin_namespace)
    assert creator.create_plugin("bad", fields(100), trt.TensorRTPhase.BUILD) is None, "threads=100 was accepted"
    print("threads=100 refused, as it should be")
    assert creator.create_plugin("scalars", fields(0, 5), trt.TensorRTPhase.BUILD) is not None, "E=5 was refused"
    assert creator.create_plugin("bad", fields(0, -1), trt.TensorRTPhase.BUILD) is None, "E=-1 was accepted"
    print("scalar_feature_size=5 created, -1 refused, as it should be")


if __name__ == "__main__":
    main(sys.argv[1])
