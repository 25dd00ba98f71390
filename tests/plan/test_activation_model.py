"""The planner's activation model against a direct saved-tensor count of a small model: coefficients
measured at a tiny width with the measuring module (1-2 blocks, two token counts), then the
planner's formula for a deeper model at another token count vs the hook count of its forward."""
import dataclasses

import pytest
import torch

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.plan.activations import transformer_train, vae_decode_grad
from identity_grpo.plan.architectures import WanTransformerArch, WanVaeArch
from identity_grpo.plan.counting import LiveBytes, SavedBytes
from identity_grpo.plan.measure import (measure_vae, measure_wan, tokens_of, vae_model, vae_saved_bytes, wan_inputs,
                                        wan_model, wan_saved_bytes)

TINY = WanTransformerArch(num_layers=4, num_attention_heads=2, attention_head_dim=16, ffn_dim=48, in_channels=4,
                          out_channels=4, text_dim=24, freq_dim=16)
TINY_VACE = dataclasses.replace(TINY, vace_layers=(0, 2), vace_in_channels=6)
LORA = LoraSettings(r=4, alpha=4.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and threads waiting on a busy core cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coefficients():
    quiet = lambda line: None  # noqa: E731
    return {"tiny": measure_wan(TINY, [(1, 8, 8), (2, 8, 8)], quiet, LORA, live_sizes=[]),
            "tiny_vace": measure_wan(TINY_VACE, [(1, 8, 8), (2, 8, 8)], quiet, LORA, live_sizes=[])}


@pytest.mark.parametrize("key, arch", [("tiny", TINY), ("tiny_vace", TINY_VACE)])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_formula_matches_the_hook_count_of_a_deeper_model(coefficients, key, arch, checkpointing):
    model = wan_model(arch, LORA)  # 4 blocks (2 with VACE hints) where 1-2 were measured
    inputs = wan_inputs(arch, 3, 8, 12)  # 72 tokens where 16 and 32 were measured
    counted = wan_saved_bytes(model, inputs, checkpointing)
    predicted = transformer_train(coefficients, arch, tokens_of(inputs, arch), 1, checkpointing, key=key).kept
    assert predicted == pytest.approx(counted, rel=0.01)


def test_batched_sequences_are_counted_from_above(coefficients):
    """Two sequences in one forward share the rotary tables: the per-sequence formula may over-count, never under."""
    model = wan_model(TINY, LORA)
    inputs = wan_inputs(TINY, 3, 8, 12, batch=2)
    counted = wan_saved_bytes(model, inputs, checkpointing=False)
    predicted = transformer_train(coefficients, TINY, tokens_of(inputs, TINY), 2, False, key="tiny").kept
    assert counted <= predicted <= 1.05 * counted


def test_vae_formula_matches_a_direct_count():
    arch = WanVaeArch(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1)
    coef = {"vae": measure_vae([(2, 2, 2), (3, 2, 2), (2, 3, 3), (3, 3, 3)], lambda line: None, arch,
                               autocast_modes=(False,))}
    counted = vae_saved_bytes(vae_model(arch), torch.randn(1, 4, 4, 4, 2), autocast=False)
    assert vae_decode_grad(coef, 32, 16, 4, 13, autocast=False) == pytest.approx(counted, rel=0.01)


def test_the_counters_on_hand_worked_cases():
    weight = torch.nn.Linear(100, 100)
    x = torch.randn(10, 100, requires_grad=True)
    with SavedBytes([*weight.parameters(), x]) as saved:
        y = torch.tanh(weight(x))  # keeps its output: 10 x 100 float32; the linear keeps x and the weight (excluded)
        (y * y).sum()  # keeps y again: the same storage, counted once
    assert saved.bytes == 4000
    with LiveBytes() as live:
        a = torch.zeros(1000)  # 4000 bytes
        b = a + 1  # 8000 alive
        del a
        c = b.view(10, 100) * 2  # a view costs nothing; the product 4000: 8000 alive again
        del b, c
    assert (live.peak, live.current) == (8000, 0)
