"""Helpers users import by the seeds' paths (``utils.fx_helper``, ``utils.onnx_helper``)."""
