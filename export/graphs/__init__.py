"""ONNX graph builders, torch-free: the tiny builder (`graph`), MobileNet-V3 (`mobilenet`), the GRU
head (`gru`), BatchNorm re-estimation (`bn_stats`), a user's own backbone (`user_backbone`) and
state dicts on disk (`weights`). Import from the modules."""
