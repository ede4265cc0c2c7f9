"""Errors the CLI maps to exit codes; kept free of torch so that importing them is cheap."""


class ExportError(RuntimeError):
    """The ONNX model cannot stand in for the PyTorch one."""
