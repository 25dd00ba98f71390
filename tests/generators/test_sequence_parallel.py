"""Sequence parallelism (generators/sequence_parallel.py, diffusers' Ulysses context parallelism)
on 2 CPU processes (gloo): the tiny Wan2.1 I2V transformer's output and its gradients (summed over
the group) equal one unsplit process's to float32 tolerance, while each process's first block sees
half of the tokens; so do a LoRA's gradients with the transformer also FSDP2-sharded."""
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from identity_grpo.core.config_io import ConfigError
from identity_grpo.generators.sequence_parallel import check_splittable, data_parallel
from identity_grpo.generators.tiny import TinyWanConfig, tiny_vace_transformer
from identity_grpo.generators.tiny_i2v import tiny_i2v_transformer
from tests_support import PROCESS_ENV, torchrun

DRIVER = Path(__file__).with_name("sequence_parallel_driver.py")


@pytest.mark.slow
def test_two_processes_split_the_tokens_and_equal_one(tmp_path):
    subprocess.run(torchrun(2, 29441, DRIVER, tmp_path), env=PROCESS_ENV, check=True, timeout=600, capture_output=True)
    result = load_file(str(tmp_path / "result.safetensors"))
    assert result["tokens_seen"].tolist() == [24]  # 48 tokens, half on each process
    assert result["data_parallel"].tolist() == [1, 0]
    torch.testing.assert_close(result["output"], result["reference"], rtol=1e-5, atol=1e-6)
    names = [k.removeprefix("reference_grad.") for k in result if k.startswith("reference_grad.")]
    assert len(names) > 20
    for name in names:
        torch.testing.assert_close(result[f"grad.{name}"], result[f"reference_grad.{name}"], rtol=1e-4, atol=1e-6,
                                   msg=name)
    torch.testing.assert_close(result["lora_output"], result["lora_reference"], rtol=1e-5, atol=1e-6)
    lora = [k.removeprefix("lora_grad.") for k in result if k.startswith("lora_grad.")]
    assert len(lora) == 2 * 4 * 2 * 2  # A and B of q, k, v, out in both attentions of 2 blocks
    for name in lora:
        assert result[f"lora_reference_grad.{name}"].abs().max() > 0
        torch.testing.assert_close(result[f"lora_grad.{name}"], result[f"lora_reference_grad.{name}"], rtol=1e-4,
                                   atol=1e-6, msg=name)


def test_groups_are_consecutive_processes():
    assert [data_parallel(8, i, 4) for i in (0, 3, 4, 7)] == [data_parallel(8, 0, 4)] * 2 + [data_parallel(8, 4, 4)] * 2
    assert data_parallel(8, 5, 4).size == 2 and data_parallel(8, 5, 4).rank == 1


def test_only_a_splittable_transformer_with_divisible_heads_is_accepted():
    check_splittable(tiny_i2v_transformer(TinyWanConfig(), seed=0), 2)  # 2 heads
    with pytest.raises(ConfigError, match="divide the transformer's 2 attention heads"):
        check_splittable(tiny_i2v_transformer(TinyWanConfig(), seed=0), 4)
    with pytest.raises(ConfigError, match="declares no sequence split"):
        check_splittable(tiny_vace_transformer(TinyWanConfig(), 0), 2)  # WanVACETransformer3DModel has no _cp_plan
