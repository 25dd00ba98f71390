"""One process of the FSDP tests (torchrun starts 1 or 2): a GRPO update or an IPRO step on a tiny
VACE model with a fixed batch of 4 samples, split over the processes, the transformer sharded when
there are 2; process 0 writes the updated LoRA and the logged values to OUT.

    torchrun --nproc_per_node N fsdp_driver.py grpo|ipro OUT
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from identity_grpo.core.recipe import make_accelerator
from identity_grpo.finetune.config import LoraSettings
from identity_grpo.finetune.lora import attach_lora, lora_parameters, lora_state_dict
from identity_grpo.finetune.policy import Policy, average_gradients
from identity_grpo.finetune.rollout import Rollout
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.core.sharding import full
from identity_grpo.finetune.sharding import shard_transformer
from identity_grpo.generators.tiny import TinyWanConfig, tiny_vace_generator
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.grpo.config import TrainSettings
from identity_grpo.grpo.update import optimizer_step
from identity_grpo.ipro.last_steps import sample_last_steps


def main(kind: str, out: Path) -> None:
    accelerator = make_accelerator("no")
    n, rank = accelerator.num_processes, accelerator.process_index
    gen = tiny_vace_generator(VaceOptions(height=32, width=32, num_frames=5, max_sequence_length=16,
                                          guidance_scale=3.0), TinyWanConfig(), seed=0)
    attach_lora(gen.transformer, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a non-zero LoRA, the same on every process
        for i, p in enumerate(lora_parameters(gen.transformer)):
            p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    refs = [[np.full((24, 16, 3), 40 * (j + 1), np.uint8) for j in range(2)]] * 4
    conds = gen.encode_conditions(["two people talk"] * 2 + ["two people walk"] * 2, refs)
    mine = list(range(rank * 4 // n, (rank + 1) * 4 // n))  # this process's share of the 4 samples
    if kind == "grpo":  # sampled with the whole weights on every process: the same rollout everywhere
        schedule = NoiseSchedule("flow_grpo", eta=0.7)
        with torch.no_grad():
            trajectory = sample_with_log_probs(gen, conds, gen.sigmas(3), schedule, torch.Generator().manual_seed(0))
        rollout = Rollout.from_trajectory(trajectory, conds, torch.tensor([0, 0, 1, 1]), refs)
        rollout.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    if n > 1:
        shard_transformer(gen.transformer)
    params = lora_parameters(gen.transformer)
    # Plain SGD with lr 1: the change is minus the summed gradient, so a scaling error shows.
    policy = Policy(gen, gen.transformer, params, torch.optim.SGD(params, lr=1.0), ema=None, sharded=n > 1)
    if kind == "grpo":
        settings = TrainSettings(timestep_fraction=1.0, beta=0.5, max_grad_norm=1e9, clip_range=0.2)
        local = rollout.select(mine)
        batches = [local.select([k]) for k in range(local.batch_size)] if rank == 0 else [local]  # uneven counts
        logged = optimizer_step(accelerator, policy, batches, schedule, settings, torch.Generator().manual_seed(0),
                                filler=local.select([0]))
    else:
        noise = torch.cat([gen.initial_noise(conds.select([i]), torch.Generator().manual_seed(i)) for i in range(4)])
        gen.transformer.train()
        for i in mine:  # one micro-batch per sample
            sample = sample_last_steps(gen, gen.transformer, conds.select([i]), noise[i:i + 1], gen.sigmas(4), 2, [1.0, 1.0])
            reward = gen.decode(sample.latents)[..., 1].mean()
            accelerator.backward((0.1 * -reward + 0.1 * sample.kl.sum()) / 4)
        average_gradients(accelerator, params)
        grad_norm = full(torch.nn.utils.clip_grad_norm_(params, 1e9))
        policy.optimizer.step()
        logged = {"grad_norm": float(grad_norm)}
    state = lora_state_dict(gen.transformer)  # gathered on every process
    if accelerator.is_main_process:
        save_file(state, str(out / "lora.safetensors"))
        (out / "logged.json").write_text(json.dumps(logged))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
