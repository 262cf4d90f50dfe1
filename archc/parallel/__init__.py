"""Beyond one GPU, on torch.distributed: tensor-parallel sharding plans read off the component graph
(`sharding`, light), their application with DTensor `parallelize_module` and FSDP2 `fully_shard` on a
2-D DeviceMesh (`apply`), distributed checkpoints (`checkpoint`), tensor-parallel greedy generation
(`generate`) and the distributed train loop (`train`).

Kept apart from the model code (torchtitan's layout): exporters/torch_module.py builds one
single-device module; everything here rewrites that module's parameters into DTensors afterwards.
archc writes no collective code of its own: every collective comes from DTensor or FSDP2.

Only `sharding` is imported by light commands (`archc plan`); the other modules import torch.
"""
