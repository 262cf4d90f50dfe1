"""archc's onnxruntime custom-op library (C++/CUDA sources here, built by build.py): archc.GatedMLP."""
