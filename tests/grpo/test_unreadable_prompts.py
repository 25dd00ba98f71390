"""A corrupt reference image (seconds, tiny VACE): in a training manifest it is one line and exit 2
before any model loads; in the held-out manifest its prompt is left out of every evaluation,
named in a warning and counted in the log, metrics.json and the table."""
import json

import pytest

from identity_grpo.core.prompt_manifest import PromptManifestError, PromptRecord
from identity_grpo.finetune.evaluation import readable_prompts
from identity_grpo.finetune.run_metrics import summarize, summary_table
from identity_grpo.grpo.recipe import GrpoRecipe
from test_grpo_smoke import data, make_config  # noqa: F401 (fixture)


@pytest.fixture
def prompts(data, tmp_path):
    """The smoke test's prompts, one of them with a truncated reference image."""
    (tmp_path / "cut.png").write_bytes((data / "ref0.png").read_bytes()[:60])
    rows = [{"prompt": "two people talk", "references": [str(data / "ref0.png"), str(data / "ref1.png")]},
            {"prompt": "two people walk", "references": [str(data / "ref1.png"), str(tmp_path / "cut.png")]},
            {"prompt": "a person waves", "references": [str(data / "ref2.png")]}]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "prompts.jsonl"


def test_a_corrupt_training_reference_is_one_line(prompts, tmp_path, capsys):
    import train_grpo

    assert train_grpo.main([
        "--config", "configs/grpo/synthetic_vace.yaml", "generator.pretrained=tiny", "data.world.enabled=false", "guard.metric=''",
        f"data.train_manifest={prompts}", "rewards=[{name: world_face_similarity}]", "train.eval_every=0",
        f"output_dir={tmp_path / 'grpo'}",
    ]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: prompts.jsonl row 2, field 'references[1]': {tmp_path / 'cut.png'}: "
                          "cannot decode image (OSError: image file is truncated")
    assert err.count("\n") == 1


def test_held_out_prompts_with_an_unreadable_reference_are_left_out(data, prompts, tmp_path, caplog):
    recipe = GrpoRecipe(make_config(data, tmp_path / "run", "vace", f"data.eval_manifest={prompts}"))
    recipe.setup()
    assert len(recipe.eval_records) == 3  # loaded without decoding: the evaluator checks them
    before = recipe.evaluator(step=0)
    recipe.logger.finish()
    assert sorted(before["per_prompt"]) == ["0", "2"] and before["skipped"] == {"unreadable_reference": 1}
    assert before["mean"]["eval/reward"] == pytest.approx((before["per_prompt"]["0"]["reward"] +
                                                            before["per_prompt"]["2"]["reward"]) / 2)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "identity_grpo.finetune.evaluation"]
    assert warning.startswith("held-out prompt prompts.jsonl row 2, field 'references[1]': left out, "
                              f"unreadable_reference: {tmp_path / 'cut.png'}: cannot decode image")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["eval/skipped/unreadable_reference"] == 1
    metrics = summarize(1, before, before, None)
    assert metrics["skipped_heldout_prompts"] == {"unreadable_reference": 1}
    assert "| prompts left out: unreadable_reference | 1 | 1 | |" in summary_table(metrics)


def test_a_held_out_set_without_a_readable_prompt_is_an_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    records = [PromptRecord("p", [tmp_path / "empty.png"], where="h.jsonl row 1"),
               PromptRecord("q", [tmp_path / "missing.png"], where="h.jsonl row 2")]
    with pytest.raises(PromptManifestError, match="none of the 2 held-out prompts has readable reference images"):
        readable_prompts(records)
    assert readable_prompts([]) == ([], {})
