"""``tensorrt_llm._torch.models.modeling_utils`` (emulated): the model registry."""

_EXTERNAL: dict[str, type] = {}


def register_auto_model(architecture: str):
    """modeling_utils.py: an external registration overrides the built-in class of an architecture."""
    def register(cls):
        _EXTERNAL[architecture] = cls
        return cls
    return register


def model_class(architecture: str) -> type:
    from autojudge.testing.trtllm_torch._torch.models.modeling_llama import LlamaForCausalLM

    return _EXTERNAL.get(architecture, LlamaForCausalLM)
