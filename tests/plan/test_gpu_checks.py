"""The GPU check script, run in its --tiny mode on the CPU: every check runs and reports its figures."""
import json

from identity_grpo.plan.gpu_checks import main


def test_tiny_mode_runs_every_check(tmp_path, capsys):
    out = tmp_path / "gpu_checks.json"
    assert main(["--tiny", "--out", str(out)]) == 0
    checks = json.loads(out.read_text())["checks"]
    assert sorted(checks) == ["1_grpo_update_memory", "2_onpolicy_log_ratio_bf16", "3_ipro_bytes_per_layer",
                              "4_vae_decode_with_gradients", "5_reward_model_step"]
    update = checks["1_grpo_update_memory"]
    assert [(r["batch"], r["checkpointing"]) for r in update] == [(b, c) for c in (False, True) for b in (1, 2, 4)]
    peak = {(r["batch"], r["checkpointing"]): r["peak_gb"] for r in update}
    assert peak[(4, False)] > peak[(1, False)] and peak[(4, True)] < peak[(4, False)]  # batch costs, checkpointing saves
    assert all(r["max_abs_log_ratio"] < 1e-4 for r in checks["2_onpolicy_log_ratio_bf16"])
    assert [r["layers"] for r in checks["3_ipro_bytes_per_layer"]] == [2, 3, 4]
    assert all(r["peak_gb"] > 0 for r in checks["4_vae_decode_with_gradients"] + checks["5_reward_model_step"])
    assert "1_grpo_update_memory" in capsys.readouterr().out
