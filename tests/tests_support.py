"""Settings shared by tests: a tiny reward model and a handful of synthetic pairs."""

TINY_REWARD_OVERRIDES = [
    "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
    "model.tiny.intermediate=64", "model.tiny.vision_depth=1", "model.tiny.vision_hidden=32",
    "model.tiny.vision_heads=2", "model.tiny.vision_intermediate=64",
    "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.num_test=6",
    "pretrain.enabled=false", "model.lora_r=4", "model.lora_alpha=8", "train.batch_size=2",
    "train.max_steps=2", "train.warmup_steps=0", "train.lr=1e-2", "train.log_every=1", "wandb.mode=disabled",
]
