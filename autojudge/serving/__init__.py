"""Serving AutoJudge behind Triton Inference Server: the request protocol, the decode service
the Python-backend model runs, the model repository writer, the server process, and clients."""
