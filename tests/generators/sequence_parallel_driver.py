"""One process of the sequence-parallel test (torchrun starts 2): the tiny Wan2.1 I2V transformer
(with its CLIP branch) on one sample, first whole, then split over the 2 processes
(generators/sequence_parallel.py), then split with a LoRA and FSDP2-sharded as the IPRO trainer
sets it up (split, LoRA, shard); process 0 writes the outputs and gradients (the split runs'
summed over the group, as the trainers' reductions sum them) to OUT.

    torchrun --nproc_per_node 2 sequence_parallel_driver.py OUT
"""
import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from identity_grpo.core.sharding import full
from identity_grpo.finetune.config import LoraSettings
from identity_grpo.finetune.lora import attach_lora
from identity_grpo.finetune.sharding import shard_transformer
from identity_grpo.generators.sequence_parallel import enable_sequence_parallel
from identity_grpo.generators.tiny import TinyWanConfig
from identity_grpo.generators.tiny_i2v import TINY_IMAGE_DIM, tiny_i2v_transformer


def forward_backward(model, inputs, weights):
    out = model(*inputs, return_dict=False)[0]
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    config = TinyWanConfig()
    whole = tiny_i2v_transformer(config, seed=0)
    whole.train()
    g = torch.Generator().manual_seed(1)
    z = config.z_dim
    latents = torch.randn(1, 2 * z + 4, 3, 8, 8, generator=g)  # 3 x 4 x 4 = 48 tokens after the 2x2 patches
    inputs = (latents, torch.tensor([700.0]), torch.randn(1, 16, config.text_dim, generator=g),
              torch.randn(1, 257, TINY_IMAGE_DIM, generator=g))
    weights = torch.randn(1, z, 3, 8, 8, generator=g)  # the loss weighs every output element differently
    split, lora = copy.deepcopy(whole), copy.deepcopy(whole)
    seen = []
    split.blocks[0].ffn.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))  # tokens a process holds
    reference, reference_grads = forward_backward(whole, inputs, weights)
    coordinates = enable_sequence_parallel([split], 2)
    output, grads = forward_backward(split, inputs, weights)
    for grad in grads.values():  # the group's gradients are summed
        dist.all_reduce(grad)
    # The trainer's order: split, LoRA (a non-zero one), shard; FSDP sums the gradients itself.
    attach_lora(lora, LoraSettings(r=2, alpha=4))
    with torch.no_grad():
        for i, p in enumerate(p for n, p in lora.named_parameters() if "lora_" in n):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora_whole = copy.deepcopy(lora)
    lora_reference, lora_reference_grads = forward_backward(lora_whole, inputs, weights)
    enable_sequence_parallel([lora], 2)
    shard_transformer(lora)
    lora_output, lora_grads = forward_backward(lora, inputs, weights)
    lora_grads = {n: full(g) for n, g in lora_grads.items() if "lora_" in n}
    if dist.get_rank() == 0:
        save_file({"reference": reference, "output": output, "tokens_seen": torch.tensor(seen),
                   "data_parallel": torch.tensor([coordinates.size, coordinates.rank]),
                   **{f"reference_grad.{n}": v for n, v in reference_grads.items()},
                   **{f"grad.{n}": v for n, v in grads.items()},
                   "lora_reference": lora_reference, "lora_output": lora_output,
                   **{f"lora_reference_grad.{n}": lora_reference_grads[n] for n in lora_grads},
                   **{f"lora_grad.{n}": v for n, v in lora_grads.items()}}, str(out / "result.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
