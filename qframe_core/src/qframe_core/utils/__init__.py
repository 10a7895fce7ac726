"""Helpers users import by the seeds' paths (``utils.fx_helper``)."""
