"""`autojudge-trt build --config`: TensorRT-LLM engines, the judge-accept engine and the Triton
repository for one deployment (config, preflight, plan, runner, pipeline)."""
