"""The end of a run: the eval split is read once, its record and the interpretation agree."""

import json

import pytest

from tests import helpers
from trainer import layout
from trainer.reporting import interpret


def test_the_final_evaluation_and_the_interpretation_share_one_pass(tmp_path):
    cfg = helpers.tiny_config(tmp_path / "run", train_steps=8, eval_every_epochs=1.0)
    exp = helpers.build(cfg, plots=True)
    exp.restore()
    evaluated_at, analyzed = [], []
    evaluate = exp.evaluator.evaluate
    analyze = interpret.analyze

    def counting_evaluate():
        evaluated_at.append(exp.step)
        return evaluate()

    def counting_analyze(*args, **kwargs):
        analyzed.append(exp.step)
        return analyze(*args, **kwargs)

    exp.evaluator.evaluate = counting_evaluate
    interpret.analyze = counting_analyze
    try:
        metrics = exp.train()
    finally:
        interpret.analyze = analyze
    # Evaluations at the epoch end (step 4) through the compiled loop; at the last step (8)
    # one pass of interpretation gives the record and the pictures.
    assert evaluated_at == [4]
    assert analyzed == [8]
    final = metrics["final"]
    assert final["step"] == 8 and final["examples"] == 16
    record = json.loads((tmp_path / "run" / layout.METRICS_FILE).read_text())
    assert record["final"] == final
    confusion = record["confusion_matrix"]
    correct = sum(confusion[i][i] for i in range(len(confusion)))
    assert final["accuracy"] == pytest.approx(correct / 16)
    # The same record as the compiled evaluation loop gives for the same weights.
    again = evaluate()
    assert again["examples"] == final["examples"] and again["accuracy"] == final["accuracy"]
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-6)
