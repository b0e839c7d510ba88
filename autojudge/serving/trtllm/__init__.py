"""The TensorRT-LLM flavour: the decoding loop over draft/target engines and the judge-accept engine."""
